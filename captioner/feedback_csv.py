"""The feedback log's schema and its CSV text: one row per event, RFC 4180, parsed without ever raising; and the
checks a row passes before it is written."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from .files import UNDECODABLE, has_undecodable

FIELDS = [
    "id", "created_at", "image_sha256", "image_path", "task", "prompt", "model", "model_version",
    "model_output", "correction", "status", "reviewed_at", "reviewer", "notes", "settings", "score", "linked_to",
]  # fmt: skip
OPTIONAL_FIELDS = ("score", "linked_to")  # added later: a log written before them still reads, and is upgraded on the next write
EVENT_FIELDS = ("image_sha256", "task", "prompt", "model_version", "model_output", "correction", "status")
TASKS = ("caption", "qa", "style")  # style: a corrected styled caption, its style as the prompt
STATUSES = ("pending", "approved", "rejected")
TASK_NAMES, STATUS_NAMES = {t: t for t in TASKS}, {s: s for s in STATUSES}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # ids become file names in exports
IMAGE_PATH = re.compile(r"images/[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")  # one file directly inside data/images
_EOL = re.compile(r"\r\n?|\n")
MAX_TEXT_CHARS = 20_000
csv.field_size_limit(16 * 1024 * 1024)


def record_closer(raw: bytes) -> bytes:
    """What ends a record cut short (a writer killed mid-way) so that every CSV reader steps past it, not only this
    log's own: a quote left open is closed, then a line end. Nothing for a whole record, or for nothing at all."""
    if not raw:
        return b""
    if raw.count(b'"') % 2:  # inside a quoted field: what follows would be read as part of it
        return b'"\r\n'
    if raw.endswith(b"\r"):  # cut between the \r and \n this log writes: a lone \r trips some readers
        return b"\n"
    return b"" if raw.endswith(b"\n") else b"\r\n"


class FeedbackError(ValueError):
    """A correction that cannot be logged, or a log that cannot be written; the message says which and why."""


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
    linked_to: str = ""  # the id of the correction this row spread from (a look-alike's fix); empty when none

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


@dataclass
class Parsed:
    """Entries in file order; for each, its character range and line range in the text; the header's columns."""

    entries: list[Entry]
    spans: list[tuple[int, int, int, int]]  # char start, char end, line index start, line index end
    columns: list[str] | None
    header_end: tuple[int, int] = (0, 0)  # char offset and line index after the header


def parse_csv(text: str) -> list[Entry]:
    """Parse the log's text into rows and problems; never raises on bad content."""
    return parse_text(text.removeprefix("\ufeff"), check_utf8=has_undecodable(text)).entries


def parse_text(
    text: str, columns: list[str] | None = None, first_line: int = 1, check_utf8: bool = True,
    seen_ids: set[str] | None = None,
) -> Parsed:
    """Parse text whose first line is line number first_line; columns None: a header comes first.

    check_utf8 False: the caller knows the text has no undecodable bytes (has_undecodable), so rows skip that check.
    An id already in seen_ids (the rows before this text) or earlier in it makes its row a problem: admin actions
    address rows by id. A record that fails and spans several lines is reported by its first line and parsing
    resumes on the next line, so one torn or hand-broken quote cannot swallow the rows after it; consecutive bad
    lines make one problem.
    """
    out = Parsed([], [], columns)
    source = io.StringIO(text, newline="")
    reader = csv.reader(source)
    seen = set() if seen_ids is None else seen_ids
    shared: dict[str, str] = {}
    valid_settings: set[str] = {"", "{}"}
    pos, line_base = 0, 0  # line index = line_base + reader.line_num (rebased whenever the parse jumps back)
    while True:
        begin, begin_line = pos, line_base + reader.line_num
        try:
            record = next(reader)
            reason = None
        except StopIteration:
            break
        except csv.Error as exc:
            record, reason = None, f"does not parse as CSV ({exc})"
        end, end_line = source.tell(), line_base + reader.line_num
        if reason is None and record in ([], [""]):
            pos = end
            continue
        if reason is None and out.columns is None:
            missing = [name for name in FIELDS if name not in record and name not in OPTIONAL_FIELDS]
            if missing:
                reason = f"header is missing columns: {', '.join(missing)}" + _separator_hint(record, len(FIELDS))
                _add_problem(out, text, begin, end, begin_line, end_line, reason, first_line)
            out.columns = FIELDS if missing else record
            out.header_end = (end, end_line)
            pos = end
            continue
        if reason is None:
            entry = _validate(record, out.columns, shared, valid_settings, check_utf8)
            if isinstance(entry, str):
                reason = entry
            elif entry.id in seen:
                reason = f"id {entry.id} is already used by an earlier row"
            else:
                seen.add(entry.id)
                out.entries.append(entry)
                out.spans.append((begin, end, begin_line, end_line))
                pos = end
                continue
        if end_line - begin_line != 1:  # resume on the line after the record's first: a stray quote swallows nothing
            eol = _EOL.search(text, begin)
            end, end_line = (eol.end() if eol else len(text)), begin_line + 1
            source.seek(end)
            line_base = end_line - reader.line_num
        _add_problem(out, text, begin, end, begin_line, end_line, reason, first_line)
        pos = end
    return out


