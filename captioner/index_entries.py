"""The entry table of an index: one row per indexed file (path, content hash, size, mtime, vector row), kept as
columns so that an update of a big gallery makes no Python object per unchanged file."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

ENTRY_DTYPE = np.dtype([("sha256", "S64"), ("size", "<i8"), ("mtime_ns", "<i8"), ("row", "<i8")])


@dataclass(frozen=True)
class Entry:
    """One gallery file: where it is, what it holds, and which vector row is its embedding."""

    path: str  # relative to the gallery folder, with forward slashes
    sha256: str
    size: int
    mtime_ns: int
    row: int


class EntryTable:
    """Every indexed file as columns: paths (sorted) and a structured array of the rest, worked on with numpy
    (an update of a big gallery makes no Python object per unchanged file)."""

    def __init__(self, paths: list[str], columns: np.ndarray):
        self.paths, self.columns = paths, columns

    @classmethod
    def from_rows(cls, rows: list[tuple[str, str, int, int, int]]) -> "EntryTable":
        """From (path, sha256, size, mtime_ns, row) tuples, in any order."""
        columns = np.array([row[1:] for row in rows], dtype=ENTRY_DTYPE)
        return cls([row[0] for row in rows], columns).sorted()

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> "EntryTable":
        return cls.from_rows([(e.path, e.sha256, e.size, e.mtime_ns, e.row) for e in entries])

    def sorted(self) -> "EntryTable":
        order = sorted(range(len(self.paths)), key=self.paths.__getitem__)
        return EntryTable([self.paths[i] for i in order], self.columns[np.array(order, dtype=np.int64)])

    def take(self, positions: np.ndarray) -> "EntryTable":
        return EntryTable([self.paths[i] for i in positions.tolist()], self.columns[positions])

    def plus(self, other: "EntryTable") -> "EntryTable":
        return EntryTable(self.paths + other.paths, np.concatenate([self.columns, other.columns])).sorted()

    def with_rows(self, rows: np.ndarray) -> "EntryTable":
        columns = self.columns.copy()
        columns["row"] = rows
        return EntryTable(self.paths, columns)

    def __len__(self) -> int:
        return len(self.paths)

    def entry(self, i: int) -> Entry:
        sha, size, mtime_ns, row = self.columns[i].tolist()
        return Entry(self.paths[i], sha.decode(), size, mtime_ns, row)

    @cached_property
    def _by_row(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.columns["row"], kind="stable")
        return order, self.columns["row"][order]

    def with_row(self, row: int) -> list[int]:
        """Positions of the entries whose vector is this row (several files may hold the same content)."""
        order, rows = self._by_row
        return order[np.searchsorted(rows, row, "left") : np.searchsorted(rows, row, "right")].tolist()


class ShaRows:
    """The vector row of each content (sha256) a table holds, looked up by binary search (no per-file dict)."""

    def __init__(self, columns: np.ndarray):
        order = np.argsort(columns["sha256"], kind="stable")
        self.shas, self.rows = columns["sha256"][order], columns["row"][order]

    def get(self, sha: str) -> int | None:
        key = sha.encode()
        at = int(np.searchsorted(self.shas, key))
        return int(self.rows[at]) if at < len(self.shas) and self.shas[at] == key else None
