"""Caption latency through the engine beside plain generate; then 32 users at once against one at a time.

    python -m bench.caption_latency                                              # CPU, the demo captioner
    python -m bench.caption_latency --config /work/shared/blip-base --device cuda  # BLIP base size, random weights

Every caption here is one upload (JPEG bytes, 480-1024 px) captioned as the caption page does it:
caption_images(loaded, [upload], options). Plain generate is the usual recipe on the same bytes: PIL open,
processor, generate, decode. At most --tokens new tokens (exactly that many with --force-tokens).
1. One caption, p50/p90 over --samples uploads, greedy and 3 beams; the two ways alternate upload by upload.
2. --users threads start together, each with its own upload, against the same uploads one at a time; each way
   runs --rounds times (alternating) and its best round counts. Plain generate serves the same users the seeds'
   way, one model behind a lock (the users wait in turn), and one at a time. The last line gives the engine's
   ratio of captions/s.
3. On the CPU, the cores' own work for those users' captions: each upload's decode and the model on the whole
   batch, timed on one thread. Spread over every core without a moment lost, it bounds what any scheduler can
   reach against one at a time (the engine is measured against that bound, not just against 8x).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from pathlib import Path

from bench.caption_common import add_model_arguments, describe, load, percentile, plain_generate, synchronize, timed, write_jpegs

from captioner import runtime
from captioner.caption import caption_images
from captioner.engine import engine_for
from captioner.engine.model_step import ModelStep
from captioner.engine.threads import use_torch_threads
from captioner.images import ImageInput, read_file
from captioner.options import GenerationOptions


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=32, help="uploads timed one by one in part 1")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=20, help="max new tokens")
    parser.add_argument("--force-tokens", action="store_true", help="min new tokens = max (random weights never stop early anyway)")
    parser.add_argument("--users-beams", type=int, default=1, help="beams in part 2")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def engine_caption(loaded, upload: ImageInput, options: GenerationOptions) -> str:
    result = caption_images(loaded, [upload], options)[0]
    assert result.ok, result.error
    return result.caption


def plain_caption(loaded, upload: ImageInput, options: GenerationOptions) -> str:
    from PIL import Image

    return plain_generate(loaded, loaded.model, [Image.open(io.BytesIO(upload.data)).convert("RGB")], options)[0]


def seconds_of(fn, *args) -> float:
    synchronize()
    started = time.perf_counter()
    fn(*args)
    synchronize()
    return time.perf_counter() - started


def one_caption(loaded, uploads, options) -> dict[str, list[float]]:
    waits = {"plain generate": [], "engine": []}
    for upload in uploads:
        waits["plain generate"].append(seconds_of(plain_caption, loaded, upload, options))
        waits["engine"].append(seconds_of(engine_caption, loaded, upload, options))
    return waits


def one_at_a_time(loaded, uploads, options, caption=engine_caption) -> tuple[float, list[float]]:
    started = time.perf_counter()
    waits = [seconds_of(caption, loaded, upload, options) for upload in uploads]
    return time.perf_counter() - started, waits


def locked(caption):
    """caption behind one lock, as the seeds' app shared its model between sessions."""
    lock = threading.Lock()

    def in_turn(*args):
        with lock:
            return caption(*args)

    return in_turn


def all_at_once(loaded, uploads, options, caption=engine_caption) -> tuple[float, list[float]]:
    """Each user's wait runs from the moment all start together to its own caption."""
    go, waits, ends = threading.Barrier(len(uploads) + 1), [0.0] * len(uploads), [0.0] * len(uploads)
    started = [0.0]

    def user(i):
        go.wait()
        caption(loaded, uploads[i], options)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    started[0] = time.perf_counter()
    go.wait()
    for thread in threads:
        thread.join()
    waits = [end - started[0] for end in ends]
    return max(waits), waits


