"""The feedback log at 0 / 1,000 / 10,000 / 100,000 rows: this project's log beside the old way, in one run.

    python -m bench.feedback_log                      # sizes 0,1000,10000,100000
    python -m bench.feedback_log --sizes 0,1000 --repeat 5

Appends: one `record()` (a new image and row, fsynced), a bulk `append` of 1,000 rows, and a
`python -m captioner feedback add` process. The old way is the log as it was at commit 92101d5 (read from git):
every append re-reads and re-parses the whole CSV and compares the new row with every old one.
Admin at the largest size: first (cold) read, cached read, filter + sort + one page, the last page, an approve of
one row, the read after it, an append and the read after that; beside the old way (a full parse per page run,
filter in a list, approve through a rewrite that re-reads).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import captioner.feedback as feedback
from captioner.feedback import FeedbackLog, FeedbackRow
from captioner.review import Filters, page_of, set_status, snapshot_statistics

ROOT = Path(__file__).resolve().parents[1]

OLD_COMMIT = "92101d5"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415478da63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)  # a 1x1 PNG


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=9, help="single appends timed per size (median reported)")
    parser.add_argument("--cli-repeat", type=int, default=3)
    return parser.parse_args()


def old_module():
    """feedback.py as it was before this work, loaded from git history (None when git cannot show it)."""
    try:
        source = subprocess.run(["git", "show", f"{OLD_COMMIT}:captioner/feedback.py"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "old_feedback.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_feedback", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_feedback"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module, path


def rows(n: int, start: int = 0) -> list[FeedbackRow]:
    """n distinct rows pointing at one stored image, shaped like the app's."""
    settings = json.dumps({"max_new_tokens": 30, "num_beams": 3, "prompt": "", "repetition_penalty": 1.0}, sort_keys=True)
    return [
        FeedbackRow(
            id=str(uuid.uuid4()), created_at=f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00+00:00",
            image_sha256="0" * 64, image_path="images/" + "0" * 64 + ".png", task="qa" if i % 10 == 0 else "caption",
            prompt="what color is it?" if i % 10 == 0 else "", model="Salesforce/blip-image-captioning-base",
            model_version=f"v{i % 4:04d}", model_output="a red circle on a white table",
            correction=f"a red circle number {i}", status="pending", settings=settings, score=f"{-(i % 997) / 100:.4f}",
        )  # fmt: skip
        for i in range(start, start + n)
    ]


def build(folder: Path, n: int) -> None:
    log = FeedbackLog(folder)
    log.store_image(PNG, "png")
    if n:
        log.append(rows(n))


def forget_caches() -> None:
    """As a fresh process would start: nothing parsed, no key index in memory."""
    feedback._SNAPSHOTS._by_path.clear()
    feedback._KEYS.clear()


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_of(count: int, action) -> float:
    return statistics.median(timed(action) for _ in range(count))


