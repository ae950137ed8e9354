"""Reviewing the feedback log: filter, sort and page the rows, statistics, and edits by id (the admin's selection: selection.py).

Filtering and sorting work on the log's cached snapshot and are remembered per snapshot, so paging through
100,000 rows costs the slice of one page. Every edit is one atomic rewrite under the log's lock and touches
exactly the ids it is given; given what the admin saw of them (as_seen), only those still as seen: a row another
session reviewed, edited or deleted meanwhile is left as it is, never overridden unseen.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from operator import attrgetter

from .feedback import STATUSES, FeedbackError, FeedbackLog, FeedbackRow, check_text, tidy_correction
from .feedback_snapshot import Snapshot
from .files import now_utc
from .selection import as_seen

SORTS = {
    "newest": "Newest first",
    "oldest": "Oldest first",
    "least_confident": "Least confident first",
    "most_confident": "Most confident first",
}
PAGE_SIZES = (25, 50, 100)


@dataclass(frozen=True)
class Filters:
    """What the admin table shows; empty means no restriction."""

    statuses: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    since: date | None = None
    until: date | None = None
    text: str = ""

    def keep(self, row: FeedbackRow) -> bool:
        return bool(self.select([row]))

    def select(self, rows: list[FeedbackRow]) -> list[FeedbackRow]:
        """The rows that pass, in order (one pass per active filter: the cheap ones first)."""
        if self.statuses:
            rows = [r for r in rows if r.status in self.statuses]
        if self.tasks:
            rows = [r for r in rows if r.task in self.tasks]
        if self.versions:
            rows = [r for r in rows if r.model_version in self.versions]
        if self.since is not None:
            rows = [r for r in rows if r.created_at[:10] >= self.since.isoformat()]
        if self.until is not None:
            rows = [r for r in rows if r.created_at[:10] <= self.until.isoformat()]
        if needle := self.text.strip().lower():
            rows = [r for r in rows if needle in f"{r.correction}\n{r.model_output}\n{r.prompt}\n{r.notes}".lower()]
        return rows


@dataclass(frozen=True)
class Page:
    """One page of the rows that match a query."""

    rows: list[FeedbackRow]
    number: int  # 1-based, clamped to the pages there are
    pages: int
    matching: int
    total: int


class _Memo:
    """A few results per snapshot (filtered orders, statistics), dropped when the log changes."""

    def __init__(self, size: int = 16):
        self.size, self.items, self.guard = size, OrderedDict(), threading.Lock()

    def get(self, key, compute):
        with self.guard:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = compute()
        with self.guard:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_MEMO = _Memo()


def matching_rows(snapshot: Snapshot, filters: Filters, sort: str = "newest") -> list[FeedbackRow]:
    """The rows that pass the filters, in the chosen order (remembered for this snapshot)."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    return _MEMO.get(("rows", snapshot.token, filters, sort), lambda: _sorted(filters.select(snapshot.rows), sort))


