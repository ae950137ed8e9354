"""The parsed log, kept per CSV file in this process and brought up to date by parsing only what was appended.

A snapshot is valid for one state of the file (device, inode, size, mtime, last bytes). When the file grew and the
bytes it had are unchanged, only the new tail is parsed (from the end of the last complete row, so a torn record
is parsed again with what follows it); any other change (an atomic rewrite, a hand edit) means a full parse.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .feedback_csv import Entry, FeedbackRow, Parsed, RowProblem, parse_text
from .feedback_keys import TAIL, CsvState

BOM = b"\xef\xbb\xbf"
_GC = {"pauses": 0, "was_enabled": False}
_GC_GUARD = threading.Lock()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a log is parsed or rebuilt: those make 100,000s of tuples that hold no
    cycles, and the collections they would trigger (each walking every object alive) cost more than the work."""
    with _GC_GUARD:
        if _GC["pauses"] == 0:
            _GC["was_enabled"] = gc.isenabled()
            gc.disable()
        _GC["pauses"] += 1
    try:
        yield
    finally:
        with _GC_GUARD:
            _GC["pauses"] -= 1
            if _GC["pauses"] == 0 and _GC["was_enabled"]:
                gc.enable()


@dataclass
class Snapshot:
    """Every entry of the CSV in file order, with the byte range and line count each came from."""

    state: CsvState | None
    data: bytes
    entries: list[Entry] = field(default_factory=list)
    spans: list[tuple[int, int, int, int]] = field(default_factory=list)  # byte start, end; line index start, end
    columns: list[str] | None = None
    header_end: tuple[int, int] = (0, 0)  # byte offset and line index after the header
    _split: tuple | None = None
    _where: list[int] | None = None

    @property
    def rows(self) -> list[FeedbackRow]:
        return self._parts()[0]

    @property
    def problems(self) -> list[RowProblem]:
        return self._parts()[1]

    @property
    def token(self) -> tuple:
        """Changes whenever the content does: a key for anything computed from this snapshot."""
        return (self.state, len(self.entries))

    def _parts(self) -> tuple[list[FeedbackRow], list[RowProblem]]:
        if self._split is None:
            rows = [e for e in self.entries if isinstance(e, FeedbackRow)]
            self._split = (rows, [e for e in self.entries if isinstance(e, RowProblem)])
        return self._split

    def row_indices(self) -> list[int]:
        """The index in `entries` of each row, in order (rows[k] is entries[row_indices()[k]])."""
        if self._where is None:
            self._where = [i for i, e in enumerate(self.entries) if isinstance(e, FeedbackRow)]
        return self._where

    def raw(self, index: int) -> bytes:
        """The bytes entry `index` was read from."""
        start, end, _, _ = self.spans[index]
        return self.data[start:end]

    def committed(self) -> int:
        """How many leading entries are final: up to the last row that ends with a line end."""
        for index in range(len(self.entries) - 1, -1, -1):
            end = self.spans[index][1]
            if isinstance(self.entries[index], FeedbackRow) and self.data[end - 1 : end] in (b"\n", b"\r"):
                return index + 1
        return 0

    def resume_point(self) -> tuple[int, int]:
        """(byte offset, line index) a tail parse starts from: the end of the committed entries."""
        keep = self.committed()
        return self.spans[keep - 1][1::2] if keep else self.header_end


def parse_bytes(data: bytes, state: CsvState | None) -> Snapshot:
    """A snapshot of the whole file's bytes."""
    base = len(BOM) if data.startswith(BOM) else 0
    snapshot = Snapshot(state, data, header_end=(base, 0))
    _add_parsed(snapshot, base, 0, None, set())
    return snapshot


def extended(previous: Snapshot, data_tail: bytes, state: CsvState) -> Snapshot:
    """previous plus the bytes the file holds after previous's resume point (data_tail)."""
    keep = previous.committed()
    from_byte, from_line = previous.resume_point()
    snapshot = Snapshot(state, previous.data[:from_byte] + data_tail, previous.entries[:keep], previous.spans[:keep])
    snapshot.columns, snapshot.header_end = previous.columns, previous.header_end
    seen_ids = {entry.id for entry in snapshot.entries if isinstance(entry, FeedbackRow)}
    _add_parsed(snapshot, from_byte, from_line, previous.columns, seen_ids)
    return snapshot


