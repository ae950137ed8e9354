"""The event-key index beside the log (data/feedback.csv.keys): refusing a repeated event without re-reading the CSV.

One 16-byte entry per row: an 8-byte hash of the fields `same_event` compares and the row's byte offset in the CSV.
A hit is only a hint: the row at that offset is read back and compared, so a hash collision or a stale index can
at worst let a duplicate through, never refuse a new event. The header records which CSV it describes (device,
inode, size, mtime, a digest of the bytes before that size); every use is under the log's lock. When the CSV grew
by appends the index did not see, only that tail is parsed; when it was replaced or edited, the index is rebuilt.
The CSV stays the truth: deleting this file costs one full read on the next append.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from array import array
from itertools import chain
from dataclasses import dataclass
from pathlib import Path

from .files import write_atomic

MAGIC = b"FBKEYS01"
HEADER = struct.Struct("<8sQQQQQ16sQ")  # magic, generation, dev, ino, size, mtime_ns, tail digest, count
ENTRY = struct.Struct("<QQ")  # key, offset of the row in the CSV
TAIL = 4096  # bytes before the covered size whose digest tells an append from an edit


def event_key(event_text: str) -> int:
    """The 64-bit key of an event (FeedbackRow.event_text())."""
    digest = hashlib.blake2b(event_text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class CsvState:
    """What the index must agree with: the CSV's identity and the digest of its last bytes."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    tail: bytes

    @classmethod
    def of(cls, path: Path) -> "CsvState | None":
        """The CSV's state now (None when it does not exist)."""
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, tail_digest(handle, info.st_size))
        except FileNotFoundError:
            return None


def tail_digest(handle, size: int) -> bytes:
    """Digest of the TAIL bytes before size in an open binary file."""
    start = max(0, size - TAIL)
    return hashlib.blake2b(os.pread(handle.fileno(), size - start, start), digest_size=16).digest()


class EventKeys:
    """The index for one CSV, held in memory between uses by the same process (callers hold the log's lock)."""

    def __init__(self, path: Path, csv_path: Path):
        self.path, self.csv_path = Path(path), Path(csv_path)
        self.generation = 0
        self.count = 0
        self.covered: CsvState | None = None
        self.entries = bytearray()

    def sync(self, csv: CsvState) -> str:
        """Load what is new in the file; "current", "behind" (the CSV grew past `covered.size`) or "stale"."""
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(HEADER.size)
                if len(header) < HEADER.size:
                    return "stale"
                magic, generation, dev, ino, size, mtime_ns, tail, count = HEADER.unpack(header)
                if magic != MAGIC or os.fstat(handle.fileno()).st_size < HEADER.size + count * ENTRY.size:
                    return "stale"
                if generation != self.generation or count < self.count:
                    self.entries, self.count = bytearray(), 0
                want = (count - self.count) * ENTRY.size
                self.entries += os.pread(handle.fileno(), want, HEADER.size + self.count * ENTRY.size)
        except FileNotFoundError:
            return "stale"
        self.generation, self.count = generation, count
        self.covered = CsvState(dev, ino, size, mtime_ns, tail)
        if (dev, ino) != (csv.dev, csv.ino) or csv.size < size:
            return "stale"
        if csv.size == size:
            return "current" if (csv.mtime_ns, csv.tail) == (mtime_ns, tail) else "stale"
        with open(self.csv_path, "rb") as handle:  # grew: only by appends if the bytes before `size` are the same
            return "behind" if tail_digest(handle, size) == tail else "stale"

    def lookup(self, many: bool = False):
        """A function key -> CSV offsets of the rows with that event key. many: a dict, for a bulk append
        (one pass to build); else a scan of the entries per key (no setup: one key costs about 1 ms at 100,000 rows)."""
        if not many:
            return self.offsets
        table: dict[int, list[int]] = {}
        for key, offset in ENTRY.iter_unpack(self.entries):
            table.setdefault(key, []).append(offset)
        return lambda key: table.get(key, [])

    def key_by_offset(self) -> dict[int, int]:
        """CSV offset -> event key, for every entry (a rewrite reuses the keys of rows it copies unchanged)."""
        flat = array("Q", bytes(self.entries))
        if sys.byteorder != "little":
            flat.byteswap()
        return dict(zip(flat[1::2], flat[0::2]))

    def offsets(self, key: int) -> list[int]:
        """CSV offsets of the rows whose event has this key."""
        needle, found = key.to_bytes(8, "little"), []
        at = self.entries.find(needle)
        while at != -1:
            if at % ENTRY.size == 0:
                found.append(ENTRY.unpack_from(self.entries, at)[1])
            at = self.entries.find(needle, at + 1)
        return found

    def extend(self, pairs: list[tuple[int, int]], csv: CsvState) -> None:
        """Add (key, offset) entries for rows just appended, and say which CSV state they bring the index to."""
        payload = b"".join(ENTRY.pack(key, offset) for key, offset in pairs)
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.pwrite(fd, payload, HEADER.size + self.count * ENTRY.size)
            self.entries += payload
            self.count += len(pairs)
            os.pwrite(fd, self._header(csv), 0)  # last: a crash before it leaves the index behind, never ahead
        finally:
            os.close(fd)
        self.covered = csv

    def rebuild(self, pairs: list[tuple[int, int]], csv: CsvState) -> None:
        """Replace the index with entries for every row of the CSV in this state."""
        self.generation = int.from_bytes(os.urandom(8), "little") or 1
        flat = array("Q", chain.from_iterable(pairs))
        if sys.byteorder != "little":
            flat.byteswap()
        self.entries = bytearray(flat.tobytes())
        self.count = len(pairs)
        self.covered = csv
        write_atomic(self.path, self._header(csv) + bytes(self.entries))

    def _header(self, csv: CsvState) -> bytes:
        return HEADER.pack(MAGIC, self.generation, csv.dev, csv.ino, csv.size, csv.mtime_ns, csv.tail, self.count)