def work_bound(loaded, users, options, sequential_s: float) -> str:
    """The line of part 3: one thread's time to decode every upload and run the model on all of them at once."""
    import torch

    stage, step = engine_for(loaded).stage, ModelStep(loaded.model, loaded.processor.tokenizer, cuda_graphs=False)
    threads = torch.get_num_threads()
    use_torch_threads(1)
    try:
        decode_s, prepared = timed(lambda: [stage.prepare_one(upload, False) for upload in users])
        pixels = stage.collate([item.pixels for item in prepared])
        step.run(pixels, options)  # warm-up
        model_s = min(seconds_of(step.run, pixels, options) for _ in range(3))
    finally:
        use_torch_threads(threads)
    cores = runtime.usable_cores()
    best_s = (decode_s + model_s) / cores
    return (f"the cores' own work for {len(users)} captions, one thread: decoding {decode_s * 1000:.0f} ms + the model on all "
            f"at once {model_s * 1000:.0f} ms; on {cores} cores at best {best_s * 1000:.0f} ms, "
            f"{sequential_s / best_s:.1f}x one at a time")  # fmt: skip


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:>9.1f}"


def main() -> None:
    args = parse_args()
    loaded = load(args)
    count = max(args.samples, args.users)
    with tempfile.TemporaryDirectory() as folder:
        uploads = [read_file(path) for path in write_jpegs(Path(folder), count, args.min_side, args.max_side)]
    forced = args.tokens if args.force_tokens else 0
    print(f"{describe(loaded)}; uploads: JPEG files of {args.min_side}-{args.max_side} px; "
          f"at most {args.tokens} new tokens{' (forced)' if forced else ''}")  # fmt: skip
    print(f"\none caption, {args.samples} uploads{'':<21}{'p50 ms':>9}{'p90 ms':>9}{'p50 speed-up':>14}")
    for beams in (1, 3):
        options = GenerationOptions(num_beams=beams, max_new_tokens=args.tokens, min_new_tokens=forced).validate()
        one_caption(loaded, uploads[:3], options)  # warm-up
        waits = one_caption(loaded, uploads[: args.samples], options)
        plain_p50 = percentile(waits["plain generate"], 50)
        for way, values in waits.items():
            label = f"  {way}, {'greedy' if beams == 1 else f'{beams} beams'}"
            print(f"{label:<50}{ms(values, 50)}{ms(values, 90)}{plain_p50 / percentile(values, 50):>13.1f}x")

    options = GenerationOptions(num_beams=args.users_beams, max_new_tokens=args.tokens, min_new_tokens=forced).validate()
    users = uploads[: args.users]
    ways = {
        "plain generate, one at a time": lambda: one_at_a_time(loaded, users, options, plain_caption),
        f"plain generate, {args.users} at once behind a lock": lambda: all_at_once(loaded, users, options, locked(plain_caption)),
        "engine, one at a time": lambda: one_at_a_time(loaded, users, options),
        f"engine, {args.users} at once (threads)": lambda: all_at_once(loaded, users, options),
    }  # fmt: skip
    best = {way: (float("inf"), []) for way in ways}
    for _ in range(args.rounds):
        for way, run in ways.items():
            best[way] = min(best[way], run())
    print(f"\n{args.users} users, {args.users_beams} beam(s), best of {args.rounds} rounds"
          f"{'':<12}{'seconds':>9}{'capt/s':>9}{'p50 wait':>10}{'p95 wait':>10}")  # fmt: skip
    for way, (seconds, waits) in best.items():
        print(f"  {way:<48}{seconds:>9.2f}{len(users) / seconds:>9.1f}{ms(waits, 50)} ms{ms(waits, 95)} ms")
    sequential, together = best["engine, one at a time"], best[f"engine, {args.users} at once (threads)"]
    seeds = best[f"plain generate, {args.users} at once behind a lock"]
    engine = engine_for(loaded)
    print(f"engine model step: {engine.step.last_path}; {engine.batches_run} batches for {engine.images_run} images in all")
    print(f"engine pixels: {engine.stage.describe()}")
    p95 = {way: percentile(waits, 95) * 1000 for way, (_, waits) in (("engine", together), ("seeds", seeds))}
    print(f"{args.users} concurrent users through the engine: {seeds[0] / together[0]:.1f}x the captions/s of plain generate "
          f"behind a lock, p95 wait {p95['engine']:.0f} ms against {p95['seeds']:.0f} ms")  # fmt: skip
    if str(loaded.device) == "cpu":
        print(work_bound(loaded, users, options, sequential[0]))
    print(f"{args.users} concurrent users: {sequential[0] / together[0]:.1f}x the captions/s of one at a time")


if __name__ == "__main__":
    main()
