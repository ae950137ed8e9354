"""Caption page: upload images, read their captions, correct the wrong ones."""

from pages import inside_the_app

inside_the_app()  # first: a deep link on a fresh server is rerun inside the app before this page loads anything

import random
from collections import Counter
from contextlib import closing

import streamlit as st

from captioner.caption import CaptionResult, GenerationOptions, caption_stream, format_captions
from captioner.demo.quality import demo_inputs
from captioner.feedback import FeedbackError, tidy_correction
from captioner.images import ImageInput
from pages.ui import shared
from pages.ui import styles
from pages.ui.text import plain
from pages.ui import similar as fix_similar
from pages.ui import results as kept
from pages.ui import uploads
from pages.ui.caption_box import caption_box, forget_drafts, show_in_box

state = st.session_state
state.setdefault("samples", [])
state.setdefault("captions", {})
state.setdefault("thumbnails", {})
state.setdefault("saved", {})  # picture key (results.picture_key) -> (kind, message, the text logged)

st.title("Caption images")
loaded = shared.caption_model()
uploaded = uploads.uploaded_images()
make, clear = st.columns(2)
if make.button("Make demo samples", help="Four fresh images from the demo world"):
    state.samples = demo_inputs(4, seed=random.randrange(2**31))[0]
if state.samples and clear.button("Clear demo samples"):
    state.samples = []

for key, default in {"gen_beams": 3, "gen_max_new_tokens": 30, "gen_min_new_tokens": 0, "gen_repetition_penalty": 1.0}.items():
    state.setdefault(key, default)  # defaults here, not in the widgets: their values are kept across pages (shared.py)
with st.expander("Generation settings"):
    options = GenerationOptions(
        num_beams=st.slider("Beams", 1, 10, key="gen_beams"),
        max_new_tokens=st.slider("Max new tokens", 1, 100, key="gen_max_new_tokens"),
        min_new_tokens=st.slider("Min new tokens", 0, 50, key="gen_min_new_tokens"),
        repetition_penalty=st.slider("Repetition penalty", 1.0, 2.0, step=0.05, key="gen_repetition_penalty"),
        prompt=st.text_input("Caption prefix (optional)", placeholder="a photograph of", key="gen_prefix"),
    )
try:
    options.validate()
except ValueError as exc:
    st.error(f"Generation settings: {plain(exc)}")
    st.stop()
style, rewriter = styles.picker()

inputs = list({(item.name, item.sha256): item for item in uploaded + state.samples}.values())  # each image once
if not inputs:
    kept.forget(state.captions, state.thumbnails, [])  # the last image removed: the chat and search pages forget it too
    forget_drafts([])  # and its box's typing: uploaded again, it starts from its caption
    st.info("Upload images, or make a few demo samples, to get captions.")
    st.stop()


def result_key(item: ImageInput) -> tuple:
    return item.sha256, item.name, loaded.version, options


todo = [item for item in inputs if result_key(item) not in state.captions]
progress = st.empty()  # in every run: the cards below keep their places (a box keeps its focus) whether this run captions or not


def caption_todo(bar) -> None:
    """Caption todo, keeping each result as it comes: a run cut short (a file added, a click, Stop) keeps those done."""
    outcomes = Counter()  # captioned, and the files that could not be read, apart: they add up to what is shown

    def report() -> None:  # also the engine's heartbeat: a rerun asked for meanwhile stops the wait here
        bar.progress(outcomes.total() / len(todo), kept.progress_text(outcomes, len(todo)))

    thumbnails = kept.needs_thumbnails(state.thumbnails, todo)
    with closing(caption_stream(loaded, todo, options, thumbnails=thumbnails, heartbeat=report)) as stream:
        for item, result in zip(todo, stream):
            kept.remember(state.captions, state.thumbnails, result_key(item), item, result)
            outcomes[kept.outcome(result)] += 1
            report()


if todo:
    caption_todo(progress.progress(0.0, text=f"Captioning {len(todo)} image(s)…"))
    progress.empty()
results: list[CaptionResult] = [kept.recall(state.captions, result_key(item)) for item in inputs]
kept.forget(state.captions, state.thumbnails, inputs)


