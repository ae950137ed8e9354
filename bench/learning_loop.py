"""The retraining loop on the demo world, end to end: log corrections, run `python -m finetune`, measure.

    python bench/learning_loop.py [--stars 100] [--confirmations 50] [--eval 200]

Starts from the embedded demo captioner as the live model in a fresh CAPTIONER_HOME, logs approved
corrections of star images (which it has never seen) and confirmations of the known shapes through the
feedback log, runs the fine-tuning CLI with its defaults, then captions fresh images with the new live
version, and rolls back. Prints the figures the retraining issue asks for.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.caption import GenerationOptions, caption_images  # noqa: E402
from captioner.demo.quality import caption_accuracy, demo_inputs  # noqa: E402
from captioner.feedback import FeedbackLog  # noqa: E402
from captioner.models import load_captioner  # noqa: E402
from captioner.settings import Settings  # noqa: E402


def log_feedback(settings: Settings, stars: int, confirmations: int, seed: int = 7) -> None:
    """Approved rows as a reviewer would leave them: the demo model's output, and what is right."""
    demo = load_captioner("demo", settings, fallback=False)
    log = FeedbackLog(settings.data_dir)
    for inputs, samples in (demo_inputs(stars, seed, shapes=("star",)), demo_inputs(confirmations, seed + 1)):
        said = caption_images(demo, inputs, GenerationOptions(num_beams=1), batch_size=64)
        for item, truth, result in zip(inputs, samples, said):
            log.record(item.data, "png", task="caption", model_output=result.caption, correction=truth.caption,
                       model="demo", model_version=demo.version, status="approved")  # fmt: skip


def measure(settings: Settings, n: int) -> tuple[float, float]:
    live = load_captioner("active", settings, fallback=False)
    stars, _ = caption_accuracy(live, n, seed=31_337, shapes=("star",))
    known, _ = caption_accuracy(live, n, seed=31_338)
    return stars, known


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stars", type=int, default=100)
    parser.add_argument("--confirmations", type=int, default=50)
    parser.add_argument("--eval", type=int, default=200)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="learning-loop-"))
    env = {**os.environ, "CAPTIONER_HOME": str(home), "CAPTIONER_CAPTION_MODEL": "demo"}
    settings = Settings.from_env(env)
    log_feedback(settings, args.stars, args.confirmations)
    before_stars, before_known = measure(settings, args.eval)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "finetune"], cwd=ROOT, env=env)
    seconds = time.time() - started
    if done.returncode != 0:
        sys.exit(f"finetune failed with exit status {done.returncode}")
    after_stars, after_known = measure(settings, args.eval)
    subprocess.run([sys.executable, "-m", "captioner", "models", "rollback"], cwd=ROOT, env=env, check=True)
    back_stars, back_known = measure(settings, args.eval)
    print(f"{args.stars} star corrections + {args.confirmations} confirmations; {args.eval} fresh images per figure")
    print(f"{'':<26}{'stars exact':>12}{'known shapes exact':>20}")
    print(f"{'demo captioner (before)':<26}{before_stars:>12.1%}{before_known:>20.1%}")
    print(f"{'after python -m finetune':<26}{after_stars:>12.1%}{after_known:>20.1%}")
    print(f"{'after models rollback':<26}{back_stars:>12.1%}{back_known:>20.1%}")
    print(f"retrain took {seconds:.0f}s (whole `python -m finetune` run, on {os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
