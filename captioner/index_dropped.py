"""Vectors of content that left the gallery, kept a while so that it is not embedded again when it comes back
(a disk that was not mounted during an update, a folder moved out and back, an edit undone).

They stay in the segments where they were, masked out of every search, named by a small table in each
generation (dropped.npy: sha256, row, when it was dropped). One is forgotten RETAIN_DAYS after it left, or
when more would be kept than the most vectors the gallery's files have used at once (the newest stay): a
forgotten one is a dead row that compaction removes, so dropped vectors never take more disk than the
gallery at its largest.
"""

from __future__ import annotations

import numpy as np

from .index_entries import ENTRY_DTYPE, ShaRows

RETAIN_DAYS = 30
DROPPED_DTYPE = np.dtype([("sha256", "S64"), ("row", "<i8"), ("dropped_at", "<i8")])  # dropped_at: Unix seconds


def no_dropped() -> np.ndarray:
    return np.zeros(0, DROPPED_DTYPE)


def known_contents(entries: np.ndarray, dropped: np.ndarray) -> ShaRows:
    """The vector row of every content an index holds: its files' and the dropped ones kept."""
    both = np.zeros(len(entries) + len(dropped), ENTRY_DTYPE)
    for name in ("sha256", "row"):
        both[name] = np.concatenate([entries[name], dropped[name]])
    return ShaRows(both)


def still_dropped(old_entries: np.ndarray, old_dropped: np.ndarray, live_rows: np.ndarray, largest: int, now: int):
    """The dropped table after an update: what was dropped before and what this update dropped (files deleted,
    moved out, changed), less what is a file's again, what left over RETAIN_DAYS ago, and the oldest past
    `largest` rows."""
    left = old_entries[~np.isin(old_entries["row"], live_rows)]
    newly = np.zeros(len(left), DROPPED_DTYPE)
    newly["sha256"], newly["row"], newly["dropped_at"] = left["sha256"], left["row"], now
    candidates = np.concatenate([newly, old_dropped])  # on a tie of seconds, the ones dropped now are newer
    candidates = candidates[~np.isin(candidates["row"], live_rows)]
    candidates = candidates[candidates["dropped_at"] > now - RETAIN_DAYS * 86400]
    candidates = candidates[np.argsort(-candidates["dropped_at"], kind="stable")]  # newest first
    _, first = np.unique(candidates["row"], return_index=True)  # two files of one content shared its row
    kept = candidates[np.sort(first)][: max(largest, 0)]
    return kept[np.argsort(kept["row"], kind="stable")]
