"""The feedback log: data/feedback.csv (one row per correction or confirmation) and its stored images."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from filelock import FileLock

FIELDS = [
    "id", "created_at", "image_sha256", "image_path", "task", "prompt", "model", "model_version",
    "model_output", "correction", "status", "reviewed_at", "reviewer", "notes", "settings", "score",
]  # fmt: skip
OPTIONAL_FIELDS = ("score",)  # added later: a log written before them still reads, and is upgraded on the next write
TASKS = ("caption", "qa", "style")  # style: a corrected styled caption, its style as the prompt
STATUSES = ("pending", "approved", "rejected")
MAX_TEXT_CHARS = 20_000
LOCK_TIMEOUT_S = 30
csv.field_size_limit(16 * 1024 * 1024)


class FeedbackError(ValueError):
    """A correction that cannot be logged, or a log that cannot be written; the message says which and why."""


@dataclass(frozen=True)
class FeedbackRow:
    """One logged event, every field as the text stored in the CSV."""

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
        keys = ("image_sha256", "task", "prompt", "model_version", "model_output", "correction", "status")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


@dataclass(frozen=True)
class RowProblem:
    """A record of the CSV that does not parse or validate, kept verbatim and reported by line."""

    line: int
    reason: str
    raw: str = ""

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def now_utc() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class FeedbackLog:
    """data/feedback.csv and data/images/ under one data folder; every write holds the lock file beside the CSV."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.csv_path = self.data_dir / "feedback.csv"
        self.images_dir = self.data_dir / "images"
        self._lock = FileLock(str(self.csv_path) + ".lock", timeout=LOCK_TIMEOUT_S)

    # --- reading -------------------------------------------------------------------------------
    def read(self) -> tuple[list[FeedbackRow], list[RowProblem]]:
        """All valid rows in file order, and every record that does not parse, with its line number."""
        entries = self._read_entries()
        return [e for e in entries if isinstance(e, FeedbackRow)], [e for e in entries if isinstance(e, RowProblem)]

    def _read_entries(self) -> list[FeedbackRow | RowProblem]:
        try:
            data = self.csv_path.read_bytes()
        except FileNotFoundError:
            return []
        return parse_csv(data.decode("utf-8", errors="surrogateescape"))

    # --- writing -------------------------------------------------------------------------------
    def record(
        self,
        image_bytes: bytes,
        extension: str,
        *,
        task: str,
        model_output: str,
        correction: str,
        prompt: str = "",
        model: str = "",
        model_version: str = "",
        status: str = "pending",
        settings: dict | None = None,
        notes: str = "",
        score: float | None = None,
    ) -> tuple[FeedbackRow, bool]:
        """Store the image and log one correction; (row, False) when the same event is already logged."""
        check_text("correction", correction, allow_empty=False)
        for name, value in (("prompt", prompt), ("model output", model_output), ("notes", notes)):
            check_text(name, value)
        if task not in TASKS:
            raise FeedbackError(f"task {task!r} is not one of {', '.join(TASKS)}")
        if status not in ("pending", "approved"):
            raise FeedbackError(f"a new row's status must be pending or approved, not {status!r}")
        if score is not None and not math.isfinite(score):
            raise FeedbackError(f"the score must be a finite number, not {score!r}")
        sha, image_path = self.store_image(image_bytes, extension)
        row = FeedbackRow(
            id=str(uuid.uuid4()), created_at=now_utc(), image_sha256=sha, image_path=image_path, task=task,
            prompt=prompt, model=model, model_version=model_version, model_output=model_output,
            correction=correction, status=status, notes=notes,
            settings=json.dumps(settings or {}, sort_keys=True, ensure_ascii=False),
            score="" if score is None else f"{score:.4f}",
        )  # fmt: skip
        written = self.append([row])
        return (written[0], True) if written else (self._find_same(row), False)

    def append(self, rows: Iterable[FeedbackRow]) -> list[FeedbackRow]:
        """Append whole rows in one fsynced write under the lock; rows already logged are skipped."""
        rows = list(rows)
        with self._lock:
            existing = [e for e in self._read_entries() if isinstance(e, FeedbackRow)]
            fresh: list[FeedbackRow] = []
            for row in rows:
                if not any(row.same_event(old) for old in existing + fresh):
                    fresh.append(row)
            if not fresh:
                return []
            self.data_dir.mkdir(parents=True, exist_ok=True)
            created = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            if not created and self._header() != FIELDS:
                self.rewrite(lambda old: old)  # an older log gains the new columns before rows that have them
            payload = format_rows(fresh, header=created)
            if not created and not _ends_with_newline(self.csv_path):
                payload = "\r\n" + payload  # a torn last line stays its own (reported) record
            _append_durably(self.csv_path, payload.encode("utf-8", errors="surrogateescape"))
            if created:
                _fsync_dir(self.data_dir)
        return fresh

    def rewrite(self, transform: Callable[[list[FeedbackRow]], list[FeedbackRow]]) -> list[FeedbackRow]:
        """Replace the CSV atomically with transform(rows); broken records stay verbatim where they were."""
        with self._lock:
            entries = self._read_entries()
            old_rows = [e for e in entries if isinstance(e, FeedbackRow)]
            new_rows = transform(list(old_rows))
            by_id = {row.id: row for row in new_rows}
            out = io.StringIO(newline="")
            out.write(format_rows([], header=True))
            for entry in entries:
                if isinstance(entry, RowProblem):
                    out.write(entry.raw if entry.raw.endswith(("\n", "\r")) else entry.raw + "\r\n")
                elif entry.id in by_id:
                    out.write(format_rows([by_id.pop(entry.id)]))
            kept = {row.id for row in old_rows}
            out.write(format_rows([row for row in new_rows if row.id not in kept]))
            self.data_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.csv_path, out.getvalue().encode("utf-8", errors="surrogateescape"))
            return new_rows

    def _header(self) -> list[str]:
        with open(self.csv_path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return next(csv.reader([handle.readline().removeprefix("\ufeff")]), [])

    def store_image(self, data: bytes, extension: str) -> tuple[str, str]:
        """Store the uploaded bytes once under images/<sha256>.<ext>; returns (sha256, path relative to data/)."""
        if not data:
            raise FeedbackError("the image is empty (0 bytes)")
        sha = hashlib.sha256(data).hexdigest()
        relative = f"images/{sha}.{extension.lower().lstrip('.')}"
        target = self.data_dir / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data)
        return sha, relative

    def _find_same(self, row: FeedbackRow) -> FeedbackRow:
        return next(old for old in self.read()[0] if row.same_event(old))


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


