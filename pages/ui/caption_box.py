"""A caption card's text box: what a person typed and has not saved stays, per picture, across reruns and pages."""

from __future__ import annotations

import hashlib

import streamlit as st

from captioner.caption import CaptionResult

state = st.session_state


def box_key(result: CaptionResult) -> str:
    """The box's widget key: its picture and name, not its caption, so a setting that changes the caption (beams,
    max tokens, the prefix, a new model version) does not make a new, empty box."""
    return "edit-" + hashlib.sha1(f"{result.source.sha256}|{result.name}".encode()).hexdigest()[:16]


def caption_box(column, result: CaptionResult, shown: str) -> str:
    """The card's box, showing `shown` (the caption, or the text saved for it) unless the person typed other text
    there and has not saved it: that text stays. Returns the box's text."""
    drafts = state.setdefault("caption_drafts", {})  # box key -> (text the page gave the box, text it held)
    key = box_key(result)
    given, held = drafts.get(key, (None, None))
    current = state[key] if key in state else held  # Streamlit drops a box's state on a page that does not draw it
    state[key] = current if current is not None and current != given else shown  # set before the box is made
    edited = column.text_area("Caption", key=key)
    drafts[key] = (shown, edited)
    return edited


def show_in_box(result: CaptionResult, text: str) -> None:
    """Put text saved elsewhere (a copy of the picture, a look-alike's fix) in the box, as given, not as typed."""
    state[box_key(result)] = text
    state.setdefault("caption_drafts", {})[box_key(result)] = (text, text)


def forget_drafts(results: list[CaptionResult]) -> None:
    """Drop the boxes of pictures no longer on the page, and their text (set by this module, Streamlit keeps it)."""
    present = {box_key(result) for result in results if result.ok}
    drafts = state.setdefault("caption_drafts", {})
    for key in [key for key in drafts if key not in present]:
        del drafts[key]
        state.pop(key, None)
