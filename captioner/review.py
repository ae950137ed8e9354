"""Reviewing the feedback log: filters, statistics, and edits (each one atomic rewrite under the log's lock)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import date

from .feedback import STATUSES, FeedbackError, FeedbackLog, FeedbackRow, check_text, now_utc


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
        day = row.created_at[:10]
        needle = self.text.strip().lower()
        return (
            (not self.statuses or row.status in self.statuses)
            and (not self.tasks or row.task in self.tasks)
            and (not self.versions or row.model_version in self.versions)
            and (self.since is None or day >= self.since.isoformat())
            and (self.until is None or day <= self.until.isoformat())
            and (not needle or any(needle in field.lower() for field in (row.correction, row.model_output, row.prompt, row.notes)))
        )


def statistics(rows: list[FeedbackRow]) -> dict:
    """Rows by status, correction rate per model version (share not confirmations), rows per day and status."""
    by_version: dict[str, list[FeedbackRow]] = defaultdict(list)
    per_day: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        by_version[row.model_version or "(unknown)"].append(row)
        per_day[row.created_at[:10]][row.status] += 1
    return {
        "by_status": {status: sum(row.status == status for row in rows) for status in STATUSES},
        "correction_rate": {
            version: round(sum(not r.is_confirmation for r in group) / len(group), 4) for version, group in sorted(by_version.items())
        },
        "rows_per_version": {version: len(group) for version, group in sorted(by_version.items())},
        "per_day": {day: dict(counts) for day, counts in sorted(per_day.items())},
    }


def set_status(log: FeedbackLog, ids: set[str], status: str, reviewer: str) -> int:
    """Approve or reject (or reopen) rows by id; returns how many changed."""
    if status not in STATUSES:
        raise FeedbackError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    changed = []

    def transform(rows):
        out = []
        for row in rows:
            if row.id in ids and row.status != status:
                row = replace(row, status=status, reviewed_at=now_utc(), reviewer=reviewer)
                changed.append(row.id)
            out.append(row)
        return out

    log.rewrite(transform)
    return len(changed)


def edit_corrections(log: FeedbackLog, corrections: dict[str, str], reviewer: str) -> int:
    """Replace the correction text of rows by id; returns how many changed."""
    for text in corrections.values():
        check_text("correction", text, allow_empty=False)
    changed = []

    def transform(rows):
        out = []
        for row in rows:
            if row.id in corrections and corrections[row.id] != row.correction:
                row = replace(row, correction=corrections[row.id], reviewed_at=now_utc(), reviewer=reviewer)
                changed.append(row.id)
            out.append(row)
        return out

    log.rewrite(transform)
    return len(changed)


def delete_rows(log: FeedbackLog, ids: set[str]) -> int:
    """Remove rows by id (their stored images stay: other rows may share them); returns how many went."""
    before = []
    log.rewrite(lambda rows: before.extend(rows) or [row for row in rows if row.id not in ids])
    return sum(row.id in ids for row in before)
