"""Captioning throughput: this project's batched engine against the plain transformers loop, in one run.

    python bench/caption_throughput.py                          # CPU, the embedded demo captioner
    python bench/caption_throughput.py --config ../shared/blip-base --device cuda   # real BLIP size, random weights

Both ways caption the same image files with the same model object and the same generated length
(min = max new tokens), so the difference is batching and decoding images in parallel with the model.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioner.caption import GenerationOptions, caption_images  # noqa: E402
from captioner.demo.world import sample  # noqa: E402
from captioner.images import read_file  # noqa: E402
from captioner.models import LoadedModel, ModelSpec, load_captioner, resolve_device, resolve_dtype  # noqa: E402
from captioner.settings import Settings  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="model spec to load (ignored with --config)")
    parser.add_argument("--config", type=Path, help="a config folder: build that architecture with random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=12, help="generated tokens per caption, both ways")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--min-side", type=int, default=64)
    parser.add_argument("--max-side", type=int, default=512)
    return parser.parse_args()


def load(args) -> LoadedModel:
    settings = Settings(home=Path.cwd(), device=args.device, dtype=args.dtype)
    if not args.config:
        return load_captioner(args.model, settings, fallback=False)
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = BlipForConditionalGeneration(BlipConfig.from_pretrained(args.config)).to(device, dtype).eval()
    processor = BlipProcessor.from_pretrained(args.config)
    return LoadedModel(ModelSpec(str(args.config), "caption", "local", str(args.config), "random"), model, processor, device, dtype)


def write_images(folder: Path, n: int, min_side: int, max_side: int) -> list[Path]:
    rng = random.Random(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:04d}.jpg"
        sample(rng, min_side=min_side, max_side=max_side).image.save(path, quality=90)
        paths.append(path)
    return paths


def plain_transformers(loaded: LoadedModel, paths: list[Path], tokens: int, beams: int) -> list[str]:
    """The usual recipe: one image at a time through processor, generate, decode."""
    import torch
    from PIL import Image

    captions = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        inputs = loaded.processor(images=image, return_tensors="pt").to(loaded.device, loaded.dtype)
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=beams)
        captions.append(loaded.processor.decode(out[0], skip_special_tokens=True))
    return captions


def engine(loaded: LoadedModel, paths: list[Path], tokens: int, beams: int, batch_size: int) -> list[str]:
    """This project's way, as the CLI runs it: read bytes, then batched captioning with parallel decoding."""
    options = GenerationOptions(num_beams=beams, max_new_tokens=tokens, min_new_tokens=tokens)
    results = caption_images(loaded, [read_file(p) for p in paths], options, batch_size=batch_size)
    return [r.caption for r in results]


def timed(fn, *args) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    import torch

    args = parse_args()
    loaded = load(args)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), args.images, args.min_side, args.max_side)
        warm = paths[: min(8, len(paths))]
        plain_transformers(loaded, warm, args.tokens, args.num_beams)
        engine(loaded, warm, args.tokens, args.num_beams, args.batch_size)
        plain_s = timed(plain_transformers, loaded, paths, args.tokens, args.num_beams)
        engine_s = timed(engine, loaded, paths, args.tokens, args.num_beams, args.batch_size)
    n = len(paths)
    print(f"model {loaded.spec.text} ({loaded.version}) on {loaded.device} {loaded.dtype}, torch threads "
          f"{torch.get_num_threads()}; {n} JPEG files of {args.min_side}-{args.max_side} px; "
          f"{args.tokens} new tokens, {args.num_beams} beam(s)")  # fmt: skip
    print(f"{'way':<44}{'seconds':>10}{'images/s':>12}")
    print(f"{'plain transformers (one image at a time)':<44}{plain_s:>10.2f}{n / plain_s:>12.1f}")
    print(f"{f'captioner engine (batch {args.batch_size}, parallel decode)':<44}{engine_s:>10.2f}{n / engine_s:>12.1f}")
    print(f"speed-up: {plain_s / engine_s:.1f}x")


if __name__ == "__main__":
    main()