def page_of(snapshot: Snapshot, filters: Filters, sort: str, number: int, size: int) -> Page:
    """Page `number` (1-based; clamped) of the matching rows, `size` rows a page."""
    rows = matching_rows(snapshot, filters, sort)
    pages = max(1, -(-len(rows) // size))
    number = min(max(1, number), pages)
    return Page(rows[(number - 1) * size : number * size], number, pages, len(rows), len(snapshot.rows))


_WARMING: set[str] = set()
_WARMING_GUARD = threading.Lock()


def warm_up(log: FeedbackLog) -> None:
    """Start reading the log in a background thread (one per log at a time): the first read of a large log
    takes a second or more, which can pass while the admin types the password."""
    key = str(log.csv_path)
    with _WARMING_GUARD:
        if key in _WARMING:
            return
        _WARMING.add(key)

    def read() -> None:
        try:
            log.snapshot()
        except FeedbackError:
            pass  # the page reads again and shows the reason
        finally:
            with _WARMING_GUARD:
                _WARMING.discard(key)

    threading.Thread(target=read, name="feedback-warm-up", daemon=True).start()


def model_versions(snapshot: Snapshot) -> list[str]:
    """Every model version the log mentions, sorted."""
    return _MEMO.get(("versions", snapshot.token), lambda: sorted({row.model_version for row in snapshot.rows}))


def _sorted(rows: list[FeedbackRow], sort: str) -> list[FeedbackRow]:
    if sort in ("newest", "oldest"):  # by the moment, whatever offset a row was written with; file order breaks ties
        if all(row.created_at.endswith("+00:00") and len(row.created_at) == 25 for row in rows):
            ordered = sorted(rows, key=attrgetter("created_at"))  # one format, one offset: the text sorts as time
        else:
            ordered = [rows[i] for i in sorted(range(len(rows)), key=lambda i: _moment(rows[i].created_at))]
        return ordered[::-1] if sort == "newest" else ordered
    scored = [row for row in rows if row.score]
    scored.sort(key=lambda row: float(row.score), reverse=sort == "most_confident")
    return scored + [row for row in rows if not row.score]  # rows without a score (older ones) come last


def _moment(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def statistics(rows: list[FeedbackRow]) -> dict:
    """Rows by status, the captioner's correction rate per model version (share of caption rows that are not
    confirmations; Q&A and style rows come from other models), rows per day and status."""
    by_version: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_day: dict[str, Counter] = defaultdict(Counter)
    by_status = Counter()
    for row in rows:
        if row.task == "caption":
            counts = by_version[row.model_version or "(unknown)"]
            counts[0] += 1
            counts[1] += row.correction != row.model_output
        per_day[row.created_at[:10]][row.status] += 1
        by_status[row.status] += 1
    return {
        "by_status": {status: by_status[status] for status in STATUSES},
        "correction_rate": {version: round(c / n, 4) for version, (n, c) in sorted(by_version.items())},
        "rows_per_version": {version: n for version, (n, _) in sorted(by_version.items())},
        "per_day": {day: dict(counts) for day, counts in sorted(per_day.items())},
    }


def snapshot_statistics(snapshot: Snapshot) -> dict:
    """statistics() of a snapshot's rows (remembered for this snapshot)."""
    return _MEMO.get(("stats", snapshot.token), lambda: statistics(snapshot.rows))


def changed_since(snapshot: Snapshot, ids: set[str], seen: dict[str, tuple]) -> dict[str, str]:
    """Of these ids, those another session changed or deleted since the admin saw them, each with what it is now."""
    now = {row.id: row for row in snapshot.rows if row.id in ids}
    changed = {}
    for row_id in ids:
        row = now.get(row_id)
        if row is None:
            changed[row_id] = "deleted"
        elif row_id in seen and as_seen(row) != seen[row_id]:
            changed[row_id] = f"now {row.status}" + (f", changed by {row.reviewer}" if row.reviewer else "")
    return changed


def _unchanged(row: FeedbackRow, seen: dict[str, tuple] | None) -> bool:
    return seen is None or row.id not in seen or as_seen(row) == seen[row.id]


def set_status(
    log: FeedbackLog, ids: set[str], status: str, reviewer: str, corrections: dict[str, str] | None = None,
    seen: dict[str, tuple] | None = None,
) -> int:  # fmt: skip
    """Approve or reject (or reopen) rows by id, with the corrections typed for any of them (by id) in the same
    atomic rewrite, so an approved row carries the text the admin typed; only rows still as seen (when given).
    Returns how many rows changed."""
    if status not in STATUSES:
        raise FeedbackError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    check_text("reviewer name", reviewer, allow_empty=False)  # a review nobody signed cannot be asked about
    ids, changed, moment = set(ids), [], now_utc()
    typed = {row_id: text for row_id, text in (corrections or {}).items() if row_id in ids}
    for text in typed.values():
        check_text("correction", text, allow_empty=False)

    def transform(rows):
        out = []
        for row in rows:
            text = tidy_correction(row.task, typed[row.id], row.model_output) if row.id in typed else row.correction
            if row.id in ids and _unchanged(row, seen) and (row.status != status or text != row.correction):
                row = row._replace(status=status, correction=text, reviewed_at=moment, reviewer=reviewer)
                changed.append(row.id)
            out.append(row)
        return out

    log.rewrite(transform)
    return len(changed)


def edit_corrections(log: FeedbackLog, corrections: dict[str, str], reviewer: str, seen: dict[str, tuple] | None = None) -> int:
    """Replace the correction text of rows by id (only rows still as seen, when given); returns how many changed."""
    for text in corrections.values():
        check_text("correction", text, allow_empty=False)
    check_text("reviewer name", reviewer, allow_empty=False)  # a review nobody signed cannot be asked about
    changed, moment = [], now_utc()

    def transform(rows):
        out = []
        for row in rows:
            text = tidy_correction(row.task, corrections[row.id], row.model_output) if row.id in corrections else None
            if text is not None and text != row.correction and _unchanged(row, seen):
                row = row._replace(correction=text, reviewed_at=moment, reviewer=reviewer)
                changed.append(row.id)
            out.append(row)
        return out

    log.rewrite(transform)
    return len(changed)


def delete_rows(log: FeedbackLog, ids: set[str], seen: dict[str, tuple] | None = None) -> int:
    """Remove rows by id (only rows still as seen, when given; their stored images stay: other rows may share
    them); returns how many went."""
    ids, gone = set(ids), []

    def transform(rows):
        kept = []
        for row in rows:
            (gone.append(row.id) if row.id in ids and _unchanged(row, seen) else kept.append(row))
        return kept

    log.rewrite(transform)
    return len(gone)
