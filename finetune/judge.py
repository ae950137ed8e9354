"""The held-out judgement, per kind of knowledge, and the gate that refuses a model which forgot.

Held-out images are captioned through the caption engine (caption_images), like any caption the app makes.
"Old knowledge" is the held-out confirmations and regression images that the live model captions right:
a retrain that loses more than --max-forgetting of them is refused even when its overall score went up.
When none is held out (a log of corrections alone), forgetting is judged on fixed anchor images instead: the
new model must keep saying what the live model says of them."""

from __future__ import annotations

from captioner.caption import caption_images
from captioner.options import GenerationOptions

from .data import CORRECTION, Example
from .metrics import caption_scores, normalise, worse
from .regression import CONFIDENT

ANCHOR_IMAGES = 24  # enough that one forgotten image shows (4 points), few enough to caption in a second
ANCHOR_SEED = 2025


def captions(loaded, inputs, on_progress=None) -> list[str]:
    """Greedy captions of the inputs (ImageInput), in order; an image that fails gets ""; on_progress(done, total)."""
    if not inputs:
        return []
    said = caption_images(loaded, inputs, GenerationOptions(num_beams=1), batch_size=32, on_progress=on_progress)
    return [r.caption or "" for r in said]


def anchors(live) -> tuple[list, list[str]]:
    """Fixed demo-world images that old knowledge is judged on when none is held out, those of them the live model
    captions confidently (on average each token at probability CONFIDENT or more: what it knows), and its captions."""
    import math

    from captioner.demo.quality import demo_inputs

    inputs = demo_inputs(ANCHOR_IMAGES, seed=ANCHOR_SEED)[0]
    said = caption_images(live, inputs, GenerationOptions(num_beams=1), batch_size=32)
    known = [(item, r.caption) for item, r in zip(inputs, said) if r.ok and r.caption and r.score >= math.log(CONFIDENT)]
    return [item for item, _ in known], [caption for _, caption in known]


def on_anchors(said: list[str], live_said: list[str]) -> dict:
    """Old knowledge judged on the anchors: captions scored against the live model's own captions of them."""
    judged_on = f"{len(said)} fixed images the live model captions confidently, scored against its own captions"
    return {**caption_scores(said, live_said), "judged_on": judged_on}


def right(said: list[str], examples: list[Example]) -> list[bool]:
    return [normalise(s) == normalise(e.caption) for s, e in zip(said, examples)]


def report(said: list[str], examples: list[Example], live_right: list[bool]) -> dict:
    """Scores of captions against the examples: overall, new (corrections), old knowledge (old rows the live
    model got right), and one entry per kind (each correction concept, confirmations, regression set)."""

    def scores(picked: list[int]) -> dict:
        return caption_scores([said[i] for i in picked], [examples[i].caption for i in picked])

    everything = list(range(len(examples)))
    kinds: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        kinds.setdefault(f"correction: {example.concept}" if example.kind == CORRECTION else example.kind, []).append(i)
    return {
        "overall": scores(everything),
        "new": scores([i for i in everything if not examples[i].is_old]),
        "old": scores([i for i in everything if examples[i].is_old and live_right[i]]),
        "by_kind": {kind: scores(picked) for kind, picked in sorted(kinds.items())},
    }


def refusal(after: dict, live: dict, max_forgetting: float) -> str | None:
    """Why the new model must not go live, or None."""
    old_after, old_live = after["old"], live["old"]
    if old_after["count"] and old_after["exact_match"] < old_live["exact_match"] - max_forgetting - 1e-9:
        if "judged_on" in old_after:
            return (f"it forgot what the live model knew: no held-out image holds old knowledge (approve confirmations, "
                    f"\"Looks right\", to give it some), and it captions only {old_after['exact_match']:.1%} of "
                    f"{old_after['count']} fixed images the live model is sure of as the live model does (more than "
                    f"{max_forgetting:.0%} below 100%)")  # fmt: skip
        return (f"it forgot what the live model knew: exact match on {old_after['count']} held-out images the live model "
                f"captions right fell to {old_after['exact_match']:.1%} (more than {max_forgetting:.0%} below "
                f"{old_live['exact_match']:.1%})")  # fmt: skip
    if worse(after["overall"], live["overall"]):
        a, b = after["overall"], live["overall"]
        return (
            f"held-out exact match {a['exact_match']} / CIDEr {a['cider']} is worse than the live model's "
            f"{b['exact_match']} / {b['cider']}"
        )
    return None
