"""`demo images|build`: demo-world pictures, and retraining the embedded demo models (in demo_training)."""

from __future__ import annotations

from ..demo.world import ALL_COLORS, ALL_SHAPES, write_images
from ..settings import Settings
from .common import UserError, say


def cmd_demo(args, settings: Settings) -> int:
    """`demo images OUTDIR`: pictures and their captions; `demo build`: retrain the embedded demo models."""
    if args.action == "images":
        shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
        colors = [c.strip() for c in args.colors.split(",") if c.strip()]
        unknown = [s for s in shapes if s not in ALL_SHAPES] + [c for c in colors if c not in ALL_COLORS]
        if args.n < 1:
            raise UserError(f"--n must be at least 1, not {args.n}")
        if unknown or not shapes or not colors:
            raise UserError(
                f"unknown or empty shapes/colors {unknown or ''} (shapes: {', '.join(ALL_SHAPES)}; "
                f"colors: {', '.join(ALL_COLORS)})"
            )
        try:
            written = write_images(args.outdir, args.n, args.seed, shapes, colors, args.format)
        except OSError as exc:  # a file where the folder should be, a place that cannot be written
            raise UserError(f"{args.outdir}: cannot write the images there ({exc.strerror or exc})") from None
        say(f"wrote {len(written)} images and captions.jsonl to {args.outdir}")
        return 0
    from demo_training.build import build_all  # training code (and torch) only for `demo build`

    build_all(out_dir=args.out, seed=args.seed, steps=args.steps, log=say)
    return 0
