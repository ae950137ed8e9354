"""Indexing throughput and update cost: this project's gallery indexer against a plain loop, in one run.

    python -m bench.index_throughput                                  # CPU, the embedded demo CLIP
    python -m bench.index_throughput --device cuda --model config:ViT-B-32 --images 4000 --min-side 480 --max-side 1024
    python -m bench.index_throughput --device cuda --model local-dir:/path/to/open_clip/folder ...
    python -m bench.index_throughput --update                         # adding 1,000 files: 1,000 vs 100,000 indexed

Throughput, on the same JPEG files (400-1600 px by default): the plain loop opens each file with PIL, preprocesses it
and encodes it alone; "indexer, PIL decoding" is the indexer with the image door and open_clip's own
transform (how it worked before the device image path); "indexer" decodes JPEGs in batches on the model's
device (nvjpeg on a GPU), resizes there, and encodes while the next batch decodes. `config:NAME` writes an
open_clip architecture's config (no weights: random ones, the same work) to a local-dir folder first.

--update builds two indexes (demo CLIP by default, tiny images) of --small and --large files, adds --new
files to each, and times that update: its cost should follow the new files, not the index's size.

--move builds an index of --large files and times what should cost hashing, not embedding: --new files
renamed into another folder; moved out of the gallery (one update) and back (the next); the whole gallery
gone (a disk not mounted: one update) and back. Beside them, the same number of files read and hashed,
and --new files that are new (embedded).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import os
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from captioner import runtime

runtime.configure("cli")  # before torch loads: the threads and OpenMP wait policy `captioner index` runs with

from captioner import embed  # noqa: E402
from captioner.demo.world import render, sample  # noqa: E402
from captioner.embed import default_batch_size, image_side, load_embedder, write_open_clip_folder  # noqa: E402
from captioner.index import update_index  # noqa: E402
from captioner.settings import Settings  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="search model spec, or config:NAME (an open_clip architecture)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--plain-images", type=int, help="files for the plain loop (default: all; it is slow)")
    parser.add_argument("--min-side", type=int, default=400, help="480 for the GPU target's files")
    parser.add_argument("--max-side", type=int, default=1600, help="1024 for the GPU target's files")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    parser.add_argument("--update", action="store_true", help="measure the cost of adding files instead")
    parser.add_argument("--move", action="store_true", help="measure the cost of moved and returning files instead")
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1_000)
    return parser.parse_args()


def load(args, work: Path):
    spec = args.model
    if spec.startswith("config:"):
        import open_clip

        name = spec.removeprefix("config:")
        config = open_clip.get_model_config(name)
        preprocess = {"size": config["vision_cfg"]["image_size"], "interpolation": "bicubic", "resize_mode": "shortest"}
        write_open_clip_folder(None, config, preprocess, work / name)
        spec = f"local-dir:{work / name}"
    return load_embedder(spec, Settings(home=work, device=args.device, dtype=args.dtype))


def plain_loop(loaded, paths):
    """One image at a time: PIL open, preprocess, encode."""
    import torch
    from PIL import Image

    vectors = []
    for path in paths:
        pixels = loaded.processor.preprocess(Image.open(path).convert("RGB")).unsqueeze(0).to(loaded.device, loaded.dtype)
        with torch.inference_mode():
            vectors.append(loaded.model.encode_image(pixels, normalize=True).float().cpu())
    synchronize(loaded)
    return vectors


def model_alone(loaded, calls: int = 3) -> tuple[float, int]:
    """(images/s, batch) of the image tower on ready pixels at the indexer's batch size: no decoding at all."""
    import torch

    batch, side = default_batch_size(loaded), image_side(loaded)
    pixels = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0)).to(loaded.device, loaded.dtype)
    with torch.inference_mode():
        loaded.model.encode_image(pixels)  # warm-up
        synchronize(loaded)
        started = time.perf_counter()
        for _ in range(calls):
            loaded.model.encode_image(pixels)
        synchronize(loaded)
    return calls * batch / (time.perf_counter() - started), batch


def synchronize(loaded) -> None:
    import torch

    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)


