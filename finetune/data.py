"""Approved caption rows -> training examples of three kinds, split into train / held-out by image hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captioner.feedback import FeedbackLog, FeedbackRow

from .metrics import normalise

CORRECTION, CONFIRMATION, REGRESSION = "correction", "confirmation", "regression"
VIEW = "view"  # a recoloured view of a correction (views.py): trained on, never judged or counted as a row
REWORDED = "(reworded)"  # the concept of a correction that added no new word
# English colour terms: a correction that teaches one of these is about colour, so no recoloured view of its picture
# may teach it (views.py)
COLOUR_WORDS = frozenset(
    "red orange yellow green blue purple violet pink brown black white grey gray beige tan gold golden silver cyan "
    "magenta turquoise teal navy maroon olive lime indigo crimson scarlet ivory cream khaki blond blonde auburn "
    "colour color coloured colored colourful colorful dark light pale bright".split()
)
OLD_KINDS = (CONFIRMATION, REGRESSION)  # what the live model already knew: the retrain must not lose it


@dataclass(frozen=True)
class Example:
    """One image, the caption it should get, and what kind of knowledge that caption is."""

    image_path: Path
    caption: str
    sha256: str
    kind: str  # correction (new), confirmation (old, a person said so), regression (old, the live model's own), view
    concept: str = ""  # for a correction: the words it teaches (e.g. "star"); groups the held-out report
    row_id: str = ""  # the feedback row it came from (none for the regression set and views): the run's data snapshot

    @property
    def is_old(self) -> bool:
        return self.kind in OLD_KINDS


class DataError(ValueError):
    """The feedback cannot make a training set; the message says why."""


def taught_words(model_output: str, correction: str) -> str:
    """The words a correction adds to what the model said ("a red circle" -> "a red star": "star")."""
    said = set(normalise(model_output).split())
    added = [word for word in normalise(correction).split() if word not in said]
    return " ".join(dict.fromkeys(added)) or REWORDED


def approved_examples(log: FeedbackLog) -> tuple[list[Example], list[str]]:
    """The latest approved caption per image (corrections and confirmations); and the broken CSV rows, by line."""
    rows, problems = log.read()
    latest: dict[str, FeedbackRow] = {}
    for row in rows:  # file order; the later of two rows for one image wins, by time then position
        if row.task == "caption" and row.status == "approved" and row.correction.strip():
            if row.image_sha256 not in latest or row.created_at >= latest[row.image_sha256].created_at:
                latest[row.image_sha256] = row
    missing = [row for row in latest.values() if not (log.data_dir / row.image_path).is_file()]
    if missing:
        shown = ", ".join(row.image_path for row in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} approved row(s) point at images that are missing from {log.data_dir}: {shown}")
    examples = [_example(log.data_dir, row) for row in latest.values()]
    return examples, [f"feedback.csv {problem}" for problem in problems]


def _example(data_dir: Path, row: FeedbackRow) -> Example:
    if row.is_confirmation:
        return Example(data_dir / row.image_path, row.correction.strip(), row.image_sha256, CONFIRMATION, row_id=row.id)
    concept = taught_words(row.model_output, row.correction)
    return Example(data_dir / row.image_path, row.correction.strip(), row.image_sha256, CORRECTION, concept, row.id)


def uncorrected_images(log: FeedbackLog, taken: set[str], limit: int) -> list[tuple[Path, str]]:
    """(path, sha256) of stored images nobody has corrected and that are not in `taken`: where the regression
    set comes from. Any caption row that changes the output (pending or rejected too) rules its image out:
    someone thought the model was wrong there; so does a rejected confirmation (the reviewer said the caption
    confirmed is wrong: replaying it as old knowledge would teach the very mistake). Chosen by hash, so the same
    images every run."""
    rows, _ = log.read()
    doubted = {r.image_sha256 for r in rows if r.task == "caption" and (not r.is_confirmation or r.status == "rejected")}
    found: dict[str, Path] = {}
    for row in rows:
        sha = row.image_sha256
        if sha not in taken and sha not in doubted and sha not in found and (log.data_dir / row.image_path).is_file():
            found[sha] = log.data_dir / row.image_path
    return [(found[sha], sha) for sha in sorted(found)[:limit]]


def is_heldout(sha256: str, fraction: float) -> bool:
    """Deterministic by content: an image the hash puts on the held-out side (before the per-group cap)."""
    return _hash_share(sha256) < fraction


def heldout_images(examples: list[Example], fraction: float) -> set[str]:
    """The sha256 of the examples to hold out: chosen by hash, but at most fraction x n of each group (each
    correction concept, confirmations, regression set), so a concept corrected only a few times trains on all
    of its rows. On the demo world, 3 star corrections of which the hash held out 2 taught stars to 50%; with
    all 3 trained on, over 90% (bench/learning_loop.py)."""
    groups: dict[tuple[str, str], list[Example]] = {}
    for example in examples:
        groups.setdefault((example.kind, example.concept), []).append(example)
    chosen: set[str] = set()
    for group in groups.values():
        cap = int(len(group) * fraction)
        picked = sorted((e.sha256 for e in group if is_heldout(e.sha256, fraction)), key=_hash_share)
        chosen.update(picked[:cap])
    return chosen


def trained_only(examples: list[Example], heldout: set[str]) -> dict[str, int]:
    """Correction concepts with no held-out image (too few rows): concept -> its corrections, all trained on."""
    counts: dict[str, int] = {}
    judged = set()
    for example in examples:
        if example.kind == CORRECTION:
            counts[example.concept] = counts.get(example.concept, 0) + 1
            if example.sha256 in heldout:
                judged.add(example.concept)
    return {concept: n for concept, n in sorted(counts.items()) if concept not in judged}


def _hash_share(sha256: str) -> float:
    return int(sha256[:8], 16) / 0x1_0000_0000
