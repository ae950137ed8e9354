"""Captioning throughput from JPEG files: the seeds' loop, plain batched transformers, and the engine, in one run.

    python -m bench.caption_throughput                                              # CPU, the demo captioner
    python -m bench.caption_throughput --config /work/shared/blip-base --device cuda  # BLIP base size, random weights

All three caption the same JPEG files (480-1024 px) with the same weights and exactly --tokens new tokens
(min = max), greedy unless --num-beams says otherwise; plain and engine alternate --rounds times, best time counts:
- seeds' loop: fp32, one image at a time: PIL open, processor, generate, decode (on --seed-images of the files);
- plain batched: PIL open in a loop, processor and one generate per --batch-size images, in the model's dtype;
- engine: caption_images, as the CLI runs it (dynamic batches; pixels made beside the model: on --device cuda
  JPEGs are batch-decoded by nvjpeg and resized on the GPU, on the CPU decoded by Pillow in threads).
- the engine with the other image stage (the CPU stage on --device cuda; the device path's CPU fallback on the CPU);
- with --dtype other than fp32 (bfloat16 on a CPU with AMX, say), the engine on an fp32 copy of the model too.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import threading
from pathlib import Path

from bench.caption_common import add_model_arguments, describe, load, plain_generate, timed, write_jpegs

from captioner.caption import caption_images
from captioner.engine import CaptionEngine, CpuImageStage, DeviceImageStage, engine_for
from captioner.engine.pixels import pixel_spec
from captioner.images import read_file
from captioner.options import GenerationOptions


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--seed-images", type=int, default=32, help="files the (slow) seeds' loop captions")
    parser.add_argument("--batch-size", type=int, help="plain batched generate's batch (default 32 on CPU, 256 on GPU)")
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption, forced (min = max)")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="plain and engine alternate this often; best time counts")
    return parser.parse_args()


def seeds_loop(loaded, model_fp32, paths, options) -> list[str]:
    import torch
    from PIL import Image

    captions = []
    for path in paths:
        captions += plain_generate(loaded, model_fp32, [Image.open(path).convert("RGB")], options, dtype=torch.float32)
    return captions


def plain_batched(loaded, paths, options, batch_size) -> list[str]:
    from PIL import Image

    captions = []
    for start in range(0, len(paths), batch_size):
        pictures = [Image.open(path).convert("RGB") for path in paths[start : start + batch_size]]
        captions += plain_generate(loaded, loaded.model, pictures, options)
    return captions


def engine(loaded, paths, options, other=None) -> list[str]:
    inputs = [read_file(path) for path in paths]
    results = other.caption(inputs, options) if other is not None else caption_images(loaded, inputs, options)
    failed = [r for r in results if not r.ok]
    assert not failed, failed[0].error
    return [r.caption for r in results]


def other_stage_engine(loaded) -> CaptionEngine:
    """An engine on the same model with the other image stage: the CPU stage beside a GPU (what nvjpeg gains), the
    device path on libjpeg-turbo on the CPU (its CPU fallback)."""
    main = engine_for(loaded)
    if isinstance(main.stage, DeviceImageStage):
        stage = CpuImageStage(loaded.processor, loaded.device, loaded.dtype, lookahead=2 * main.limits.max_batch)
    else:
        stage = DeviceImageStage(pixel_spec(loaded.processor.image_processor), loaded.device, loaded.dtype)
    return CaptionEngine(loaded, stage=stage, limits=main.limits)


def so_far(round_: int, way: str, images: int, seconds: float) -> float:
    """Say one timing as soon as it is taken (a run cut off by its time limit still leaves its figures); returns it."""
    print(f"  round {round_}: {way}: {images} images in {seconds:.2f} s ({images / seconds:.1f} img/s)", flush=True)
    return seconds


def main() -> None:
    import torch

    args = parse_args()
    loaded = load(args)
    options = GenerationOptions(num_beams=args.num_beams, max_new_tokens=args.tokens, min_new_tokens=args.tokens).validate()
    batch_size = args.batch_size or (256 if loaded.device.type == "cuda" else 32)
    model_fp32 = loaded.model if loaded.dtype == torch.float32 else copy.deepcopy(loaded.model).float()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), args.images, args.min_side, args.max_side)
        seed_paths = paths[: args.seed_images]
        warm = paths[: min(8, len(paths))]
        seeds_loop(loaded, model_fp32, warm[:2], options)
        plain_batched(loaded, warm, options, batch_size)
        engine(loaded, warm, options)
        other = other_stage_engine(loaded)
        engine(loaded, warm, options, other)
        fp32 = None
        if loaded.dtype != torch.float32:  # the same engine on fp32 weights: what the lower precision gains
            fp32 = dataclasses.replace(loaded, model=model_fp32, dtype=torch.float32, lock=threading.Lock())
            engine(fp32, warm, options)
        seed_s, _ = timed(seeds_loop, loaded, model_fp32, seed_paths, options)
        so_far(0, "seeds loop", len(seed_paths), seed_s)
        plain_s = engine_s = other_s = fp32_s = float("inf")
        for round_ in range(1, args.rounds + 1):  # alternating, best of each: other processes skew one-off timings
            seconds, plain_captions = timed(plain_batched, loaded, paths, options, batch_size)
            plain_s = min(plain_s, so_far(round_, "plain batched generate", len(paths), seconds))
            seconds, engine_captions = timed(engine, loaded, paths, options)
            engine_s = min(engine_s, so_far(round_, "caption engine", len(paths), seconds))
            seconds = timed(engine, loaded, paths, options, other)[0]
            other_s = min(other_s, so_far(round_, "caption engine, the other pixel path", len(paths), seconds))
            if fp32 is not None:
                seconds, fp32_captions = timed(engine, fp32, paths, options)
                fp32_s = min(fp32_s, so_far(round_, "caption engine, fp32 copy", len(paths), seconds))
    other.close()
    step, pixel_path = engine_for(loaded).step.last_path, engine_for(loaded).stage.describe()
    same = sum(a.strip() == b for a, b in zip(plain_captions, engine_captions))
    seed_rate, plain_rate, engine_rate = len(seed_paths) / seed_s, len(paths) / plain_s, len(paths) / engine_s
    other_rate = len(paths) / other_s
    print(f"{describe(loaded)}; {len(paths)} JPEG files of {args.min_side}-{args.max_side} px; "
          f"{args.tokens} new tokens forced, {args.num_beams} beam(s)")  # fmt: skip
    print(f"{'way':<52}{'images':>7}{'seconds':>9}{'img/s':>9}{'vs seeds':>10}{'vs plain':>10}")
    print(f"{'seeds loop (fp32, one at a time)':<52}{len(seed_paths):>7}{seed_s:>9.2f}{seed_rate:>9.1f}{1:>9.1f}x")
    print(f"{f'plain transformers, batched generate (batch {batch_size})':<52}{len(paths):>7}{plain_s:>9.2f}"
          f"{plain_rate:>9.1f}{plain_rate / seed_rate:>9.1f}x{1:>9.1f}x")  # fmt: skip
    print(f"{'caption engine (caption_images)':<52}{len(paths):>7}{engine_s:>9.2f}{engine_rate:>9.1f}"
          f"{engine_rate / seed_rate:>9.1f}x{engine_rate / plain_rate:>9.1f}x")  # fmt: skip
    print(f"{'caption engine, the other pixel path':<52}{len(paths):>7}{other_s:>9.2f}{other_rate:>9.1f}"
          f"{other_rate / seed_rate:>9.1f}x{other_rate / plain_rate:>9.1f}x")  # fmt: skip
    if fp32 is not None:
        fp32_rate = len(paths) / fp32_s
        print(f"{'caption engine, fp32 copy of the model':<52}{len(paths):>7}{fp32_s:>9.2f}{fp32_rate:>9.1f}"
              f"{fp32_rate / seed_rate:>9.1f}x{fp32_rate / plain_rate:>9.1f}x")  # fmt: skip
        agree = sum(a == b for a, b in zip(engine_captions, fp32_captions))
        print(f"the engine in {str(loaded.dtype).removeprefix('torch.')}: {engine_rate / fp32_rate:.1f}x its fp32 img/s; "
              f"captions identical to fp32's on {agree} of {len(paths)} files")  # fmt: skip
    print(f"engine model step: {step}; captions identical to plain batched on {same} of {len(paths)} files (the engine "
          "decodes big JPEGs in draft mode, and forced tokens past a caption's end follow such small differences)")  # fmt: skip
    print(f"engine pixels: {pixel_path}; the other pixel path: {other.stage.describe()}")


if __name__ == "__main__":
    main()