def write_jpegs(folder: Path, n: int, min_side: int, max_side: int) -> list[Path]:
    folder.mkdir(parents=True)

    def one(i: int) -> Path:
        path = folder / f"{i:06d}.jpg"
        sample(random.Random(i), min_side=min_side, max_side=max_side).image.save(path, quality=90)
        return path

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(n)))


def throughput(args) -> None:
    import torch

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        loaded = load(args, work)
        paths = write_jpegs(work / "gallery", args.images, args.min_side, args.max_side)
        plain_paths = paths[: args.plain_images or len(paths)]
        plain_loop(loaded, paths[:8])  # warm-up, every way
        update_index(loaded, work / "gallery", work / "warm")
        started = time.perf_counter()
        plain_loop(loaded, plain_paths)
        plain_s = time.perf_counter() - started
        real_spec = embed.pixel_spec
        embed.pixel_spec = lambda loaded: None  # the image door and open_clip's own transform
        started = time.perf_counter()
        update_index(loaded, work / "gallery", work / "door")
        door_s = time.perf_counter() - started
        embed.pixel_spec = real_spec
        started = time.perf_counter()
        index, report = update_index(loaded, work / "gallery", work / "data")
        ours_s = time.perf_counter() - started
        fp32_s = None
        if loaded.dtype != torch.float32:  # the same indexer on fp32 weights: what the lower precision gains
            fp32 = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).float(), dtype=torch.float32,
                                       lock=threading.Lock())  # fmt: skip
            update_index(fp32, work / "gallery", work / "warm-fp32")
            started = time.perf_counter()
            update_index(fp32, work / "gallery", work / "fp32")
            fp32_s = time.perf_counter() - started
        model_rate, batch = model_alone(loaded)
    n = len(paths)
    assert report.embedded == n, report
    threads = torch.get_num_threads()
    print(f"model {loaded.name} ({loaded.version}) on {loaded.device} in {str(loaded.dtype).removeprefix('torch.')}, "
          f"{threads} torch threads; {n} JPEG files of {args.min_side}-{args.max_side} px")  # fmt: skip
    print(f"{'way':<58}{'files':>7}{'seconds':>9}{'images/s':>10}")
    for name, count, seconds in (
        ("plain loop (PIL open, preprocess, encode one image)", len(plain_paths), plain_s),
        ("indexer, PIL decoding + open_clip transform (before)", n, door_s),
        ("indexer (device decode + resize, encode overlapped)", n, ours_s),
        *([("indexer, fp32 copy of the model", n, fp32_s)] if fp32_s else []),
    ):
        print(f"{name:<58}{count:>7}{seconds:>9.2f}{count / seconds:>10.1f}")
    plain_rate = len(plain_paths) / plain_s
    if fp32_s:
        print(f"the indexer in {str(loaded.dtype).removeprefix('torch.')}: {fp32_s / ours_s:.1f}x its fp32 images/s")
    print(f"the model alone on pixels already made, batch {batch}: {model_rate:.1f} images/s, "
          f"{model_rate / plain_rate:.1f}x the plain loop (the most any indexer gets from batching)")  # fmt: skip
    print(f"indexer: {n / ours_s / plain_rate:.1f}x the plain loop, {door_s / ours_s:.1f}x PIL decoding ({index.kind} index)")


def tiny_pictures(folder: Path, start: int, count: int) -> None:
    """Small distinct demo-world PNGs (64 px), written in threads."""
    shapes = [(s, c) for s in ("circle", "square", "triangle") for c in ("red", "green", "blue", "yellow")]

    def one(i: int) -> None:
        rng = random.Random(i)
        shape, color = shapes[i % len(shapes)]
        x, y = rng.uniform(2, 20), rng.uniform(2, 20)
        buffer = io.BytesIO()
        render(shape, color, 64, (x, y, x + rng.uniform(25, 40), y + rng.uniform(25, 40))).save(buffer, "PNG")
        sub = folder / f"{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:07d}.png").write_bytes(buffer.getvalue())

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, range(start, start + count)))


