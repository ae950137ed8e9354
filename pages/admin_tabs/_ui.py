"""Table thumbnails, failure notes and outcome boxes for the admin tabs (plain text for every page is
pages/ui/text.py)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import streamlit as st

from captioner.feedback import FeedbackError
from captioner.images import decode, read_file
from pages.ui.text import plain

FAILED = ("Not saved:", "Could not finish:", "Not changed:")  # how a note that reports a failure starts


def outbox(name: str) -> list:
    """A list in the session state that an action's outcome is appended to, in place. Assigning to the session
    state is a point where Streamlit stops the script for a rerun queued meanwhile (the table's late message after
    a click): an outcome assigned after a write of seconds was lost, and the rows acted on stayed ticked for the
    next action. An append to a list already there is no such point."""
    return st.session_state.setdefault(name, [])


def show_notes(notes: list) -> None:
    """Say each outcome once: a failure as an error, anything else as a success."""
    while notes:
        note = notes.pop(0)
        (st.error if note.startswith(FAILED) else st.success)(plain(note))


def failure_note(exc: FeedbackError | OSError) -> str:
    """What the admin reads when an action fails: the log's own reason, or the file and the system's reason
    (a full disk, a read-only folder) with a hint, since the change may have been written before the failure."""
    if isinstance(exc, FeedbackError):
        return f"{FAILED[0]} {exc}"
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{FAILED[1]} {where}{exc.strerror or exc}. Reload the page: the table shows what the log holds now."


@lru_cache(maxsize=5000)  # process-wide, safe to call from worker threads (unlike st.cache_data)
def _thumbnail(path: str, mtime_ns: int) -> str | None:
    try:
        image = decode(read_file(Path(path)), max_side=256).image
    except Exception:  # ImageError, or whatever a hostile file makes a decoder raise: a thumbnail is decoration
        return None
    image.thumbnail((72, 72))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _one(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return _thumbnail(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


def thumbnails(paths: list[Path | None]) -> list[str | None]:
    """Small JPEG data URIs of stored images (paths already checked to be inside data/images; None: no image),
    decoded a few at a time: a first look at a page of large photos should not take a second per row."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="thumbnail") as pool:
        return list(pool.map(_one, paths))
