"""The feedback log's schema and its CSV text: one row per event, RFC 4180, parsed without ever raising."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

FIELDS = [
    "id", "created_at", "image_sha256", "image_path", "task", "prompt", "model", "model_version",
    "model_output", "correction", "status", "reviewed_at", "reviewer", "notes", "settings", "score",
]  # fmt: skip
OPTIONAL_FIELDS = ("score",)  # added later: a log written before them still reads, and is upgraded on the next write
EVENT_FIELDS = ("image_sha256", "task", "prompt", "model_version", "model_output", "correction", "status")
TASKS = ("caption", "qa")
STATUSES = ("pending", "approved", "rejected")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # ids become file names in exports
IMAGE_PATH = re.compile(r"images/[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")  # one file directly inside data/images
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by errors="surrogateescape"
_SHARED = (4, 6, 7, 10, 12, 14)  # task, model, model_version, status, reviewer, settings: few distinct values
csv.field_size_limit(16 * 1024 * 1024)


class FeedbackRow(NamedTuple):
    """One logged event, every field as the text stored in the CSV (a tuple: cheap to parse and write back)."""

    id: str
    created_at: str
    image_sha256: str
    image_path: str
    task: str
    prompt: str
    model: str
    model_version: str
    model_output: str
    correction: str
    status: str
    reviewed_at: str = ""
    reviewer: str = ""
    notes: str = ""
    settings: str = ""
    score: str = ""  # the model's confidence in model_output: mean token log-probability; empty when unknown

    @property
    def is_confirmation(self) -> bool:
        return self.correction == self.model_output

    def same_event(self, other: "FeedbackRow") -> bool:
        """True when both rows say the same thing about the same output (a repeated press, a rerun)."""
        return all(getattr(self, k) == getattr(other, k) for k in EVENT_FIELDS)

    def event_text(self) -> str:
        """The fields same_event compares, joined (what the event-key index hashes)."""
        return "\x00".join(getattr(self, k) for k in EVENT_FIELDS)


@dataclass(frozen=True)
class RowProblem:
    """Lines of the CSV that do not parse or validate, kept verbatim and reported by line (one problem per run
    of consecutive bad lines, so a torn multi-line record is one problem)."""

    line: int
    reason: str
    raw: str = ""
    last_line: int = 0

    def __str__(self) -> str:
        where = f"lines {self.line}-{self.last_line}" if self.last_line > self.line else f"line {self.line}"
        return f"{where}: {self.reason}"


Entry = FeedbackRow | RowProblem


def format_rows(rows: list[FeedbackRow], header: bool = False) -> str:
    """RFC 4180 text for rows (CRLF line ends, quotes only where needed)."""
    return "".join(format_lines(rows, header))


def format_lines(rows: list[FeedbackRow], header: bool = False) -> list[str]:
    """One RFC 4180 record per row (the header first when asked)."""
    parts: list[str] = []
    writer = csv.writer(_Collector(parts), lineterminator="\r\n")
    if header:
        writer.writerow(FIELDS)
    writer.writerows(rows)
    return parts


class _Collector:
    """A file-like sink keeping each record csv.writer writes as its own string."""

    def __init__(self, parts: list[str]):
        self.write = parts.append


def split_lines(text: str) -> list[str]:
    """Lines as the csv module sees them (\\r, \\n or \\r\\n end a line), line ends kept."""
    return list(io.StringIO(text, newline=""))


def has_undecodable(text: str) -> bool:
    """True when text holds bytes that were not UTF-8 (decoded with errors="surrogateescape")."""
    return _UNDECODABLE.search(text) is not None


class _Cursor:
    """An iterator over lines from a position, so a parse can restart at any line."""

    __slots__ = ("lines", "pos")

    def __init__(self, lines: list[str], pos: int):
        self.lines, self.pos = lines, pos

    def __iter__(self):
        return self

    def __next__(self) -> str:
        pos = self.pos
        if pos >= len(self.lines):
            raise StopIteration
        self.pos = pos + 1
        return self.lines[pos]


@dataclass
class Parsed:
    """Entries of a run of lines, where each starts (line index), and the column order the header gave."""

    entries: list[Entry]
    starts: list[int]
    ends: list[int]
    columns: list[str] | None
    header_end: int = 0  # line index after the header


def parse_csv(text: str) -> list[Entry]:
    """Parse the log's text into rows and problems; never raises on bad content."""
    return parse_lines(split_lines(text.removeprefix("\ufeff")), check_utf8=has_undecodable(text)).entries


