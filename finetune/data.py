"""Approved caption corrections -> training examples, split into train / held-out by image hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captioner.feedback import FeedbackLog, FeedbackRow


@dataclass(frozen=True)
class Example:
    """One image and the caption it should get."""

    image_path: Path
    caption: str
    sha256: str
    confirmation: bool  # the model's own caption, confirmed: keeps what it already knows


class DataError(ValueError):
    """The feedback cannot make a training set; the message says why."""


def approved_examples(log: FeedbackLog) -> tuple[list[Example], list[str]]:
    """The latest approved caption per image (confirmations count); and the broken CSV rows, by line."""
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
    examples = [
        Example(log.data_dir / row.image_path, row.correction.strip(), row.image_sha256, row.is_confirmation)
        for row in latest.values()
    ]
    return examples, [f"feedback.csv {problem}" for problem in problems]


def is_heldout(sha256: str, fraction: float) -> bool:
    """Deterministic by content: the same image is always on the same side of the split."""
    return int(sha256[:8], 16) / 0x1_0000_0000 < fraction


def split(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held-out)."""
    heldout = [e for e in examples if is_heldout(e.sha256, fraction)]
    return [e for e in examples if not is_heldout(e.sha256, fraction)], heldout


def to_dataset(examples: list[Example]):
    """A datasets.Dataset of the examples (image path, caption, hash, confirmation)."""
    from datasets import Dataset

    return Dataset.from_dict({
        "image_path": [str(e.image_path) for e in examples],
        "caption": [e.caption for e in examples],
        "sha256": [e.sha256 for e in examples],
        "confirmation": [e.confirmation for e in examples],
    })  # fmt: skip
