"""`python -m demo_training [--out DIR] [--steps N] [--seed S]`: retrain the embedded demo models from a fixed seed."""

import argparse
import sys
from pathlib import Path

from captioner import runtime

runtime.configure("cli")  # threads and OpenMP wait policy, before torch loads

from .build import build_all  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_training", description="Retrain the embedded demo models")
    parser.add_argument("--out", type=Path, help="write the models here instead of into captioner/demo/models")
    parser.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_all(out_dir=args.out, seed=args.seed, steps=args.steps, log=lambda m: print(f"demo_training: {m}", file=sys.stderr, flush=True))
    return 0


sys.exit(main())
