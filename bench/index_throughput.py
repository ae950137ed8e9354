"""Indexing throughput: this project's gallery indexer against a plain loop, on the same JPEG files, in one run.

    python bench/index_throughput.py                         # CPU, the embedded demo CLIP
    python bench/index_throughput.py --model ViT-B-32/laion2b_s34b_b79k --device cuda

The plain loop opens each file with PIL, preprocesses it and encodes it alone. The indexer reads and
decodes files in worker threads (JPEGs at reduced scale when they are much larger than the model's
input) while the model encodes whole batches, then writes the index.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioner.demo.world import sample  # noqa: E402
from captioner.embed import load_embedder  # noqa: E402
from captioner.index import update_index  # noqa: E402
from captioner.settings import Settings  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--min-side", type=int, default=400)
    parser.add_argument("--max-side", type=int, default=1600)
    return parser.parse_args()


def plain_loop(loaded, paths):
    """One image at a time: PIL open, preprocess, encode."""
    import torch
    from PIL import Image

    vectors = []
    for path in paths:
        pixels = loaded.processor.preprocess(Image.open(path).convert("RGB")).unsqueeze(0).to(loaded.device, loaded.dtype)
        with torch.inference_mode():
            vectors.append(loaded.model.encode_image(pixels, normalize=True).float().cpu())
    return vectors


def main():
    args = parse_args()
    loaded = load_embedder(args.model, Settings(home=Path.cwd(), device=args.device), fallback=False)
    with tempfile.TemporaryDirectory() as work:
        gallery = Path(work) / "gallery"
        gallery.mkdir()
        rng = random.Random(0)
        paths = []
        for i in range(args.images):
            path = gallery / f"{i:05d}.jpg"
            sample(rng, min_side=args.min_side, max_side=args.max_side).image.save(path, quality=90)
            paths.append(path)
        plain_loop(loaded, paths[:8])  # warm-up, both ways
        update_index(loaded, gallery, Path(work) / "warm")
        started = time.perf_counter()
        plain_loop(loaded, paths)
        plain_s = time.perf_counter() - started
        started = time.perf_counter()
        index, report = update_index(loaded, gallery, Path(work) / "data")
        ours_s = time.perf_counter() - started
    n = len(paths)
    assert report.embedded == n, report
    print(f"model {loaded.name} ({loaded.version}) on {loaded.device}; {n} JPEG files of {args.min_side}-{args.max_side} px")
    print(f"{'way':<52}{'seconds':>9}{'images/s':>10}")
    print(f"{'plain loop (PIL open, preprocess, encode one image)':<52}{plain_s:>9.2f}{n / plain_s:>10.1f}")
    print(f"{'captioner index update (hash, batched, parallel decode)':<52}{ours_s:>9.2f}{n / ours_s:>10.1f}")
    print(f"speed-up: {plain_s / ours_s:.1f}x ({index.kind} index written)")


if __name__ == "__main__":
    main()
