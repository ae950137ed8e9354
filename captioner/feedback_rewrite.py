"""Building the bytes of a rewritten log: untouched records are copied as they were (runs of them at once), and
the new file's snapshot and event keys are worked out on the way, so an edit of 100,000 rows costs one pass."""

from __future__ import annotations

from .feedback_csv import FIELDS, FeedbackRow, RowProblem, format_lines
from .feedback_keys import CsvState, event_key
from .feedback_snapshot import Snapshot

LINE_ENDS = (b"\n", b"\r")


class Rewrite:
    """The new CSV: a canonical header, then records appended with keep() (verbatim) or add() (new bytes)."""

    def __init__(self, old: Snapshot, old_keys: dict[int, int]):
        self.old, self.old_keys = old, old_keys  # old_keys: byte offset in the old file -> the row's event key
        header = format_lines([], header=True)[0].encode()
        self.parts: list[bytes] = [header]
        self.size, self.line = len(header), 1
        self.header_end = (self.size, self.line)
        self.entries: list[FeedbackRow | RowProblem] = []
        self.spans: list[tuple[int, int, int, int]] = []
        self.pairs: list[tuple[int, int]] = []  # (event key, byte offset) of every row, for the key index
        self._run: list[int] | None = None  # [start, end) of old bytes still to copy

    def keep(self, index: int) -> None:
        """Copy entry `index` of the old file as it was."""
        start, end, first, last = self.old.spans[index]
        if self.old.data[end - 1 : end] not in LINE_ENDS:  # a last line without its line end: give it one
            self.add(self.old.entries[index], self.old.data[start:end])
            return
        if self._run is not None and self._run[1] == start:
            self._run[1] = end
        else:
            self._flush()
            self._run = [start, end]
        entry = self.old.entries[index]
        key = self.old_keys.get(start) if isinstance(entry, FeedbackRow) else None
        self._place(entry, end - start, last - first, key)

    def add(self, entry: FeedbackRow | RowProblem, raw: bytes) -> None:
        """Append new bytes for an entry (a changed or added row, or a record that lacked its line end)."""
        self._flush()
        if not raw.endswith(LINE_ENDS):
            raw += b"\r\n"
        self.parts.append(raw)
        self._place(entry, len(raw), raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n"), None)

    def _place(self, entry, length: int, lines: int, key: int | None) -> None:
        if isinstance(entry, RowProblem):  # the same record, at its new line numbers
            entry = RowProblem(self.line + 1, entry.reason, entry.raw, self.line + lines)
        else:
            self.pairs.append((key if key is not None else event_key(entry.event_text()), self.size))
        self.entries.append(entry)
        self.spans.append((self.size, self.size + length, self.line, self.line + lines))
        self.size += length
        self.line += lines

    def _flush(self) -> None:
        if self._run is not None:
            self.parts.append(self.old.data[self._run[0] : self._run[1]])
            self._run = None

    def payload(self) -> bytes:
        self._flush()
        return b"".join(self.parts)

    def snapshot(self, payload: bytes, state: CsvState | None) -> Snapshot:
        """The new file's snapshot, without parsing it again."""
        return Snapshot(state, payload, self.entries, self.spans, columns=FIELDS, header_end=self.header_end)