def _add_problem(out: Parsed, text: str, begin: int, end: int, line: int, end_line: int, reason: str, first: int) -> None:
    last = out.entries[-1] if out.entries else None
    if isinstance(last, RowProblem) and out.spans[-1][1] == begin:  # continues the bad run just before it
        out.entries[-1] = RowProblem(last.line, last.reason, last.raw + text[begin:end], first + end_line - 1)
        out.spans[-1] = (out.spans[-1][0], end, out.spans[-1][2], end_line)
        return
    out.entries.append(RowProblem(first + line, reason, text[begin:end], first + end_line - 1))
    out.spans.append((begin, end, line, end_line))


def validate_record(record: list[str], columns: list[str]) -> FeedbackRow | str:
    """The row a CSV record holds (in the header's column order), or the reason it is not one."""
    return _validate(list(record), columns, {}, set(), True)


def _validate(record: list[str], columns: list[str], shared: dict, valid_settings: set, check_utf8: bool) -> FeedbackRow | str:
    """The row, or the reason it is not one (the hot loop of reading the log: keep it lean)."""
    if len(record) != len(columns):
        return f"expected {len(columns)} fields, found {len(record)}" + _separator_hint(record, len(columns))
    if columns is not FIELDS and columns != FIELDS:
        values = {name: "" for name in OPTIONAL_FIELDS} | dict(zip(columns, record))
        record = [values[name] for name in FIELDS]
    row_id, created_at, _, image_path, task, _, model, version, _, _, status, _, reviewer, _, settings, score, linked_to = record
    if check_utf8 and any(UNDECODABLE.search(value) for value in record):
        return "not valid UTF-8"
    if task not in TASKS:
        return f"task {task[:80]!r} is not one of {', '.join(TASKS)}"
    if status not in STATUSES:
        return f"status {status[:80]!r} is not one of {', '.join(STATUSES)}"
    if not SAFE_NAME.match(row_id):
        return f"id {row_id[:80]!r} is not a safe file name (letters, digits, . _ -)"
    if not IMAGE_PATH.match(image_path):
        return f"image_path {image_path[:120]!r} is not images/<file name>"
    try:
        datetime.fromisoformat(created_at)
    except ValueError:
        return f"created_at {created_at[:80]!r} is not an ISO 8601 time"
    if settings not in valid_settings:
        try:
            json.loads(settings)
        except ValueError:
            return "settings is not valid JSON"
        valid_settings.add(settings)
    if score:
        try:
            float(score)
        except ValueError:
            return f"score {score[:80]!r} is not a number"
    if linked_to and not SAFE_NAME.match(linked_to):
        return f"linked_to {linked_to[:80]!r} is not a row id (letters, digits, . _ -)"
    record[4], record[10] = TASK_NAMES[task], STATUS_NAMES[status]  # few distinct values: share one string each
    record[6], record[7] = shared.setdefault(model, model), shared.setdefault(version, version)
    record[12], record[14] = shared.setdefault(reviewer, reviewer), shared.setdefault(settings, settings)
    return FeedbackRow._make(record)


def _separator_hint(record: list[str], expected: int) -> str:
    """Why a record has too few fields when a spreadsheet saved it with another separator (';' in many locales)."""
    if len(record) < expected:
        for separator, name in ((";", "semicolons"), ("\t", "tabs")):
            if sum(field.count(separator) for field in record) >= expected - len(record):
                return f" (its fields look separated by {name}: the log is comma-separated; save it as CSV with commas)"
    return ""


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(name: str, value: str, allow_empty: bool = True) -> None:
    """Refuse text a CSV cell cannot carry faithfully, naming the field and the reason."""
    if not isinstance(value, str):
        raise FeedbackError(f"the {name} must be text, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise FeedbackError(f"the {name} is empty")
    if "\x00" in value:
        raise FeedbackError(f"the {name} contains a NUL character")
    if len(value) > MAX_TEXT_CHARS:
        raise FeedbackError(f"the {name} is {len(value):,} characters, over the {MAX_TEXT_CHARS:,} limit")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FeedbackError(
            f"the {name} is not valid text: character {exc.start + 1} ({value[exc.start]!r}) cannot be stored as "
            "UTF-8 (bytes that are not UTF-8, or half of a surrogate pair)"
        ) from None


def tidy_correction(task: str, correction: str, model_output: str) -> str:
    """A typed correction as it is logged: one space between words, none at either end; a styled caption keeps its
    line breaks (one blank line at most between lines). One that then says what the model said is a confirmation,
    logged as the model's own words (so a stray space or newline never turns a confirmation into a correction)."""
    tidy = _tidy_lines if task == "style" else (lambda text: " ".join(text.split()))
    return model_output if tidy(correction) == tidy(model_output) else tidy(correction)


def _tidy_lines(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


def formatted(row: FeedbackRow) -> bytes:
    """One checked row as the bytes of its CSV record."""
    check_row(row)
    return format_lines([row])[0].encode("utf-8")


def check_row(row: FeedbackRow) -> None:
    """Refuse a row that would not read back as itself (bad text, status, task, id or image path)."""
    if not isinstance(row, FeedbackRow):
        raise FeedbackError(f"expected a FeedbackRow, not {type(row).__name__}")
    joined = "".join(row)
    if "\x00" in joined or max(map(len, row)) > MAX_TEXT_CHARS or not (joined.isascii() or _encodes(joined)):
        for name, value in zip(FIELDS, row):
            check_text(name.replace("_", " "), value)
    reason = validate_record(list(row), FIELDS)
    if isinstance(reason, str):
        raise FeedbackError(f"row {row.id[:40]}: {reason}")
