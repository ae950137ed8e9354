"""The caption page's uploads, kept for the session: leaving the page (Find similar, the chat) loses none of them."""

from __future__ import annotations

import streamlit as st

from captioner.images import UPLOAD_TYPES, ImageInput

state = st.session_state


def uploaded_images() -> list[ImageInput]:
    """The uploader, and every image uploaded in this session and not removed, in upload order. Streamlit empties an
    uploader whose page was left, so the files are kept here; the uploader's x or Clear uploads removes them."""
    state.setdefault("uploads", {})  # file id -> ImageInput: each file is read and hashed once
    key = f"uploader-{state.setdefault('uploader_round', 0)}"  # a new key is a new, empty uploader
    files = st.file_uploader("Upload images", type=UPLOAD_TYPES, accept_multiple_files=True, key=key,
                             on_change=_drop_removed, args=(key,))  # fmt: skip
    for file in files or []:
        if file.file_id not in state.uploads:
            state.uploads[file.file_id] = ImageInput(file.name, file.getvalue())
    state.uploader_shows = {file.file_id for file in files or []}
    earlier = len(state.uploads) - len(state.uploader_shows)
    if earlier:
        note, clear = st.columns([3, 1])
        note.caption(f"{earlier} image(s) uploaded earlier in this session are still here.")
        if clear.button("Clear uploads"):
            state.uploads = {}
            state.uploader_round += 1
            st.rerun()
    return list(state.uploads.values())


def _drop_removed(key: str) -> None:
    """The uploader changed: the files it showed and no longer holds were removed by the person (not by a page switch,
    which changes nothing here)."""
    now = {file.file_id for file in state.get(key) or []}
    for file_id in state.get("uploader_shows", set()) - now:
        state.uploads.pop(file_id, None)
