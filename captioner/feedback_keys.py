"""The event-key index beside the log (data/feedback.csv.keys): refusing a repeated event without re-reading the CSV.

One 16-byte entry per row: an 8-byte hash of the fields `same_event` compares and the row's byte offset in the CSV.
Entries are kept sorted by key, plus a short unsorted tail of the latest appends (merged into the sorted part when
it grows past TAIL_MAX), so a lookup is a binary search plus a look into the tail: reading the entries is a
memory copy, and nothing is parsed or hashed per logged row, in a long-running app or a fresh `feedback add` alike.
A hit is only a hint: the row at that offset is read back and compared, so a hash collision or a stale index can
at worst let a duplicate through, never refuse a new event. The header records which CSV it describes (device,
inode, size, mtime, a digest of the bytes before that size); every use is under the log's lock. When the CSV grew
by appends the index did not see, only that tail is parsed; when it was replaced or edited, the index is rebuilt.
The CSV stays the truth: deleting this file costs one full read on the next append.
"""

import hashlib
import os
import struct
import sys
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from .files import BINARY, read_at, write_at, write_atomic

MAGIC = b"FBKEYS02"
HEADER = struct.Struct("<8sQQQQQ16sQQ")  # magic, generation, dev, ino, size, mtime_ns, tail digest, sorted, unsorted
ENTRY = struct.Struct("<QQ")  # key, offset of the row in the CSV
TAIL = 4096  # bytes before the covered size whose digest tells an append from an edit
TAIL_MAX = 4096  # unsorted entries after which the tail is merged into the sorted part


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
    return hashlib.blake2b(read_at(handle, size - start, start), digest_size=16).digest()


class EventKeys:
    """The index for one CSV (callers hold the log's lock); nothing but the header is read until a lookup."""

    def __init__(self, path: Path, csv_path: Path):
        self.path, self.csv_path = Path(path), Path(csv_path)
        self.generation = 0
        self.sorted = 0  # entries in the sorted part
        self.unsorted = 0  # entries in the tail after it
        self.covered: CsvState | None = None

    def sync(self, csv: CsvState) -> str:
        """Read the header: "current", "behind" (the CSV grew past `covered.size` by appends) or "stale"."""
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(HEADER.size)
                if len(header) < HEADER.size:
                    return "stale"
                magic, generation, dev, ino, size, mtime_ns, tail, ordered, unordered = HEADER.unpack(header)
                if magic != MAGIC or os.fstat(handle.fileno()).st_size < HEADER.size + (ordered + unordered) * ENTRY.size:
                    return "stale"
        except FileNotFoundError:
            return "stale"
        self.generation, self.sorted, self.unsorted = generation, ordered, unordered
        self.covered = CsvState(dev, ino, size, mtime_ns, tail)
        if (dev, ino) != (csv.dev, csv.ino) or csv.size < size:
            return "stale"
        if csv.size == size:
            return "current" if (csv.mtime_ns, csv.tail) == (mtime_ns, tail) else "stale"
        with open(self.csv_path, "rb") as handle:  # grew: only by appends if the bytes before `size` are the same
            return "behind" if tail_digest(handle, size) == tail else "stale"

    def lookup(self):
        """A function key -> CSV offsets of the rows with that event key, for the keys of one append.

        The entries are read once (1.6 MB at 100,000 rows: well under a millisecond); each key is then a binary
        search of the sorted part and a look into the tail."""
        flat = self._all()
        keys = memoryview(flat)[0 : 2 * self.sorted : 2]
        in_tail: dict[int, list[int]] = {}
        for i in range(2 * self.sorted, len(flat), 2):
            in_tail.setdefault(flat[i], []).append(flat[i + 1])

        def offsets(key: int) -> list[int]:
            found, at = [], bisect_left(keys, key)
            while at < self.sorted and keys[at] == key:
                found.append(flat[2 * at + 1])
                at += 1
            return found + in_tail.get(key, [])

        return offsets

    def key_by_offset(self) -> dict[int, int]:
        """CSV offset -> event key, for every entry (a rewrite reuses the keys of rows it copies unchanged)."""
        flat = self._all()
        return dict(zip(flat[1::2], flat[0::2]))

    def extend(self, pairs: list[tuple[int, int]], csv: CsvState) -> None:
        """Add (key, offset) entries for rows just appended, and say which CSV state they bring the index to."""
        if self.unsorted + len(pairs) > TAIL_MAX:
            flat = self._all()
            self.rebuild(list(zip(flat[0::2], flat[1::2])) + list(pairs), csv)
            return
        payload = b"".join(ENTRY.pack(key, offset) for key, offset in pairs)
        fd = os.open(self.path, os.O_RDWR | BINARY)
        try:
            write_at(fd, payload, HEADER.size + (self.sorted + self.unsorted) * ENTRY.size)
            self.unsorted += len(pairs)
            write_at(fd, self._header(csv), 0)  # last: a crash before it leaves the index behind, never ahead
        finally:
            os.close(fd)
        self.covered = csv

    def rebuild(self, pairs: list[tuple[int, int]], csv: CsvState) -> None:
        """Replace the index with entries for every row of the CSV in this state, sorted by key."""
        flat = array("Q", chain.from_iterable(sorted(pairs)))
        if sys.byteorder != "little":
            flat.byteswap()
        self.generation = int.from_bytes(os.urandom(8), "little") or 1
        self.sorted, self.unsorted, self.covered = len(pairs), 0, csv
        write_atomic(self.path, self._header(csv) + flat.tobytes())

    def _all(self) -> array:
        """Every entry as a flat array: key, offset, key, offset, ..."""
        with open(self.path, "rb") as handle:
            handle.seek(HEADER.size)
            flat = array("Q", handle.read((self.sorted + self.unsorted) * ENTRY.size))
        if sys.byteorder != "little":
            flat.byteswap()
        return flat

    def _header(self, csv: CsvState) -> bytes:
        return HEADER.pack(MAGIC, self.generation, csv.dev, csv.ino, csv.size, csv.mtime_ns, csv.tail, self.sorted, self.unsorted)
