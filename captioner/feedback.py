"""The feedback log: data/feedback.csv (one row per correction or confirmation) and its stored images.

Every write holds data/feedback.csv.lock. An append is one fsynced write of whole rows; whether an event is
already logged is answered by the event-key index (feedback_keys), so an append costs the same at any log size.
An edit replaces the file atomically. Reads are parsed once per process and then only for what was appended.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from filelock import FileLock, Timeout

from .feedback_csv import (
    FIELDS, IMAGE_PATH, OPTIONAL_FIELDS, SAFE_NAME, STATUSES, TASKS, FeedbackError, FeedbackRow, RowProblem,
    check_row, check_text, format_lines, format_rows, parse_csv, record_closer, tidy_correction, validate_record,
)  # fmt: skip
from .feedback_keys import CsvState, EventKeys, event_key
from .feedback_rewrite import Rewrite, plan, refuse_revived_records
from .feedback_snapshot import Snapshot, SnapshotCache, gc_paused, rows_after
from .files import append_durably, fsync_dir, now_utc, read_at, remove_stale_temps, write_atomic
from .runtime import lock_holder

__all__ = [  # the log's public face; the schema and codec live in feedback_csv, file helpers in files
    "FIELDS", "OPTIONAL_FIELDS", "STATUSES", "TASKS", "FeedbackError", "FeedbackLog", "FeedbackRow", "RowProblem",
    "check_text", "format_rows", "parse_csv", "tidy_correction",
]  # fmt: skip

LOG = logging.getLogger(__name__)
LOCK_TIMEOUT_S = 30
STALE_IMAGE_TEMP_S = 3600  # an image temp file this old is a killed writer's (images are written outside the lock)
EXTENSION = re.compile(r"[a-z0-9]{1,8}\Z")
_SNAPSHOTS = SnapshotCache()


class NotWritable(FeedbackError):
    """The log's folder takes no lock file (read-only, full, another user's): it can be read, not written."""
_KEYS: dict[str, EventKeys] = {}
_KEYS_GUARD = threading.Lock()


class FeedbackLog:
    """data/feedback.csv and data/images/ under one data folder; every write holds the lock file beside the CSV."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.csv_path = self.data_dir / "feedback.csv"
        self.keys_path = self.data_dir / "feedback.csv.keys"
        self.broken_path = self.data_dir / "feedback-broken.csv"
        self.images_dir = self.data_dir / "images"
        self._lock = FileLock(str(self.csv_path) + ".lock", timeout=LOCK_TIMEOUT_S)

    @contextmanager
    def locked(self, reading: bool = False) -> Iterator[None]:
        """Hold the log's lock; waiting longer than LOCK_TIMEOUT_S is one clear FeedbackError (reading: for a read)."""
        try:
            self._lock.acquire()
        except Timeout:  # the holder is named: a process stopped or hung with the lock is the one to look at
            outcome = "the log was not read" if reading else "nothing was written"  # a `feedback list` wrote nothing
            raise FeedbackError(
                f"the feedback log is busy: {lock_holder(self._lock.lock_file) or 'another writer'} held "
                f"{self._lock.lock_file} for over {LOCK_TIMEOUT_S} s; {outcome}, try again"
            ) from None
        except OSError as exc:  # a read-only or full data folder, or one this user may not write
            raise NotWritable(f"the feedback log cannot be written here: {self._lock.lock_file}: {exc.strerror or exc}") from None
        try:
            yield
        finally:
            self._lock.release()

    # --- reading -------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The log as it is now (parsed once per process, then only what was appended)."""
        if not self.csv_path.exists():
            return Snapshot(None, b"")
        try:
            with self.locked(reading=True):  # a reader never sees half of an append in flight; parsing happens after
                read = _SNAPSHOTS.read(self.csv_path)
        except NotWritable:  # a read-only data folder: no lock file can be made, and no writer can append
            read = _SNAPSHOTS.read(self.csv_path)
        return _SNAPSHOTS.finish(self.csv_path, read)

    def read(self) -> tuple[list[FeedbackRow], list[RowProblem]]:
        """All valid rows in file order, and every run of lines that does not parse, with its line numbers."""
        snapshot = self.snapshot()
        return list(snapshot.rows), list(snapshot.problems)

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
        linked_to: str = "",
    ) -> tuple[FeedbackRow, bool]:
        """Store the image and log one correction; (row, False) when the same event is already logged.
        linked_to: the id of the row this correction was spread from (a look-alike confirmed on the caption page)."""
        check_text("correction", correction, allow_empty=False)
        for name, value in (("prompt", prompt), ("model output", model_output), ("notes", notes), ("model", model),
                            ("model version", model_version)):  # fmt: skip
            check_text(name, value)
        if task not in TASKS:
            raise FeedbackError(f"task {task!r} is not one of {', '.join(TASKS)}")
        if task != "caption" and not prompt.strip():  # a Q&A row's question; a styled caption's style
            raise FeedbackError(f"a {task} row needs its {'question' if task == 'qa' else 'style'} as the prompt")
        if status not in ("pending", "approved"):
            raise FeedbackError(f"a new row's status must be pending or approved, not {status!r}")
        if score is not None and not math.isfinite(score):
            raise FeedbackError(f"the score must be a finite number, not {score!r}")
        if linked_to and not SAFE_NAME.match(str(linked_to)):
            raise FeedbackError(f"linked_to {str(linked_to)[:80]!r} is not a row id (letters, digits, . _ -)")
        settings_text = json.dumps(settings or {}, sort_keys=True, ensure_ascii=False)
        check_text("settings", settings_text)
        correction = tidy_correction(task, correction, model_output)
        sha, image_path = self.store_image(image_bytes, extension)
        row = FeedbackRow(
            id=str(uuid.uuid4()), created_at=now_utc(), image_sha256=sha, image_path=image_path, task=task,
            prompt=prompt, model=model, model_version=model_version, model_output=model_output,
            correction=correction, status=status, notes=notes, settings=settings_text,
            score="" if score is None else f"{score:.4f}", linked_to=linked_to,
        )  # fmt: skip
        with self.locked():
            written = self.append([row])
            return (written[0], True) if written else (self._logged_as(row), False)

    def append(self, rows: Iterable[FeedbackRow]) -> list[FeedbackRow]:
        """Append whole rows in one fsynced write under the lock; rows whose event is already logged are skipped."""
        rows = list(rows)
        for row in rows:
            check_row(row)
        with self.locked():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.data_dir, f".{self.csv_path.name}.*.tmp")  # a killed rewrite's; we hold the lock
            state = CsvState.of(self.csv_path)
            created = state is None or state.size == 0
            if not created and self._header() != FIELDS:
                self._replace([], lambda old: old)  # an older log gains the new columns before rows that have them
                state = CsvState.of(self.csv_path)
            keys, whole_to = self._synced_keys(state)
            offsets_of = (lambda key: []) if created else keys.lookup()  # noqa: E731 - a new log holds nothing
            fresh, keyed, pending = [], [], {}
            for row in rows:
                key = event_key(row.event_text())
                if any(row.same_event(other) for other in pending.get(key, [])) or self._logged(offsets_of(key), row):
                    continue
                fresh.append(row)
                keyed.append(key)
                pending.setdefault(key, []).append(row)
            if not fresh:
                return []
            header = format_lines([], header=True)[0].encode() if created else b""
            lines = [line.encode("utf-8") for line in format_lines(fresh)]
            torn = not created and whole_to < state.size  # bytes the index never saw: maybe a record cut short
            prefix = record_closer(self._bytes_from(whole_to)) if torn else b""  # which then stays its own
            offset = append_durably(self.csv_path, prefix + header + b"".join(lines)) + len(prefix) + len(header)
            if created:
                fsync_dir(self.data_dir)
            pairs = []
            for key, line in zip(keyed, lines):
                pairs.append((key, offset))
                offset += len(line)
            (keys.rebuild if created else keys.extend)(pairs, CsvState.of(self.csv_path))
        return fresh

    def rewrite(self, transform: Callable[[list[FeedbackRow]], list[FeedbackRow]]) -> list[FeedbackRow]:
        """Replace the CSV atomically with transform(rows); broken records stay verbatim where they were."""
        with self.locked():
            return self._replace([], transform)

    def repair(self, note: str = "") -> tuple[int, Path | None]:
        """Move every broken record into data/feedback-broken.csv (appended, kept) and drop it from the log.

        Returns (how many records moved, the kept file). The kept file is written and fsynced first, so a crash
        in between leaves a record in both places, never in neither. Temp files of image writes killed mid-way
        go too.
        """
        self.remove_stale_image_temps()
        with self.locked():
            snapshot = _SNAPSHOTS.current(self.csv_path) if self.csv_path.exists() else Snapshot(None, b"")
            problems = [(i, e) for i, e in enumerate(snapshot.entries) if isinstance(e, RowProblem)]
            if not problems:
                return 0, None
            kept = io.BytesIO()
            for index, problem in problems:
                raw = snapshot.raw(index)
                header = f"# moved aside at {now_utc()}{' by ' + note if note else ''}: {problem}\n"
                kept.write(header.encode("utf-8", "backslashreplace") + raw + record_closer(raw))
            append_durably(self.broken_path, kept.getvalue())
            self._replace([i for i, _ in problems], lambda rows: rows)
            return len(problems), self.broken_path

    def remove_stale_image_temps(self) -> int:
        """Delete the temp files of image writes killed mid-way (an hour old: images are written outside the lock)."""
        return remove_stale_temps(self.images_dir, ".*.tmp", STALE_IMAGE_TEMP_S)

    def _replace(self, drop: list[int], transform: Callable[[list[FeedbackRow]], list[FeedbackRow]]) -> list[FeedbackRow]:
        """Under the lock: write transform(rows) through a temp file and os.replace; entries at `drop` go."""
        remove_stale_temps(self.data_dir, f".{self.csv_path.name}.*.tmp")
        state = CsvState.of(self.csv_path)
        old = _SNAPSHOTS.current(self.csv_path) if state is not None else Snapshot(None, b"")
        self._keep_unknown_columns(old)
        new_rows = transform(list(old.rows))
        keys, _ = self._synced_keys(state)
        with gc_paused():
            built = Rewrite(old, plan(old, new_rows, drop), keys.key_by_offset() if state is not None else {})
            payload = built.payload()
            refuse_revived_records(built, payload)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.csv_path, payload)
        state = CsvState.of(self.csv_path)
        _SNAPSHOTS.put(self.csv_path, built.snapshot(payload, state))
        with gc_paused():
            keys.rebuild(built.pairs, state)
        return new_rows

    def _keep_unknown_columns(self, old: Snapshot) -> None:
        """A header with columns this log does not know (one added in a spreadsheet): a rewrite writes today's
        columns only, so the file as it was is kept first, as data/feedback-columns-<UTC time>.csv."""
        unknown = [name for name in old.columns or [] if name not in FIELDS]
        if unknown:
            kept = self.data_dir / f"feedback-columns-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.csv"
            write_atomic(kept, self.csv_path.read_bytes())
            LOG.warning("%s has columns this app does not keep (%s): the log as it was is saved as %s",
                        self.csv_path, ", ".join(unknown), kept)  # fmt: skip

    # --- the event-key index -----------------------------------------------------------------------
    def _keys(self) -> EventKeys:
        with _KEYS_GUARD:
            return _KEYS.setdefault(str(self.keys_path), EventKeys(self.keys_path, self.csv_path))

    def _synced_keys(self, state: CsvState | None) -> tuple[EventKeys, int]:
        """The index, brought up to the CSV's state (under the lock): a tail parse, or a rebuild when it must; and a
        byte offset at which a record begins, after which the log holds only whole rows or a torn last record."""
        keys = self._keys()
        if state is None or state.size == 0:
            return keys, 0
        status = keys.sync(state)
        whole_to = state.size  # "current": the index saw every byte, and appends write whole lines
        if status == "behind":  # appended by a writer that died before it updated the index, maybe mid-row
            whole_to = keys.covered.size
            pairs = [(event_key(r.event_text()), at) for r, at in rows_after(self.csv_path, whole_to, self._header())]
            keys.extend(pairs, state)
        elif status == "stale":
            snapshot = _SNAPSHOTS.current(self.csv_path)
            whole_to = snapshot.resume_point()[0]
            rows = [(e, span[0]) for e, span in zip(snapshot.entries, snapshot.spans) if isinstance(e, FeedbackRow)]
            keys.rebuild([(event_key(r.event_text()), at) for r, at in rows], state)
        return keys, whole_to

    def _logged(self, offsets: list[int], row: FeedbackRow) -> bool:
        return any((old := self._row_at(at)) is not None and row.same_event(old) for at in offsets)

    def _logged_as(self, row: FeedbackRow) -> FeedbackRow:
        """The logged row with the same event as row (under the lock, after append refused it)."""
        for at in self._keys().lookup()(event_key(row.event_text())):
            if (old := self._row_at(at)) is not None and row.same_event(old):
                return old
        return next(old for old in _SNAPSHOTS.current(self.csv_path).rows if row.same_event(old))

    def _row_at(self, offset: int) -> FeedbackRow | None:
        """The row whose record starts at this byte offset (None if what is there is not one)."""
        with open(self.csv_path, "rb") as handle:
            handle.seek(offset)
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
            try:
                record = next(csv.reader(text))
            except (StopIteration, csv.Error):
                return None
        row = validate_record(record, self._header())
        return row if isinstance(row, FeedbackRow) else None

    def _header(self) -> list[str]:
        with open(self.csv_path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return next(csv.reader([handle.readline().removeprefix("\ufeff")]), [])

    def _bytes_from(self, offset: int) -> bytes:
        with open(self.csv_path, "rb") as handle:
            return read_at(handle, max(0, os.fstat(handle.fileno()).st_size - offset), offset)

    # --- images --------------------------------------------------------------------------------
    def store_image(self, data: bytes, extension: str) -> tuple[str, str]:
        """Store the uploaded bytes once under images/<sha256>.<ext>; returns (sha256, path relative to data/)."""
        if not data:
            raise FeedbackError("the image is empty (0 bytes)")
        extension = extension.lower().lstrip(".")
        if not EXTENSION.match(extension):
            raise FeedbackError(f"the image extension {extension[:20]!r} is not a plain file extension")
        sha = hashlib.sha256(data).hexdigest()
        relative = f"images/{sha}.{extension}"
        target = self.data_dir / relative
        if not target.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, data)
            except OSError as exc:  # a read-only, full or broken data folder: nothing is logged
                raise NotWritable(f"the image cannot be stored in {target.parent}: {exc.strerror or exc}") from None
        return sha, relative

    def image_file(self, row: FeedbackRow) -> Path:
        """The stored image of a row, checked to be a file inside data/images; FeedbackError says why not."""
        if not IMAGE_PATH.match(row.image_path):
            raise FeedbackError(f"row {row.id[:40]}: image_path {row.image_path[:120]!r} is not images/<file name>")
        root = self.images_dir.resolve()
        path = (self.data_dir / row.image_path).resolve()
        if not path.is_relative_to(root):
            raise FeedbackError(f"row {row.id[:40]}: {row.image_path[:120]} leads outside {self.images_dir} (a link?)")
        if not path.is_file():
            raise FeedbackError(f"row {row.id[:40]}: the image {row.image_path[:120]} is missing")
        return path
