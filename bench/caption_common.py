"""What the caption benches share: the app's thread policy, the model (a spec, or a config folder with random
weights), the JPEG files, the plain transformers way, and percentiles."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from captioner import runtime

# Before torch loads: the threads and OpenMP wait policy the app and the CLI run with, so the figures are theirs
# (under OpenMP's own spinning wait a caption times differently than it does in the app).
runtime.configure("app")

from captioner.demo.world import sample  # noqa: E402
from captioner.engine import EngineLimits, engine_for  # noqa: E402
from captioner.models import (  # noqa: E402
    LoadedModel, ModelSpec, load_captioner, quiet_transformers, resolve_device, resolve_dtype,
)  # fmt: skip
from captioner.options import GenerationOptions  # noqa: E402
from captioner.settings import Settings  # noqa: E402


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help="model spec to load (ignored with --config)")
    parser.add_argument("--config", type=Path, help="a config folder (e.g. /work/shared/blip-base): that architecture, random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, help="torch's threads (default: torch's, one per core); the engine runs "
                        "on half of them while images decode beside it")  # fmt: skip
    parser.add_argument("--min-side", type=int, default=480)
    parser.add_argument("--max-side", type=int, default=1024)


def load(args) -> LoadedModel:
    """The model, with its engine started: the plain ways run on torch's default threads (--threads sets it), the
    engine on its own policy (fewer while images decode beside the model)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = _load(args)
    limits = EngineLimits.for_model(loaded.model, loaded.device, loaded.dtype)
    beside = limits.threads_beside_decoding and min(limits.threads_beside_decoding, torch.get_num_threads())
    engine_for(loaded, replace(limits, threads_beside_decoding=beside))
    return loaded


def _load(args) -> LoadedModel:
    import torch

    settings = Settings(home=Path.cwd(), device=args.device, dtype=args.dtype)
    if not args.config:
        return load_captioner(args.model, settings)
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    quiet_transformers()
    device = resolve_device(args.device, "--device")
    dtype = resolve_dtype(args.dtype, device, "--dtype")
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig.from_pretrained(args.config)).to(device, dtype).eval()
    processor = BlipProcessor.from_pretrained(args.config)
    return LoadedModel(ModelSpec(str(args.config), "caption", "local", str(args.config), "random"), model, processor, device, dtype)


def write_jpegs(folder: Path, n: int, min_side: int, max_side: int) -> list[Path]:
    """n demo-world JPEG files, encoded in threads (one by one, the GPU check's 2,048 take about 14 s of one core)."""

    def one(i: int) -> Path:
        path = folder / f"{i:04d}.jpg"
        sample(random.Random(i), min_side=min_side, max_side=max_side).image.save(path, quality=90)
        return path

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(n)))


def plain_generate(loaded: LoadedModel, model, images: list, options: GenerationOptions, dtype=None) -> list[str]:
    """The usual transformers recipe for a list of PIL images: processor, one generate, batch_decode."""
    import torch

    inputs = loaded.processor(images=images, return_tensors="pt").to(loaded.device, dtype or loaded.dtype)
    lengths = {"min_new_tokens": options.min_new_tokens, "max_new_tokens": options.max_new_tokens}
    if getattr(model.generation_config, "min_length", 0):
        lengths["min_length"] = 0  # the checkpoint's own minimum would override the one asked for
    with torch.inference_mode():
        out = model.generate(**inputs, num_beams=options.num_beams, **lengths)
    return loaded.processor.batch_decode(out, skip_special_tokens=True)


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args):
    """(seconds, result) of fn(*args), the GPU's queued work included."""
    synchronize()
    started = time.perf_counter()
    result = fn(*args)
    synchronize()
    return time.perf_counter() - started, result


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def describe(loaded: LoadedModel) -> str:
    import torch

    return (f"model {loaded.spec.text} ({loaded.version}) on {loaded.device} {str(loaded.dtype).removeprefix('torch.')}, "
            f"torch threads {torch.get_num_threads()}")  # fmt: skip
