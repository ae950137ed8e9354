"""Caption styles on the caption page: the style picker, and each image's styled caption streamed in beside
its plain one, with its own correction (logged as task `style`, never as BLIP training data)."""

from __future__ import annotations

import hashlib
import time

import streamlit as st

from captioner.caption import CaptionResult
from captioner.feedback import FeedbackError, tidy_correction
from captioner.images import ImageError, decode
from captioner.models import LoadedModel, ModelError
from captioner.restyle import detail_facts, restyle
from captioner.styles import CUSTOM, DETAILED, PLAIN, STYLES, Style, StyleError, style_for, style_notice
from pages.ui import shared
from pages.ui.text import plain

state = st.session_state
RETRY_AFTER_S = 60  # a rewriter that failed is not asked again for this long (unless the person asks)


def picker() -> tuple[Style, LoadedModel | None]:
    """The style picker; and the rewriter when a style other than plain is picked (None if it cannot load)."""
    name = st.selectbox("Caption style", [*STYLES, CUSTOM], key="caption_style",
                        help="plain: the captioner's own caption; the others rewrite it with a chat model")  # fmt: skip
    instruction = None
    if name == CUSTOM:
        instruction = st.text_input("Your style instruction", key="caption_style_instruction",
                                    placeholder="Rewrite the caption as a haiku.")  # fmt: skip
        if not instruction.strip():
            st.info("Type a style instruction to restyle the captions.")
            return style_for(PLAIN), None
    try:
        style = style_for(None if name == CUSTOM else name, instruction)
    except StyleError as exc:
        st.error(f"Caption style: {plain(exc)}")
        return style_for(PLAIN), None
    if style.plain:
        return style, None
    try:
        served = shared.style_model()
    except ModelError as exc:
        st.error(f"The caption rewriter cannot be loaded, so captions stay plain: {plain(exc)}")
        return style, None
    rewriter = served.model
    st.caption(f"Rewriting with `{rewriter.name}` · version {rewriter.version}")
    shared.show_fallback(served, st)
    notice = style_notice(rewriter, style)
    if notice:
        st.info(plain(notice))
    return style, rewriter


def show(result: CaptionResult, style: Style, rewriter: LoadedModel | None, column, key: str) -> None:
    """The result's caption in the style: streamed as plain text the first time, then editable and correctable."""
    if style.plain or rewriter is None or not result.caption:
        return
    done = state.setdefault("styled", {})
    found = (result.source.sha256, result.caption, style, rewriter.name, rewriter.version)
    styled_key = _styled_key(key, found)
    if found not in done:
        failure = _recent_failure(rewriter)
        if failure:  # the rewriter failed a moment ago: say so, rather than wait out its timeout at every rerun
            column.error(f"{plain(style.label)} caption: {plain(failure)}")
            if column.button("Try the style again", key=f"retry-styled-{styled_key}"):
                state.rewriter_failed = None
                st.rerun()
            return
        slot = column.empty()
        try:
            with restyle(rewriter, result.caption, style, _facts(result, style)) as stream:
                for _ in stream:
                    slot.text(stream.text)  # as text: a hashtag must not turn into a heading
        except StyleError as exc:
            state.rewriter_failed = (rewriter.name, rewriter.version, time.monotonic(), str(exc))
            slot.error(f"{plain(style.label)} caption: {plain(exc)}")
            return
        done[found] = stream.text.strip()
        slot.empty()
    edited = column.text_area(f"Caption, {plain(style.label)}", value=done[found], key=f"styled-{styled_key}")
    if column.button("Save styled correction", key=f"save-styled-{styled_key}"):
        _log(result, style, rewriter, done[found], edited, styled_key)
    if styled_key in state.get("styled_saved", {}):
        kind, message, logged = state.styled_saved[styled_key]
        if kind == "success" and tidy_correction("style", edited, done[found]) != logged:
            column.caption("Edited since it was saved: press Save styled correction to log the new text.")
        else:
            (column.success if kind == "success" else column.error)(message)


def _recent_failure(rewriter: LoadedModel) -> str | None:
    """Why this rewriter failed in the last RETRY_AFTER_S in this session, if it did."""
    failed = state.get("rewriter_failed")
    if failed and failed[:2] == (rewriter.name, rewriter.version) and time.monotonic() - failed[2] < RETRY_AFTER_S:
        return failed[3]
    return None


def styled_column(result: CaptionResult, style: Style, rewriter: LoadedModel | None, key: str) -> dict:
    """{"styled": text, "styled_correction": the text saved for it or None} for the downloads once this result's
    styled caption exists (key: the result's key on the caption page); else nothing."""
    if style.plain or rewriter is None or not result.ok:
        return {}
    found = (result.source.sha256, result.caption, style, rewriter.name, rewriter.version)
    saved = state.get("styled_saved", {}).get(_styled_key(key, found))
    return {"styled": state.get("styled", {}).get(found), "styled_correction": saved[2] if saved and saved[0] == "success" else None}


def _styled_key(key: str, found: tuple) -> str:
    return f"{key}-{hashlib.sha1(repr(found[2:]).encode()).hexdigest()[:10]}"


def _facts(result: CaptionResult, style: Style) -> list[tuple[str, str]]:
    """For `detailed`: a few answers about the image from the live Q&A model (none if it cannot load)."""
    if style.name != DETAILED:
        return []
    config = shared.settings()
    spec = state.get("chat_model_live") or config.qa_model
    try:
        qa = shared.chat_model_quietly(spec)
        return detail_facts(qa, [decode(result.source, max_side=768).image])[0]
    except (ModelError, ImageError, StyleError) as exc:
        st.warning(f"The detailed caption goes without the Q&A model's answers: {plain(exc)}")
        return []


def _log(result: CaptionResult, style: Style, rewriter: LoadedModel, styled: str, correction: str, key: str) -> None:
    """Write the style row to disk first; only then say it was saved."""
    saved = state.setdefault("styled_saved", {})
    try:
        row, created = shared.feedback_log().record(
            result.source.data, result.extension, task="style", prompt=style.label, model_output=styled,
            correction=correction, model=rewriter.name, model_version=rewriter.version,
            settings={"caption": result.caption, "caption_model": result.model, "instruction": style.instruction},
        )  # fmt: skip
    except (FeedbackError, OSError) as exc:
        saved[key] = ("error", f"Not saved: {plain(exc)}", None)
        return
    saved[key] = ("success", "Styled correction saved." if created else "Already saved; nothing added.", row.correction)
