"""The caption page's "fix similar": after a correction, the look-alikes making the same mistake, each confirmed
with one click as its own feedback row linked to the correction (captioner/similar.py finds them)."""

from __future__ import annotations

import streamlit as st

from captioner.engine import CaptionResult
from captioner.feedback import FeedbackError, FeedbackRow
from captioner.images import ImageError
from captioner.index import IndexProblem
from captioner.models import LoadedModel
from captioner.options import GenerationOptions
from captioner.similar import Candidate, confirm, find_similar
from pages.ui import shared
from pages.ui.results import picture_key
from pages.ui.text import plain

state = st.session_state


def offer(key: str, row: FeedbackRow, result: CaptionResult, session: list[CaptionResult], captioner: LoadedModel,
          options: GenerationOptions) -> None:  # fmt: skip
    """Find the look-alikes of a just-corrected image (this session's and the gallery's) and keep them to show."""
    offers = state.setdefault("similar", {})
    embedder = shared.search_model()
    try:
        index = shared.gallery_index(embedder)
    except IndexProblem:
        index = None  # no usable gallery index: this session's images are still searched
    try:
        with st.spinner("Looking for look-alikes with the same mistake…"):
            found = find_similar(
                embedder, captioner, result.source, row.model_output, row.correction, session, index, options,
                follow_links=shared.settings().gallery_follow_links, vectors=state.setdefault("similar_vectors", {}),
            )  # fmt: skip
    except (ImageError, OSError) as exc:
        offers[key] = (row, [], f"Look-alikes could not be searched: {plain(exc)}")
        return
    offers[key] = (row, found, None)


def show(key: str, column, options: GenerationOptions) -> None:
    """The look-alikes found for this image's correction, each with its proposed caption and a button to confirm it."""
    if key not in state.get("similar", {}):
        return
    original, found, problem = state.similar[key]
    if problem:
        column.warning(problem)
        return
    if not found:
        column.caption("No look-alike in this session or the gallery makes the same mistake.")
        return
    saved = state.setdefault("similar_saved", {})
    with column.expander(f"Fix {len(found)} look-alike(s) with the same mistake", expanded=True):
        for candidate in found:
            fix_key = f"{key}-{candidate.result.source.sha256[:16]}"
            picture, words = st.columns([1, 3])
            if candidate.result.thumbnail is not None:
                picture.image(candidate.result.thumbnail, caption=plain(candidate.name),
                              alt=f"{candidate.name}: {candidate.result.caption}")  # what a screen reader says
            words.text(f"{candidate.name} · {candidate.origin} · similarity {candidate.similarity:.2f}")
            words.text(f"now:      {candidate.result.caption}\nproposed: {candidate.proposed}")
            if fix_key in saved:
                kind, message = saved[fix_key]
                (words.success if kind == "success" else words.error)(message)
            if (fix_key not in saved or saved[fix_key][0] == "error") and words.button("Apply the fix", key=f"fix-{fix_key}"):
                _confirm(original, candidate, options, fix_key)
                st.rerun()


def _confirm(original: FeedbackRow, candidate: Candidate, options: GenerationOptions, fix_key: str) -> None:
    """Write the linked row to disk first; only then say it was saved."""
    try:
        row, created = confirm(shared.feedback_log(), candidate, original, options)
    except (FeedbackError, OSError) as exc:
        state.similar_saved[fix_key] = ("error", f"Not saved: {plain(exc)}")
        return
    state.similar_saved[fix_key] = ("success", "Fix saved, linked to your correction." if created else "Already saved; nothing added.")
    if candidate.origin == "session":  # its own card says it is fixed, shows the fix, and its download carries it
        key = picture_key(candidate.result)  # and so do its copies under other names
        state.saved[key] = ("success", "Fixed like your correction of a look-alike (Apply the fix).", row.correction)
        state.setdefault("caption_box_updates", {})[key] = row.correction