def _add_parsed(snapshot: Snapshot, start: int, first_index: int, columns: list[str] | None, seen_ids: set[str]) -> None:
    """Parse snapshot.data from byte `start` (line index first_index) and add what it holds."""
    raw = snapshot.data[start:]
    try:
        text, undecodable = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, undecodable = raw.decode("utf-8", errors="surrogateescape"), True
    parsed: Parsed = parse_text(text, columns, first_index + 1, undecodable, seen_ids)
    to_byte = _byte_offsets(text, start)
    snapshot.entries.extend(parsed.entries)
    snapshot.spans.extend((to_byte(a), to_byte(b), first_index + la, first_index + lb) for a, b, la, lb in parsed.spans)
    if columns is None and parsed.columns is not None:
        snapshot.columns = parsed.columns
        snapshot.header_end = (to_byte(parsed.header_end[0]), first_index + parsed.header_end[1])


def _byte_offsets(text: str, base: int):
    """A function char offset -> byte offset in the file, for offsets asked in increasing order."""
    if text.isascii():
        return lambda char: base + char
    done = [0, base]  # chars converted so far, and the byte offset they end at

    def to_byte(char: int) -> int:
        if char < done[0]:
            return base + len(text[:char].encode("utf-8", "surrogateescape"))
        done[1] += len(text[done[0] : char].encode("utf-8", "surrogateescape"))
        done[0] = char
        return done[1]

    return to_byte


@dataclass(frozen=True)
class Pending:
    """What a refresh needs, read under the lock: the file's state and its new bytes (all of them, or the tail
    after `previous`'s resume point). Parsing it needs no lock."""

    state: CsvState
    data: bytes
    previous: Snapshot | None = None


class SnapshotCache:
    """The latest snapshot per CSV path, shared by every FeedbackLog of this process."""

    def __init__(self):
        self._by_path: dict[str, Snapshot] = {}
        self._guard = threading.Lock()

    def current(self, path: Path) -> Snapshot:
        """The file as it is now, parsing as little as possible (the caller holds the log's lock)."""
        return self.finish(path, self.read(path))

    def read(self, path: Path) -> Snapshot | Pending:
        """Under the log's lock: the cached snapshot if the file has not changed, else the bytes to parse."""
        state = CsvState.of(path)
        if state is None:
            return Snapshot(None, b"")
        with self._guard:
            previous = self._by_path.get(str(path))
        if previous is not None and previous.state == state:
            return previous
        with open(path, "rb") as handle:
            if previous is not None and previous.state is not None and previous.columns is not None:
                old = previous.state
                if (old.dev, old.ino) == (state.dev, state.ino) and state.size > old.size:
                    check_from = max(0, old.size - TAIL)
                    handle.seek(check_from)
                    if handle.read(old.size - check_from) == previous.data[check_from : old.size]:
                        start = previous.resume_point()[0]
                        handle.seek(start)
                        return Pending(state, handle.read(state.size - start), previous)
                handle.seek(0)
            return Pending(state, handle.read(state.size))

    def finish(self, path: Path, read: Snapshot | Pending) -> Snapshot:
        """Parse what read() returned (no lock needed) and keep the result."""
        if isinstance(read, Snapshot):
            return read
        with gc_paused():
            snapshot = parse_bytes(read.data, read.state) if read.previous is None else extended(read.previous, read.data, read.state)
        self.put(path, snapshot)
        return snapshot

    def put(self, path: Path, snapshot: Snapshot) -> None:
        with self._guard:
            self._by_path[str(path)] = snapshot


def rows_after(path: Path, from_byte: int, columns: list[str] | None) -> list[tuple[FeedbackRow, int]]:
    """The valid rows of the file from from_byte on (a record boundary), with the byte offset of each."""
    with open(path, "rb") as handle:
        handle.seek(from_byte)
        tail = Snapshot(None, handle.read())
    _add_parsed(tail, 0, 0, columns, set())
    return [(e, span[0] + from_byte) for e, span in zip(tail.entries, tail.spans) if isinstance(e, FeedbackRow)]