def parse_lines(
    lines: list[str], columns: list[str] | None = None, first_line: int = 1, check_utf8: bool = True,
    seen_ids: set[str] | None = None,
) -> Parsed:
    """Parse lines (the first is line number first_line); columns None: a header comes first.

    check_utf8 False: the caller knows the text has no undecodable bytes (has_undecodable), so rows skip that check.
    An id already in seen_ids (the rows before these lines) or earlier in these lines makes its row a problem:
    admin actions address rows by id.
    A record that fails and spans several lines is reported by its first line and parsing resumes on the next
    line, so one torn or hand-broken quote cannot swallow the rows after it; consecutive bad lines make one problem.
    """
    out = Parsed([], [], [], columns)
    cursor = _Cursor(lines, 0)
    seen = set() if seen_ids is None else seen_ids
    reader = csv.reader(cursor)
    shared: dict[str, str] = {}
    valid_settings: set[str] = {"", "{}"}
    while True:
        begin = cursor.pos
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            cursor.pos = begin + 1
            _add_problem(out, begin, begin + 1, f"does not parse as CSV ({exc})", lines, first_line)
            continue
        if record in ([], [""]):
            continue
        if out.columns is None:
            missing = [name for name in FIELDS if name not in record and name not in OPTIONAL_FIELDS]
            if missing:
                _add_problem(out, begin, cursor.pos, f"header is missing columns: {', '.join(missing)}", lines, first_line)
                out.columns = FIELDS
            else:
                out.columns = record
            out.header_end = cursor.pos
            continue
        entry = _validate(record, out.columns, shared, valid_settings, check_utf8)
        if not isinstance(entry, str):
            if entry.id in seen:
                entry = f"id {entry.id} is already used by an earlier row"
            else:
                seen.add(entry.id)
        if isinstance(entry, str):
            end = begin + 1  # resume on the next line: a stray quote must not swallow the rows after it
            cursor.pos = end
            _add_problem(out, begin, end, entry, lines, first_line)
        else:
            out.entries.append(entry)
            out.starts.append(begin)
            out.ends.append(cursor.pos)
    return out


def _add_problem(out: Parsed, begin: int, end: int, reason: str, lines: list[str], first_line: int) -> None:
    raw = "".join(lines[begin:end])
    last = out.entries[-1] if out.entries else None
    if isinstance(last, RowProblem) and out.ends[-1] == begin:  # continues the bad run just before it
        merged = RowProblem(last.line, last.reason, last.raw + raw, first_line + end - 1)
        out.entries[-1], out.ends[-1] = merged, end
        return
    out.entries.append(RowProblem(first_line + begin, reason, raw, first_line + end - 1))
    out.starts.append(begin)
    out.ends.append(end)


def validate_record(record: list[str], columns: list[str]) -> FeedbackRow | str:
    """The row a CSV record holds (in the header's column order), or the reason it is not one."""
    return _validate(list(record), columns, {}, set(), True)


def _validate(record: list[str], columns: list[str], shared: dict, valid_settings: set, check_utf8: bool) -> FeedbackRow | str:
    if len(record) != len(columns):
        return f"expected {len(columns)} fields, found {len(record)}"
    if columns is not FIELDS and columns != FIELDS:
        values = {name: "" for name in OPTIONAL_FIELDS} | dict(zip(columns, record))
        record = [values[name] for name in FIELDS]
    for i in _SHARED:
        record[i] = shared.setdefault(record[i], record[i])
    row = FeedbackRow._make(record)
    if check_utf8 and any(_UNDECODABLE.search(value) for value in record):
        return "not valid UTF-8"
    if not SAFE_NAME.match(row.id):
        return f"id {row.id[:80]!r} is not a safe file name (letters, digits, . _ -)"
    if row.task not in TASKS:
        return f"task {row.task[:80]!r} is not one of {', '.join(TASKS)}"
    if row.status not in STATUSES:
        return f"status {row.status[:80]!r} is not one of {', '.join(STATUSES)}"
    if not IMAGE_PATH.match(row.image_path):
        return f"image_path {row.image_path[:120]!r} is not images/<file name>"
    try:
        datetime.fromisoformat(row.created_at)
    except ValueError:
        return f"created_at {row.created_at[:80]!r} is not an ISO 8601 time"
    if row.settings not in valid_settings:
        try:
            json.loads(row.settings)
        except ValueError:
            return "settings is not valid JSON"
        valid_settings.add(row.settings)
    if row.score:
        try:
            float(row.score)
        except ValueError:
            return f"score {row.score[:80]!r} is not a number"
    return row