def cli_add(home: Path, image: Path, text: str, old_path: Path | None) -> float:
    if old_path is None:
        command = [sys.executable, "-m", "captioner", "feedback", "add", str(image), "--correction", text]
    else:  # the old log behind the same steps the CLI takes (start, decode the image, record, print)
        script = (
            "import importlib.util, sys, json; from captioner.images import decode, read_file; "
            f"spec = importlib.util.spec_from_file_location('old_feedback', {str(old_path)!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['old_feedback'] = m; spec.loader.exec_module(m); "
            "d = decode(read_file(sys.argv[1])); "
            "row, _ = m.FeedbackLog(sys.argv[2]).record("
            "d.source.data, d.extension, task='caption', model_output='', correction=sys.argv[3]); "
            "print(json.dumps(row.id))"
        )  # fmt: skip
        command = [sys.executable, "-c", script, str(image), str(home / "data"), text]
    env = {**os.environ, "CAPTIONER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - started


def appends(size: int, args, old, work: Path, image: Path) -> dict:
    new_home, old_home = work / f"new-{size}", work / f"old-{size}"
    build(new_home / "data", size)
    shutil.copytree(new_home, old_home)
    (old_home / "data" / "feedback.csv.keys").unlink(missing_ok=True)
    result = {}
    counter = iter(range(10**9))

    def new_record():
        FeedbackLog(new_home / "data").record(PNG + b"%d" % next(counter), "png", task="caption", model_output="a",
                                               correction=f"new {next(counter)}")  # fmt: skip

    forget_caches()
    result["record"] = median_of(args.repeat, new_record)
    result["bulk"] = timed(lambda: FeedbackLog(new_home / "data").append(rows(1000, start=10**7)))
    result["cli"] = statistics.median(cli_add(new_home, image, f"cli {i}", None) for i in range(args.cli_repeat))
    if old is not None:
        module, path = old
        log = module.FeedbackLog(old_home / "data")

        def old_record():
            log.record(PNG + b"%d" % next(counter), "png", task="caption", model_output="a", correction=f"old {next(counter)}")

        result["old record"] = median_of(max(3, args.repeat // 3) if size >= 100_000 else args.repeat, old_record)
        batch = 100 if size >= 100_000 else 1000  # 1,000 x 100,000 comparisons would run for many minutes
        fields = {f.name for f in dataclasses.fields(module.FeedbackRow)}  # it lacks the columns added since (linked_to)
        batch_rows = [module.FeedbackRow(**{k: v for k, v in row._asdict().items() if k in fields}) for row in rows(batch, start=2 * 10**7)]
        result["old bulk"] = timed(lambda: log.append(batch_rows)) * (1000 / batch)
        result["old bulk note"] = "" if batch == 1000 else f" ({batch} rows x {1000 // batch})"
        result["old cli"] = statistics.median(cli_add(old_home, image, f"old cli {i}", path) for i in range(args.cli_repeat))
    return result


def admin(size: int, old, work: Path) -> list[tuple[str, float, float | None]]:
    home = work / f"admin-{size}"
    build(home / "data", size)
    log = FeedbackLog(home / "data")
    forget_caches()
    pending = Filters(statuses=("pending",))
    query = lambda: page_of(log.snapshot(), pending, "least_confident", 1, 25)  # noqa: E731 - what a page run asks
    new = {"first read (cold parse)": timed(log.snapshot), "first query: pending, least confident": timed(query)}
    new["a page run after that (read + query)"] = timed(query)
    new["same query, last page"] = timed(lambda: page_of(log.snapshot(), pending, "least_confident", 10**9, 25))
    new["text filter, page 1"] = timed(lambda: page_of(log.snapshot(), Filters(text="number 4242"), "newest", 1, 25))
    new["statistics"] = timed(lambda: snapshot_statistics(log.snapshot()))
    chosen = {query().rows[0].id}
    new["approve one row (atomic rewrite)"] = timed(lambda: set_status(log, chosen, "approved", "bench"))
    new["a page run after the approve"] = timed(query)
    log.append(rows(1, start=3 * 10**7))
    new["a page run after one more append"] = timed(query)
    olds: dict[str, float] = {}
    if old is not None:  # the old page parsed the whole log on every run, filtered in a list, kept the first 500
        module, _ = old
        old_home = work / f"admin-old-{size}"
        shutil.copytree(home, old_home)
        old_log = module.FeedbackLog(old_home / "data")
        page_run = lambda: [r for r in old_log.read()[0] if r.status == "pending"][:500]  # noqa: E731
        olds["first read (cold parse)"] = timed(old_log.read)
        run = timed(page_run)
        one = {old_log.read()[0][5].id}
        olds["approve one row (atomic rewrite)"] = timed(
            lambda: old_log.rewrite(lambda rs: [replace(r, status="approved") if r.id in one else r for r in rs])
        )
        olds.update({name: run for name in ("a page run after that (read + query)", "a page run after the approve",
                                            "a page run after one more append")})  # fmt: skip
    return [(name, seconds, olds.get(name)) for name, seconds in new.items()]


def machine_check() -> float:
    """Seconds for a fixed pure-Python loop: how busy this machine is while the figures are taken."""
    return timed(lambda: sum(range(10**7)))


def main() -> None:
    args = parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    old = old_module()
    work = Path(tempfile.mkdtemp(prefix="feedback-bench-"))
    image = work / "img.png"
    image.write_bytes(PNG)
    FeedbackLog(work / "warm-up").record(PNG, "png", task="caption", model_output="a", correction="b")  # imports, caches
    try:
        print(f"machine check: sum(range(10**7)) took {machine_check():.3f} s")
        print(f"feedback log append cost (seconds; median of {args.repeat} records, {args.cli_repeat} CLI calls); "
              f"old = {OLD_COMMIT}" + ("" if old else " (unavailable: no git history)"))  # fmt: skip
        print(f"{'rows':>8}  {'record()':>9} {'old':>9}  {'bulk 1,000':>10} {'old':>9}  {'feedback add':>12} {'old':>9}")
        base = None
        for size in sizes:
            r = appends(size, args, old, work, image)
            base = base or r
            print(f"{size:>8,}  {r['record']:>9.4f} {r.get('old record', float('nan')):>9.4f}  {r['bulk']:>10.3f} "
                  f"{r.get('old bulk', float('nan')):>9.3f}  {r['cli']:>12.3f} {r.get('old cli', float('nan')):>9.3f}"
                  f"{r.get('old bulk note', '')}")  # fmt: skip
        last = r
        def growth(key: str) -> str:
            old = last.get(f"old {key}", float("nan")) / base.get(f"old {key}", float("nan"))
            return f"x{last[key] / base[key]:.2f} (old x{old:.1f})"

        print(f"growth {sizes[0]:,} -> {sizes[-1]:,} rows: record() {growth('record')}, bulk {growth('bulk')}, "
              f"feedback add {growth('cli')}")  # fmt: skip
        print(f"\nadmin at {sizes[-1]:,} rows (seconds)")
        print(f"{'step':<40} {'this project':>12} {'old':>9} {'ratio':>7}")
        for name, new, old_seconds in admin(sizes[-1], old, work):
            ratio = f"{old_seconds / new:>7.1f}" if old_seconds else f"{'':>7}"
            print(f"{name:<40} {new:>12.4f} {old_seconds if old_seconds is not None else float('nan'):>9.3f} {ratio}")
        print(f"machine check: sum(range(10**7)) took {machine_check():.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
