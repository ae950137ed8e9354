"""The admin's selection in the review table: ticked rows and typed corrections, by id, across pages and reruns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .feedback import FeedbackRow


@dataclass
class Selection:
    """The rows an admin ticked and the corrections they typed, by id, across pages, filters and reruns.

    A table shows one page; its widget key (table_key) names exactly the ids it shows and the selection's
    generation, so ticks and edits made on one table can never land on another row. Any change the admin did
    not make in the table (an action, Clear) starts a new generation: the next table starts from this state.
    When the rows under a table change before the admin's edit reaches the page (another writer logged a
    correction), the next run shows a new table: catch_up() folds the edit made on the old one, by its ids.
    """

    ids: set[str] = field(default_factory=set)
    edits: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    shown_key: str = ""  # the table last shown, and its rows as it showed them: (id, ticked, correction, logged)
    shown: tuple[tuple[str, bool, str, str], ...] = ()
    seen: dict[str, tuple] = field(default_factory=dict)  # as_seen() of the rows on the last table, and of ticked ones
    before: dict[str, tuple] = field(default_factory=dict)  # ... as of the table the admin acted on (the run before)

    def table_key(self, rows: list[FeedbackRow]) -> str:
        digest = hashlib.blake2b("\n".join(row.id for row in rows).encode(), digest_size=8).hexdigest()
        return f"review-{self.generation}-{digest}"

    def show(self, key: str, rows: list[FeedbackRow]) -> None:
        """Remember the table about to be shown under key, as this selection lays it out, and what the admin saw of
        its rows and of the ticked ones (a press in this run was made on the table of the run before)."""
        self.before = self.seen
        self.seen = {i: v for i, v in self.seen.items() if i in self.ids or i in self.edits} | {r.id: as_seen(r) for r in rows}
        self.shown_key = key
        self.shown = tuple((row.id, row.id in self.ids, self.edits.get(row.id, row.correction), row.correction) for row in rows)

    def catch_up(self, table_edits: dict | None) -> None:
        """Fold the edits a table recorded ({"edited_rows": {position: {column: value}}}) into the selection:
        the table last shown, which this run no longer shows; its rows are taken by the ids it showed."""
        changes = (table_edits or {}).get("edited_rows") or {}
        by_position = {int(position): columns for position, columns in changes.items()}
        ticked, corrections = [], []
        for position, (_, tick, text, _) in enumerate(self.shown):
            columns = by_position.get(position, {})
            ticked.append(bool(columns.get("select", tick)))
            value = columns.get("correction", text)
            corrections.append("" if value is None else str(value))
        self._fold(self.shown, ticked, corrections)

    def take(self, rows: list[FeedbackRow], ticked: list[bool], corrections: list[str]) -> None:
        """Fold what the table returned for these rows (same order) into the selection and the pending edits."""
        self._fold([(row.id, False, "", row.correction) for row in rows], ticked, corrections)

    def _fold(self, rows, ticked: list[bool], corrections: list[str]) -> None:
        for (row_id, _, _, logged), tick, text in zip(rows, ticked, corrections, strict=True):
            (self.ids.add if tick else self.ids.discard)(row_id)
            if text != logged:
                self.edits[row_id] = text
            else:
                self.edits.pop(row_id, None)

    def tick(self, rows: list[FeedbackRow]) -> None:
        """Tick these rows (all shown, all matching), remembering them as they are now, and start a fresh table;
        call catch_up() first with the table the admin last saw, so nothing done on it is lost."""
        self.ids.update(row.id for row in rows)
        self.seen.update((row.id, as_seen(row)) for row in rows)
        self.generation += 1
        self.shown_key, self.shown = "", ()

    def reset(self) -> None:
        """Nothing selected, nothing edited, and a fresh table (the last one's edits are done with)."""
        self.done(set(self.edits))

    def untick(self) -> None:
        """Nothing selected, and a fresh table; typed corrections stay pending."""
        self.done(set())

    def discard_edits(self) -> None:
        """Every typed correction dropped (the log's text shows again), and a fresh table; ticks stay."""
        self.edits.clear()
        self.generation += 1
        self.shown_key, self.shown = "", ()

    def done(self, acted_on: set[str]) -> None:
        """After an action: nothing selected, and a fresh table; typed corrections of rows the action did not take
        (not ticked) stay pending, to be saved or acted on later."""
        self.ids.clear()
        for row_id in acted_on:
            self.edits.pop(row_id, None)
        self.generation += 1
        self.shown_key, self.shown = "", ()


def as_seen(row: FeedbackRow) -> tuple[str, str, str]:
    """What an action needs unchanged since the admin saw a row: its status, correction and last review."""
    return row.status, row.correction, row.reviewed_at
