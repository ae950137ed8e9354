"""`--dry-run`: what a run would train on, from what, for how many steps, and where it would publish; nothing loads."""

from __future__ import annotations

from captioner import registry

from .config import FinetuneConfig
from .data import CORRECTION, Example, heldout_images


def describe(cfg: FinetuneConfig, settings, examples: list[Example]) -> str:
    """The plan as lines of text: counts by kind and concept, the held-out share, steps, base and target version."""
    corrections = [e for e in examples if e.kind == CORRECTION]
    concepts: dict[str, int] = {}
    for example in corrections:
        concepts[example.concept] = concepts.get(example.concept, 0) + 1
    held = heldout_images(examples, cfg.heldout_fraction)
    live = registry.active_state(settings.models_dir).version
    base = cfg.base or (f"the live version {live}" if live else f"the default model {settings.caption_model}")
    numbers = [int(v.name[1:]) for v in registry.list_versions(settings.models_dir)]
    listed = ", ".join(f"{concept} ({n})" for concept, n in sorted(concepts.items(), key=lambda pair: -pair[1]))
    return "\n".join([
        f"would train from {base}, seed {cfg.seed}, LoRA rank {cfg.lora_r} on the {cfg.lora_targets} layers, lr {cfg.lr:g}",
        f"{len(examples)} images with an approved caption: {len(corrections)} corrections, "
        f"{len(examples) - len(corrections)} confirmations; {len(held)} of them held out to judge the result",
        f"corrections teach: {listed or 'nothing new'}",
        f"up to {cfg.regression_images} stored images nobody corrected may join as old knowledge (the live model "
        f"captions them first), and {cfg.recoloured_views} recoloured views of each correction without a colour word",
        f"{cfg.steps_for(len(examples) - len(held)):,} training steps of {cfg.batch_size} rows on the approved images "
        "(more when the regression set and recoloured views add rows, unless --epochs is 0)",
        f"would publish models/v{max(numbers, default=0) + 1:04d}"
        + (" and make it live if it passes the gate" if cfg.activate else " (--no-activate: not made live)"),
        "dry run: nothing was loaded, trained or written",
    ])  # fmt: skip
