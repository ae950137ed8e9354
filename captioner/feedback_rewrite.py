"""Building the bytes of a rewritten log: the records an edit does not touch are copied as they were, in runs,
and the new file's snapshot and event keys are worked out on the way, so editing one row of 100,000 costs a few
list operations per row instead of re-parsing or re-formatting the file."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from .feedback_csv import FIELDS, FeedbackError, FeedbackRow, RowProblem, format_lines, formatted, record_closer
from .feedback_keys import CsvState, event_key
from .feedback_snapshot import Snapshot, parse_bytes

LINE_ENDS = (b"\n", b"\r")


@dataclass
class Plan:
    """What an edit does to the old entries: index -> new row (None: the row goes), and rows added at the end."""

    changes: dict[int, FeedbackRow | None]
    added: list[FeedbackRow]


def plan(old: Snapshot, new_rows: list[FeedbackRow], drop: list[int]) -> Plan:
    """Compare the rows a transform returned with the old ones (by identity first: most rows come back as they were)."""
    old_rows, where = old.rows, old.row_indices()
    changes: dict[int, FeedbackRow | None] = dict.fromkeys(drop)
    if len(new_rows) == len(old_rows):
        moved = [i for i, (a, b) in enumerate(zip(old_rows, new_rows)) if a is not b]
        if all(old_rows[i].id == new_rows[i].id for i in moved):
            changes.update((where[i], new_rows[i]) for i in moved if new_rows[i] != old_rows[i])
            return Plan(changes, [])
    by_id = {row.id: row for row in new_rows}
    if len(by_id) != len(new_rows):
        raise FeedbackError("an edit would leave two rows with the same id; nothing was written")
    for index, row in zip(where, old_rows):
        new = by_id.pop(row.id, None)
        if new is None or new != row:
            changes[index] = new
    return Plan(changes, list(by_id.values()))


class Rewrite:
    """The new CSV: a canonical header, then the old entries with a plan's changes, then the added rows."""

    def __init__(self, old: Snapshot, edit: Plan, old_keys: dict[int, int]):
        self.old, self.old_keys = old, old_keys  # old_keys: byte offset in the old file -> that row's event key
        header = format_lines([], header=True)[0].encode()
        self.parts: list[bytes] = [header]
        self.size, self.line = len(header), 1
        self.entries: list[FeedbackRow | RowProblem] = []
        self.spans: list[tuple[int, int, int, int]] = []
        self.pairs: list[tuple[int, int]] = []  # (event key, byte offset) of every row, for the key index
        self.problem_indices = [i for i, e in enumerate(old.entries) if isinstance(e, RowProblem)]
        special = set(edit.changes)
        if old.columns != FIELDS:  # an older header: every row is written anew in today's columns
            special.update(old.row_indices())
        if old.entries and old.data[old.spans[-1][1] - 1 : old.spans[-1][1]] not in LINE_ENDS:
            special.add(len(old.entries) - 1)  # a last line without its line end gets one
        start = 0
        for index in sorted(special) + [len(old.entries)]:
            self._copy(start, index)
            if index in edit.changes:
                if (row := edit.changes[index]) is not None:  # None: the entry goes
                    self._add(row, formatted(row))
            elif index < len(old.entries):
                entry = old.entries[index]
                self._add(entry, old.raw(index) if isinstance(entry, RowProblem) else formatted(entry))
            start = index + 1
        for row in edit.added:
            self._add(row, formatted(row))

    def _copy(self, first: int, stop: int) -> None:
        """Copy entries [first, stop) of the old file verbatim, as one run of bytes."""
        if first >= stop:
            return
        old = self.old
        begin, line_begin = old.spans[first][0], old.spans[first][2]
        end, line_end = old.spans[stop - 1][1], old.spans[stop - 1][3]
        shift, line_shift = self.size - begin, self.line - line_begin
        self.parts.append(old.data[begin:end])
        entries = old.entries[first:stop]
        if line_shift:  # problems are reported by line: give them their new numbers
            for i in self.problem_indices[bisect_left(self.problem_indices, first) : bisect_left(self.problem_indices, stop)]:
                problem = old.entries[i]
                entries[i - first] = RowProblem(problem.line + line_shift, problem.reason, problem.raw, problem.last_line + line_shift)
        self.entries.extend(entries)
        self.spans.extend([(a + shift, b + shift, la + line_shift, lb + line_shift) for a, b, la, lb in old.spans[first:stop]])
        keys = self.old_keys
        self.pairs.extend(
            (keys[span[0]] if span[0] in keys else event_key(entry.event_text()), span[0] + shift)
            for entry, span in zip(entries, old.spans[first:stop])
            if isinstance(entry, FeedbackRow)
        )
        self.size += end - begin
        self.line += line_end - line_begin

    def _add(self, entry: FeedbackRow | RowProblem, raw: bytes) -> None:
        raw += record_closer(raw)
        lines = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")  # as csv counts lines: \r, \n or \r\n
        if isinstance(entry, RowProblem):
            entry = RowProblem(self.line + 1, entry.reason, entry.raw, self.line + lines)
        else:
            self.pairs.append((event_key(entry.event_text()), self.size))
        self.parts.append(raw)
        self.entries.append(entry)
        self.spans.append((self.size, self.size + len(raw), self.line, self.line + lines))
        self.size += len(raw)
        self.line += lines

    def payload(self) -> bytes:
        return b"".join(self.parts)

    def snapshot(self, payload: bytes, state: CsvState | None) -> Snapshot:
        """The new file's snapshot, without parsing it again."""
        header_end = (len(self.parts[0]), 1)
        return Snapshot(state, payload, self.entries, self.spans, columns=FIELDS, header_end=header_end)


def refuse_revived_records(built: Rewrite, payload: bytes) -> None:
    """Refuse a rewrite after which a broken record kept verbatim would parse as a row: a second record with a
    row's id, once that row is deleted, would become a live row nobody reviewed (and the cache would still call
    it broken). Only a log with broken records pays for the parse this takes."""
    if not any(isinstance(entry, RowProblem) for entry in built.entries):
        return
    expected = [entry for entry in built.entries if isinstance(entry, FeedbackRow)]
    parsed = parse_bytes(payload, None).rows
    if parsed != expected:
        kept = set(expected)
        revived = sorted({row.id for row in parsed if row not in kept})
        raise FeedbackError(
            f"this would turn broken record(s) into live rows (id {', '.join(i[:40] for i in revived[:3])}): move the "
            "broken records aside first (the admin page's button, or `python -m captioner feedback repair`); nothing was written"
        )