def format_rows(rows: list[FeedbackRow], header: bool = False) -> str:
    """RFC 4180 text for rows (CRLF line ends, quotes only where needed)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(FIELDS)
    for row in rows:
        record = asdict(row)
        writer.writerow([record[name] for name in FIELDS])
    return out.getvalue()


class _Lines:
    """An iterator over a list of lines from a position, so a parse can restart at any line."""

    def __init__(self, lines: list[str], pos: int):
        self.lines, self.pos = lines, pos

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def parse_csv(text: str) -> list[FeedbackRow | RowProblem]:
    """Parse the log's text into rows and problems; never raises on bad content.

    A record that fails and spans several lines is reported by its first line only and parsing resumes on
    the next line, so one torn or hand-broken quote cannot swallow the rows after it.
    """
    lines = list(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    entries: list[FeedbackRow | RowProblem] = []
    columns: list[str] | None = None
    i = 0
    while i < len(lines):
        cursor = _Lines(lines, i)
        try:
            record = next(csv.reader(cursor))
        except StopIteration:
            break
        except csv.Error as exc:
            entries.append(RowProblem(i + 1, f"does not parse as CSV ({exc})", lines[i]))
            i += 1
            continue
        if record in ([], [""]):
            i = cursor.pos
            continue
        if columns is None:
            missing = [name for name in FIELDS if name not in record and name not in OPTIONAL_FIELDS]
            if missing:
                entries.append(RowProblem(i + 1, f"header is missing columns: {', '.join(missing)}", lines[i]))
                columns = FIELDS
            else:
                columns = record
            i = cursor.pos
            continue
        entry = _validate(record, columns, i + 1, "".join(lines[i : cursor.pos]))
        if isinstance(entry, RowProblem) and cursor.pos - i > 1:
            entry = RowProblem(i + 1, entry.reason, lines[i])
            cursor.pos = i + 1
        entries.append(entry)
        i = cursor.pos
    return entries


def _validate(record: list[str], columns: list[str], line: int, raw: str) -> FeedbackRow | RowProblem:
    if len(record) != len(columns):
        return RowProblem(line, f"expected {len(columns)} fields, found {len(record)}", raw)
    values = {name: "" for name in OPTIONAL_FIELDS} | dict(zip(columns, record))
    if any("\udc80" <= ch <= "\udcff" for value in record for ch in value):
        return RowProblem(line, "not valid UTF-8", raw)
    if not values["id"]:
        return RowProblem(line, "id is empty", raw)
    if values["task"] not in TASKS:
        return RowProblem(line, f"task {values['task']!r} is not one of {', '.join(TASKS)}", raw)
    if values["status"] not in STATUSES:
        return RowProblem(line, f"status {values['status']!r} is not one of {', '.join(STATUSES)}", raw)
    try:
        datetime.fromisoformat(values["created_at"])
    except ValueError:
        return RowProblem(line, f"created_at {values['created_at']!r} is not an ISO 8601 time", raw)
    if values["settings"]:
        try:
            json.loads(values["settings"])
        except ValueError:
            return RowProblem(line, "settings is not valid JSON", raw)
    if values["score"]:
        try:
            float(values["score"])
        except ValueError:
            return RowProblem(line, f"score {values['score']!r} is not a number", raw)
    return FeedbackRow(**{f.name: values[f.name] for f in fields(FeedbackRow)})


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) in (b"\n", b"\r")


def _append_durably(path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, payload: bytes) -> None:
    """Write a file through a temp file in the same folder, fsync, os.replace: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a folder; the file itself is already fsynced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