def log_feedback(result: CaptionResult, correction: str, key: str) -> None:
    """Write the row to disk first; only then say it was saved. A correction then looks for look-alikes to fix."""
    saved_key = kept.picture_key(result)
    try:
        row, created = shared.feedback_log().record(
            result.source.data, result.extension, task="caption", model_output=result.caption,
            correction=correction, prompt=options.prompt, model=result.model,
            model_version=result.model_version, settings=options.as_dict(), score=result.score,
        )  # fmt: skip
    except (FeedbackError, OSError) as exc:
        state.saved[saved_key] = ("error", f"Not saved: {plain(exc)}", None)
        return
    kind = "Confirmation" if row.is_confirmation else "Correction"
    said = f"{kind} saved." if created else f"{kind} already in the log (saved before, here or in another session); nothing added."
    state.saved[saved_key] = ("success", said, row.correction)
    if not row.is_confirmation:  # look-alikes whose caption this session's person already confirmed or fixed are left out
        unsettled = [r for r in results if r.ok and saved_text(r) is None]
        fix_similar.offer(key, row, result, unsettled, loaded, options)
    if any(r.ok and r is not result and kept.picture_key(r) == saved_key for r in results):
        state.setdefault("caption_box_updates", {})[saved_key] = row.correction
        st.rerun()  # the same picture under another name, maybe drawn above: its card shows the saved text too


def saved_text(result: CaptionResult) -> str | None:
    """The caption text this session logged for the result (a correction, or the caption confirmed), if any."""
    saved = state.saved.get(kept.picture_key(result)) if result.ok else None
    return saved[2] if saved and saved[0] == "success" else None


box_updates = state.pop("caption_box_updates", None) or {}  # picture key -> text saved from another card
for result in results:
    if not result.ok:
        st.error(f"{plain(result.name)}: {plain(result.error)}")
        continue
    key, saved_key = kept.card_key(result), kept.picture_key(result)
    if saved_key in box_updates:  # a look-alike fixed, or a copy of this picture saved, on another card:
        show_in_box(result, box_updates[saved_key])  # its box shows it
    with st.container(border=True):
        picture, text = st.columns([1, 2])
        shown_text = saved_text(result) or result.caption  # what was saved, or the model's caption
        picture.image(result.thumbnail, caption=plain(result.name), alt=f"{result.name}: {shown_text}")  # for screen readers
        text.caption(f"{result.model} · version {result.model_version}")  # names the app gave, not data
        if result.score is not None:
            text.caption(f"confidence {round(result.score, 2) + 0.0:.2f} (mean token log-probability; 0 is certain)")
        edited = caption_box(text, result, shown_text)  # or what is typed
        save, confirm, similar = text.columns(3)
        if save.button("Save correction", key=f"save-{key}", type="primary"):
            log_feedback(result, edited, key)
        fixed = saved_text(result) not in (None, result.caption)  # confirming now would log the wrong caption over it
        if confirm.button("Looks right", key=f"ok-{key}", disabled=fixed,
                          help="A correction is saved: change the text and press Save correction" if fixed else None):
            log_feedback(result, result.caption, key)
        if similar.button("Find similar", key=f"similar-{key}"):
            state.search_query, state.search_mode = result.source, "Captioned image"
            st.switch_page("pages/search.py")
        if saved_key in state.saved:
            kind, message, logged = state.saved[saved_key]
            if kind == "success" and tidy_correction("caption", edited, result.caption) != logged:
                text.caption("Edited since it was saved: press Save correction to log the new text.")
            else:
                (text.success if kind == "success" else text.error)(message)
        fix_similar.show(key, text, options)
        styles.show(result, style, rewriter, text, key)

forget_drafts(results)
rows = [
    {"path": r.name, "caption": r.caption, "score": r.score, "error": r.error, "model": r.model,
     "model_version": r.model_version, "correction": saved_text(r),
     **(styles.styled_column(r, style, rewriter, kept.card_key(r)) if r.ok else {})}
    for r in results
]  # fmt: skip
csv_button, jsonl_button = st.columns(2)
csv_button.download_button("Download captions (CSV)", format_captions(rows, "csv"), "captions.csv", "text/csv")
jsonl_button.download_button("Download captions (JSONL)", format_captions(rows, "jsonl"), "captions.jsonl", "application/jsonl")
