"""The retraining loop on the demo world, end to end: log corrections, run `python -m finetune`, measure.

    python -m bench.learning_loop [--corrections 3,10,30,100] [--confirmations 50] [--eval 200] [--seeds 7]
    python -m bench.learning_loop --config ../shared/blip-base --device cuda --corrections 1000   # time only

For each number of star corrections: a fresh CAPTIONER_HOME with the embedded demo captioner live, approved
corrections of star images (a shape it has never seen) and confirmations of the known shapes logged through
the feedback log, then `python -m finetune` with its defaults. It then captions images from generator seeds the
project never used: fresh stars (the new concept) and the three old shapes in four size buckets from 64 to
512 px (old knowledge, before and after). --seeds repeats it with other corrections; --repeat runs each case
again to show that a run is deterministic. With --config, a BLIP of that architecture with random weights is
the live model and only the retrain's time is meaningful (its captions are noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captioner import runtime

THREADS = runtime.configure("cli")  # before torch loads

from captioner.caption import caption_images  # noqa: E402
from captioner.demo.quality import demo_inputs  # noqa: E402
from captioner.feedback import FeedbackLog  # noqa: E402
from captioner.models import load_captioner, quiet_transformers  # noqa: E402
from captioner.options import GenerationOptions  # noqa: E402
from captioner.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

BUCKETS = ((64, 127), (128, 255), (256, 383), (384, 512))
EVAL_SEED = 9_100_000  # no other code of the project draws demo images from seeds near this one


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corrections", default="3,10,30,100", help="comma-separated numbers of star corrections")
    parser.add_argument("--confirmations", type=int, default=50)
    parser.add_argument("--eval", type=int, default=200, help="fresh images per figure (each size bucket, and stars)")
    parser.add_argument("--seeds", default="7", help="comma-separated seeds of the logged corrections")
    parser.add_argument("--repeat", type=int, default=1, help="run each case this many times (determinism)")
    parser.add_argument("--config", type=Path, help="time a BLIP of this architecture (random weights) instead")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--finetune-args", default="", help="extra options for python -m finetune (experiments)")
    return parser.parse_args()


def log_feedback(settings: Settings, live, corrections: int, confirmations: int, seed: int, pretend: bool) -> None:
    """Approved rows as a reviewer leaves them: what the live model said, and what is right. pretend: a model of
    random weights says nothing right, so its confirmations are logged as if it had."""
    log = FeedbackLog(settings.data_dir)
    stars, known = demo_inputs(corrections, seed, shapes=("star",)), demo_inputs(confirmations, seed + 1)
    for (inputs, samples), confirming in ((stars, False), (known, True)):
        said = caption_images(live, inputs, GenerationOptions(num_beams=1), batch_size=64)
        for item, truth, result in zip(inputs, samples, said):
            output = truth.caption if confirming and pretend else (result.caption or "")
            log.record(item.data, "png", task="caption", model_output=output, correction=truth.caption,
                       model=live.name, model_version=live.version, status="approved")  # fmt: skip


def fresh_images(n: int) -> dict:
    """The judging sets: fresh stars, and the old shapes in each size bucket."""
    sets = {"stars": demo_inputs(n, EVAL_SEED, shapes=("star",))}
    for i, (low, high) in enumerate(BUCKETS):
        sets[f"old {low}-{high}"] = demo_inputs(n, EVAL_SEED + 1 + i, min_side=low, max_side=high)
    return sets


def accuracy(loaded, sets: dict) -> dict:
    figures = {}
    for name, (inputs, samples) in sets.items():
        said = caption_images(loaded, inputs, GenerationOptions(num_beams=1, max_new_tokens=12), batch_size=64)
        figures[name] = sum(r.caption == s.caption for r, s in zip(said, samples)) / len(samples)
    return figures


def retrain(env: dict, extra: str) -> tuple[float, str]:
    """`python -m finetune` as the admin page runs it; (seconds, outcome)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "finetune", *extra.split()], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode == 0:
        return seconds, "published"
    last = (done.stderr.strip().splitlines() or ["?"])[-1]
    if "not published" in last:
        return seconds, "refused: " + last.split("not published: ")[-1][:100]
    sys.exit(f"python -m finetune failed:\n{done.stderr[-3000:]}")


def random_blip(config: Path, folder: Path) -> Path:
    """A BLIP of the config's architecture with random weights, saved like any checkpoint."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    quiet_transformers()
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig.from_pretrained(config)).save_pretrained(folder)
    BlipProcessor.from_pretrained(config).save_pretrained(folder)
    return folder


def run_case(args, corrections: int, seed: int, sets: dict | None, before: dict | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="learning-loop-") as home:  # (with --config, gigabytes of checkpoints)
        home = Path(home)
        model = str(random_blip(args.config, home / "random-blip")) if args.config else "demo"
        env = {**os.environ, "CAPTIONER_HOME": str(home), "CAPTIONER_CAPTION_MODEL": model, "CAPTIONER_DEVICE": args.device}
        settings = Settings.from_env(env)
        live = load_captioner(model, settings)
        log_feedback(settings, live, corrections, args.confirmations, seed, pretend=bool(args.config))
        seconds, outcome = retrain(env, args.finetune_args)
        after = accuracy(load_captioner("active", settings), sets) if sets and outcome == "published" else before
    return {"corrections": corrections, "seed": seed, "seconds": seconds, "outcome": outcome, "before": before, "after": after}


def main():
    args = parse_args()
    counts = [int(n) for n in args.corrections.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = None if args.config else fresh_images(args.eval)
    before = None
    if sets:
        before = accuracy(load_captioner("demo", Settings(home=Path(tempfile.mkdtemp()))), sets)
    results = [run_case(args, n, seed, sets, before) for seed in seeds for n in counts for _ in range(args.repeat)]
    where = f"{args.device}, {THREADS} threads" + (f", {os.cpu_count()} cores" if args.device == "cpu" else "")
    if args.config:
        print(f"{args.config} with random weights on {where}; {args.confirmations} confirmations beside the corrections")
        for r in results:
            print(f"{r['corrections']:>6} corrections: python -m finetune took {r['seconds']:.1f}s end to end ({r['outcome']})")
        return
    print(f"demo captioner; star corrections + {args.confirmations} confirmations; {args.eval} fresh images per figure "
          f"(seeds the project never used); {where}")  # fmt: skip
    names = ["stars"] + [f"old {low}-{high}" for low, high in BUCKETS]
    print(f"{'seed':>4} {'corr':>5} " + "".join(f"{name:>16}" for name in names) + f"{'retrain':>10}  outcome")
    for r in results:
        cells = "".join(f"{r['before'][n]:>7.1%} →{r['after'][n]:>7.1%}" for n in names)
        print(f"{r['seed']:>4} {r['corrections']:>5} {cells}{r['seconds']:>9.1f}s  {r['outcome']}")
    worst = {}
    for r in results:
        loss = min(r["after"][n] - r["before"][n] for n in names[1:])
        worst[r["corrections"]] = min(worst.get(r["corrections"], 0.0), loss)
    print("worst change of old knowledge in any size bucket, per correction count (points): "
          + ", ".join(f"{n}: {100 * loss:+.1f}" for n, loss in worst.items()))  # fmt: skip
    if args.repeat > 1:
        groups = {}
        for r in results:
            groups.setdefault((r["seed"], r["corrections"]), []).append(json.dumps(r["after"], sort_keys=True))
        same = all(len(set(g)) == 1 for g in groups.values())
        print(f"repeated runs gave {'identical' if same else 'DIFFERENT'} figures")


if __name__ == "__main__":
    main()
