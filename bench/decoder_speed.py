"""Caption decoding speed: HF generate against this project's fast BLIP decoder, on the same pixels, in one run.

    python -m bench.decoder_speed                                        # CPU, the embedded demo captioner
    python -m bench.decoder_speed --config ../shared/blip-base --device cuda   # real BLIP size, random weights

Both ways get the same preprocessed pixels already on the device and generate exactly --tokens new tokens
(min = max new tokens), greedy and 3 beams, at batch 1 and 32 (and 256 on CUDA); generate is called as
captioner/caption.py calls it. Each way's first call per shape (CUDA graph capture,
allocations) is warm-up and not timed. "same" counts images whose tokens equal generate's: all of them in fp32;
in bf16 near-ties may flip, and random weights (--config) make near-flat logits full of them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path


from bench.caption_throughput import load  # (the same model loading as the throughput bench)

from captioner.demo.world import sample
from captioner.engine.blip_decoder import BlipDecoder, generate_decoded
from captioner.engine.blip_support import generate_kwargs
from captioner.options import GenerationOptions


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="model spec to load (ignored with --config)")
    parser.add_argument("--config", type=Path, help="a config folder: build that architecture with random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (this machine is shared)")
    parser.add_argument("--tokens", type=int, default=20, help="max new tokens per caption, both ways")
    parser.add_argument("--min-tokens", type=int, help="min new tokens (default: --tokens, a forced length)")
    parser.add_argument("--batches", type=int, nargs="*", help="batch sizes (default 1 32, and 256 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the median is shown")
    return parser.parse_args()


def pixels_for(loaded, n: int):
    rng = random.Random(0)
    images = [sample(rng, min_side=64, max_side=512).image for _ in range(n)]
    pixels = loaded.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels.to(loaded.device, loaded.dtype)


def timed(fn, repeats: int) -> tuple[float, object]:
    import torch

    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> None:
    import torch

    args = parse_args()
    torch.set_num_threads(args.threads)
    loaded = load(args)
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    batches = args.batches or ([1, 32, 256] if loaded.device.type == "cuda" else [1, 32])
    pixels = pixels_for(loaded, max(batches))
    decoder = BlipDecoder(model, tokenizer)
    minimum = args.tokens if args.min_tokens is None else args.min_tokens
    print(f"model {loaded.spec.text} ({loaded.version}) on {loaded.device} {loaded.dtype}, torch threads "
          f"{torch.get_num_threads()}; {minimum}-{args.tokens} new tokens; median of {args.repeats}")  # fmt: skip
    print(f"{'batch':>5} {'beams':>5} {'generate ms':>12} {'fast ms':>9} {'speed-up':>9} "
          f"{'generate img/s':>15} {'fast img/s':>11} {'same':>7}")  # fmt: skip
    for batch in batches:
        for beams in (1, 3):
            options = GenerationOptions(num_beams=beams, max_new_tokens=args.tokens, min_new_tokens=minimum)
            chunk = pixels[:batch]
            reason = BlipDecoder.unsupported(model, options)
            if reason:
                raise SystemExit(f"the fast decoder cannot run this model: {reason}")
            decoder.decode(chunk, options)  # warm-up: graph capture, buffers
            expected = generate_decoded(model, tokenizer, chunk, options)  # generate's warm-up at this shape too
            kwargs = generate_kwargs(model, options)  # what captioner/caption.py passes to generate
            plain_s, _ = timed(lambda: model.generate(pixel_values=chunk, **kwargs), args.repeats)  # noqa: B023 (called here)
            fast_s, got = timed(lambda: decoder.decode(chunk, options), args.repeats)  # noqa: B023 (called here)
            same = sum(a.sequence == b.sequence for a, b in zip(expected, got))
            print(f"{batch:>5} {beams:>5} {plain_s * 1000:>12.1f} {fast_s * 1000:>9.1f} {plain_s / fast_s:>8.1f}x "
                  f"{batch / plain_s:>15.1f} {batch / fast_s:>11.1f} {same:>3}/{batch:<3}")  # fmt: skip
    print(f"decoder stats: {decoder.stats}")


if __name__ == "__main__":
    main()