def update_cost(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        loaded = load(args, work)
        for size in (args.small, args.large):
            gallery = work / f"gallery-{size}"
            tiny_pictures(gallery, 0, size)
            started = time.perf_counter()
            index, _ = update_index(loaded, gallery, work / "data")
            build_s = time.perf_counter() - started
            tiny_pictures(gallery, 10_000_000, args.new)
            started = time.perf_counter()
            index, report = update_index(loaded, gallery, work / "data")
            update_s = time.perf_counter() - started
            assert report.added == args.new and report.unchanged == size, report
            started = time.perf_counter()
            _, unchanged = update_index(loaded, gallery, work / "data")
            again_s = time.perf_counter() - started
            rows.append((size, build_s, update_s, again_s, index.kind, len(index.meta["segments"]), report.rewritten_because))
    print(f"model {loaded.name} on {loaded.device}; {args.new:,} new 64 px PNGs added to an index of N files")
    print(f"{'N':>9}{'build s':>9}{'+' + format(args.new, ',') + ' s':>10}{'rerun s':>9}  index after the update")
    for size, build_s, update_s, again_s, kind, segments, why in rows:
        note = f"{kind}, {segments} segment(s)" + (f"; vectors rewritten: {why}" if why else "; old vectors untouched")
        print(f"{size:>9,}{build_s:>9.1f}{update_s:>10.2f}{again_s:>9.2f}  {note}")
    (small, _, small_s, _, *_), (large, _, large_s, _, *_) = rows
    print(f"adding {args.new:,} files to {large:,} costs {large_s / small_s:.2f}x adding them to {small:,} "
          f"(the index is {large / small:.0f}x larger)")  # fmt: skip


def move_cost(args) -> None:
    """Files that come back, under the same or a new path: the cost of reading and hashing them, not embedding."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work, loaded = Path(work), load(args, Path(work))
        gallery, data = work / "gallery", work / "data"
        tiny_pictures(gallery, 0, args.large)
        update_index(loaded, gallery, data)
        moved = sorted(gallery.rglob("*.png"))[: args.new]

        def timed(name: str, change) -> None:
            change()
            started = time.perf_counter()
            _, report = update_index(loaded, gallery, data)
            rows.append((name, report.added + report.changed, time.perf_counter() - started, report.embedded, report.reused))

        def hash_them() -> None:
            started = time.perf_counter()
            for path in moved:
                hashlib.sha256(path.read_bytes()).hexdigest()
            rows.append((f"read + sha256 of {len(moved):,} files, one by one", len(moved), time.perf_counter() - started, 0, 0))

        hash_them()
        timed(f"{args.new:,} new files (embedded)", lambda: tiny_pictures(gallery / "new", 20_000_000, args.new))
        (gallery / "renamed").mkdir()
        timed(f"{args.new:,} files moved to a new folder", lambda: [p.rename(gallery / "renamed" / p.name) for p in moved])
        timed(f"the same {args.new:,} moved out of the gallery", lambda: shutil.move(gallery / "renamed", work / "aside"))
        timed(f"the same {args.new:,} moved back", lambda: shutil.move(work / "aside", gallery / "renamed"))
        timed("every file gone (disk not mounted)", lambda: (shutil.move(gallery, work / "disk"), gallery.mkdir()))
        timed("every file back (disk mounted again)", lambda: (gallery.rmdir(), shutil.move(work / "disk", gallery)))
    print(f"model {loaded.name} on {loaded.device}; an index of {args.large:,} 64 px PNGs; files moving in and out")
    print(f"{'case':<50}{'files read':>11}{'seconds':>9}{'embedded':>10}{'reused':>8}")
    for name, files, seconds, embedded, reused in rows:
        print(f"{name:<50}{files:>11,}{seconds:>9.2f}{embedded:>10,}{reused:>8,}")
    hash_s, new_s, (_, _, back_s, back_embedded, _), (_, back, remount_s, remount_embedded, _) = rows[0][2], rows[1][2], rows[4], rows[6]
    print(f"files back: {back_embedded:,} of {args.new:,} embedded again in {back_s:.2f} s (read + sha256 alone "
          f"{hash_s:.2f} s, {args.new:,} new files {new_s:.2f} s); a remounted gallery: {remount_embedded:,} of "
          f"{back:,} embedded again in {remount_s:.2f} s")  # fmt: skip


def main():
    import torch

    args = parse_args()
    torch.set_num_threads(args.threads)
    move_cost(args) if args.move else update_cost(args) if args.update else throughput(args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
