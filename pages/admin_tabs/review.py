"""Review tab: filter, sort and page the log; tick rows (kept by id) and approve, reject, delete or edit them."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.admin_tabs._ui import failure_note, outbox, show_notes, thumbnails
from captioner.feedback import STATUSES, TASKS, FeedbackError, FeedbackLog, FeedbackRow
from captioner.feedback_snapshot import Snapshot
from captioner.selection import Selection
from captioner.review import (
    PAGE_SIZES, SORTS, Filters, changed_since, delete_rows, edit_corrections, matching_rows, model_versions, page_of,
    set_status,
)  # fmt: skip

COLUMNS = ["select", "image", "task", "prompt", "model_output", "correction", "status", "score", "model_version",
           "created_at", "reviewer", "id"]  # fmt: skip


def render(log: FeedbackLog, snapshot: Snapshot) -> None:
    state = st.session_state
    selection: Selection = state.setdefault("review_selection", Selection())
    reviewer = st.text_input("Your name (recorded as reviewer)", value="admin")
    filters, sort, size = _filter_controls(snapshot)
    if state.get("review_query") != (filters, sort, size):  # another question: start again on its first page
        state.review_query, state.review_page = (filters, sort, size), 1
    page = page_of(snapshot, filters, sort, state.get("review_page", 1), size)
    state.review_page = page.number
    first = (page.number - 1) * size + 1
    st.caption(
        f"Rows {first if page.rows else 0}–{first + len(page.rows) - 1 if page.rows else 0} of {page.matching} "
        f"matching ({page.total} in the log) · page {page.number} of {page.pages}"
    )
    key = selection.table_key(page.rows)
    if selection.shown_key and selection.shown_key != key:  # the rows moved under the last table: keep its edits
        selection.catch_up(state.get(selection.shown_key))
    table = _table(log, page.rows, selection)
    selection.show(key, page.rows)
    edited = st.data_editor(
        table, hide_index=True, key=key, width="stretch",
        disabled=[c for c in COLUMNS if c not in ("select", "correction")],
        column_config={"select": st.column_config.CheckboxColumn("✓"), "image": st.column_config.ImageColumn("image"),
                       "score": st.column_config.NumberColumn("score", format="%.3f")},
    )  # fmt: skip
    selection.take(page.rows, [bool(v) for v in edited["select"]], ["" if v is None else str(v) for v in edited["correction"]])
    _pager(page.number, page.pages)
    _tick_all(selection, page.rows, matching_rows(snapshot, filters, sort))  # remembered: page_of just made it
    _actions(log, snapshot, selection, {row.id for row in page.rows}, reviewer)


def _filter_controls(snapshot: Snapshot) -> tuple[Filters, str, int]:
    left, middle, right = st.columns(3)
    statuses = left.multiselect("Status", STATUSES, default=["pending"])
    tasks = middle.multiselect("Task", TASKS)
    versions = right.multiselect("Model version", model_versions(snapshot))
    text, period, order, size = st.columns([3, 3, 2, 1])
    needle = text.text_input("Text contains")
    since, until = ([*period.date_input("Created between (UTC dates)", value=(), format="YYYY-MM-DD")] + [None, None])[:2]
    sort = order.selectbox("Order", list(SORTS), format_func=SORTS.get)
    page_size = size.selectbox("Rows a page", PAGE_SIZES)
    return Filters(tuple(statuses), tuple(tasks), tuple(versions), since, until, needle), sort, page_size


def _table(log: FeedbackLog, rows: list[FeedbackRow], selection: Selection) -> pd.DataFrame:
    """The page's rows as the table shows them: this selection's ticks and typed corrections laid over the log."""
    images = thumbnails([_image(log, row) for row in rows])
    return pd.DataFrame([{
        "select": row.id in selection.ids, "image": image, "task": row.task, "prompt": row.prompt,
        "model_output": row.model_output, "correction": selection.edits.get(row.id, row.correction),
        "status": row.status, "score": float(row.score) if row.score else None, "model_version": row.model_version,
        "created_at": row.created_at, "reviewer": row.reviewer, "id": row.id,
    } for row, image in zip(rows, images)], columns=COLUMNS)  # fmt: skip


def _image(log: FeedbackLog, row: FeedbackRow):
    try:
        return log.image_file(row)
    except FeedbackError:
        return None  # the row's image is missing or its path is refused: no thumbnail, the row still shows


def _pager(number: int, pages: int) -> None:
    def go(to: int) -> None:
        st.session_state.review_page = to

    back, where, forward = st.columns([1, 2, 1])
    back.button("← Previous page", disabled=number <= 1, on_click=go, args=(number - 1,))
    where.number_input("Page", 1, pages, key="review_page", label_visibility="collapsed")
    forward.button("Next page →", disabled=number >= pages, on_click=go, args=(number + 1,))


def _tick_all(selection: Selection, shown: list[FeedbackRow], matching: list[FeedbackRow]) -> None:
    """Tick every row on this page, or every row the filters match: the rows as this run shows them are bound to
    the button (the lists, not the snapshot and its bytes), so a press ticks exactly what the admin saw, even when
    the log changed before the press arrived."""
    here, there = st.columns(2)
    here.button(f"Tick all {len(shown)} on this page", disabled=not shown or all(r.id in selection.ids for r in shown),
                on_click=_tick, args=(selection, shown))  # fmt: skip
    if len(matching) > len(shown):
        there.button(f"Tick all {len(matching)} matching", on_click=_tick, args=(selection, matching))


def _tick(selection: Selection, rows: list[FeedbackRow]) -> None:
    selection.catch_up(st.session_state.get(selection.shown_key))  # what the admin did on the table last shown stays
    selection.tick(rows)


def _actions(log: FeedbackLog, snapshot: Snapshot, selection: Selection, on_page: set[str], reviewer: str) -> None:
    notes = outbox("admin_notes")
    chosen, edits, seen = set(selection.ids), dict(selection.edits), dict(selection.before)
    hidden = len(chosen - on_page)
    st.caption(f"{len(chosen)} selected" + (f" ({hidden} not on this page)" if hidden else "") + f" · {len(edits)} correction(s) edited")
    typed = len(chosen & set(edits))  # an approval or rejection takes the corrections typed in its rows with it
    with_typed = f", with {typed} edited correction(s)" if typed else ""
    approve, reject, reopen, delete, save, untick, discard = st.columns(7)
    actions = {
        approve: (f"Approve selected ({len(chosen)})", not chosen, chosen,
                  lambda: f"Approved {set_status(log, chosen, 'approved', reviewer, edits, seen)} row(s){with_typed}."),
        reject: (f"Reject selected ({len(chosen)})", not chosen, chosen,
                 lambda: f"Rejected {set_status(log, chosen, 'rejected', reviewer, edits, seen)} row(s){with_typed}."),
        reopen: (f"Reopen selected ({len(chosen)})", not chosen, chosen,  # an approval or rejection made by mistake
                 lambda: f"Reopened {set_status(log, chosen, 'pending', reviewer, edits, seen)} row(s) as pending{with_typed}."),
        delete: (f"Delete selected ({len(chosen)})", not chosen, chosen, lambda: f"Deleted {delete_rows(log, chosen, seen)} row(s)."),
        save: (f"Save edits ({len(edits)})", not edits, set(edits),
               lambda: f"Saved {edit_corrections(log, edits, reviewer, seen)} correction(s)."),
    }  # fmt: skip
    # neither writes; unticking keeps the corrections typed ("Clear selection" dropped them with the ticks)
    for column, label, disabled, change in [(untick, f"Untick all ({len(chosen)})", not chosen, selection.untick),
                                            (discard, f"Discard edits ({len(edits)})", not edits, selection.discard_edits)]:  # fmt: skip
        if column.button(label, disabled=disabled):
            change()
            st.rerun()
    for column, (label, disabled, acted_on, act) in actions.items():
        if column.button(label, disabled=disabled):
            others = changed_since(snapshot, acted_on, seen)
            try:  # no Streamlit call from the write to the append: nothing can stop the script in between
                note = act()  # on disk (atomic rewrite under the lock) before the page says so
                selection.done(acted_on)  # nothing stays ticked, on any page; edits of rows not acted on stay
            except (FeedbackError, OSError) as exc:
                note = failure_note(exc)
            if note and others:  # another session got there first: theirs stands, and the admin is told
                note += (f" {len(others)} row(s) changed in another session since you saw them were left as they are "
                         f"({', '.join(sorted(set(others.values())))}): look at them again.")  # fmt: skip
            notes.append(note)
            st.rerun()
    show_notes(notes)
