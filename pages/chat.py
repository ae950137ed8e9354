"""Chat page: a conversation about one image, with any configured Q&A model."""

from pages import inside_the_app

inside_the_app()  # first: a deep link on a fresh server is rerun inside the app before this page loads anything

import hashlib
from collections import Counter

import streamlit as st

from captioner.chat import STOPPED, ChatError, Turn, answer, same_again
from captioner.feedback import FeedbackError
from captioner.images import UPLOAD_TYPES, ImageError, ImageInput, decode
from pages.ui import shared
from pages.ui.text import plain

state = st.session_state
state.setdefault("chats", {})  # image sha256 -> list[Turn]
state.setdefault("chat_saved", {})  # image sha256 -> {answer key: (kind, message)}

st.title("Chat about an image")
config = shared.settings()
picked = st.sidebar.selectbox("Q&A model", config.chat_choices, key="chat_model_pick")
loaded = shared.chat_model(picked)
state.chat_model_live = picked  # the caption page's `detailed` asks it too (the widget's key is gone there)
where = f"server {loaded.version}" if loaded.device is None else f"version {loaded.version} · {loaded.device.type}"
st.sidebar.caption(f"Answering: `{loaded.name}` · {where}")

session_images: dict[str, ImageInput] = {}  # sha256 -> image: two photos that share a file name are both here
for item in [r.source for r in state.get("captions", {}).values() if r.ok] + state.get("samples", []):
    session_images.setdefault(item.sha256, item)
names = Counter(item.name for item in session_images.values())
labels = {sha: item.name if names[item.name] == 1 else f"{item.name} · {sha[:8]}" for sha, item in session_images.items()}


def uploaded_picture() -> ImageInput | None:
    """The uploaded picture, kept while the person visits other pages (Streamlit empties an uploader that a run does
    not draw, and the conversation would seem lost); the uploader's x, or another upload, replaces it."""
    upload = st.file_uploader("Upload an image", type=UPLOAD_TYPES, key="chat_upload", on_change=uploader_changed)
    if upload is not None and state.get("chat_upload_id") != upload.file_id:
        state.chat_uploaded, state.chat_upload_id = ImageInput(upload.name, upload.getvalue()), upload.file_id
    return state.get("chat_uploaded")


def uploader_changed() -> None:
    """An upload is the latest choice; an empty uploader means the person removed the file (a page switch calls nothing)."""
    state.chat_from = "upload"
    if state.get("chat_upload") is None:
        state.chat_uploaded = state.chat_upload_id = None


uploaded = uploaded_picture()
if state.get("chat_pick") not in ["—", *session_images]:  # a picture since removed from the caption page
    state.pop("chat_pick", None)
choice = st.selectbox("…or pick one captioned in this session", ["—", *session_images], disabled=not session_images,
                      format_func=lambda sha: labels.get(sha, sha), key="chat_pick",
                      on_change=lambda: state.update(chat_from="pick"))  # fmt: skip
chosen = session_images.get(choice)
source = chosen if chosen and (uploaded is None or state.get("chat_from") == "pick") else uploaded  # the latest choice
if source is None:
    st.info("Choose an image first: upload one, or caption some on the Caption page.")
    st.stop()
try:
    if state.get("chat_picture", (None,))[0] != source.sha256:  # decoded once while chosen: a rerun decodes nothing
        state.chat_picture = (source.sha256, decode(source, max_side=768))
    picture = state.chat_picture[1]
except ImageError as exc:
    if source is uploaded:  # said while the uploader shows it; not kept for the next visit, where it has no x
        state.chat_uploaded = state.chat_upload_id = None
    st.error(plain(exc))
    st.stop()
captioned = {r.source.sha256: r.caption for r in state.get("captions", {}).values() if r.ok}
described = f"{source.name}: {captioned[source.sha256]}" if source.sha256 in captioned else f"The image to ask about: {source.name}"
st.image(picture.image, caption=plain(source.name), width=280, alt=described)  # alt: what a screen reader says
history: list[Turn] = state.chats.setdefault(source.sha256, [])


def ask(question: str, earlier: list[Turn], replacing: Turn | None = None) -> None:
    """Stream one answer onto the page, then keep the turn in this image's history; replacing: the turn Regenerate
    draws again (sampled, not the likeliest answer).

    Until its answer is complete, a new question's turn is in the history as stopped, with what has come of its
    answer: Stop, or a click or a question sent meanwhile, starts the next run at once, beside this one (Streamlit's
    fast reruns), and that run shows the question and the answer as far as it came. A redraw cut short leaves the
    answer it was to replace."""
    chats = state.chats  # the session's own dict: once a run is stopped, every st call (state too) stops it again
    kept = None if replacing is not None else [*earlier, Turn(question, "", loaded.name, loaded.version, (STOPPED,))]
    if kept is not None:
        chats[source.sha256] = kept
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        try:
            with answer(loaded, picture.image, earlier, question, sample=replacing is not None) as stream:  # a rerun frees the model
                for notice in stream.notices:
                    st.info(plain(notice))
                slot = st.empty()
                for _ in stream:  # as text, never Markdown: a model's links, layout and HTML show as written
                    slot.text(stream.text, width="stretch")
                    if kept is not None:  # what was shown, no more: the next call here raises once the run is stopped
                        kept[-1] = stream.turn(question, stopped=True)
        except ChatError as exc:
            if kept is not None:  # a question that failed is not kept (the error says why)
                chats[source.sha256] = earlier
            st.error(plain(exc))
            return
    turn = stream.turn(question)
    state.chats[source.sha256] = [*earlier, turn]
    if replacing is not None and turn.answer == replacing.answer:  # said once, under the answer
        state.chat_note = (source.sha256, same_again(loaded))
    st.rerun()


def save_correction(key: str, turn: Turn, correction: str) -> None:
    """Write the qa row to disk first; only then say it was saved."""
    saved = state.chat_saved.setdefault(source.sha256, {})  # this image's conversation's notices: Clear drops them
    try:
        _, created = shared.feedback_log().record(
            source.data, picture.extension, task="qa", prompt=turn.question, model_output=turn.answer,
            correction=correction, model=turn.model, model_version=turn.model_version,
        )  # fmt: skip
    except (FeedbackError, OSError) as exc:  # a refused text, or a full or read-only disk
        saved[key] = ("error", f"Not saved: {plain(exc)}")
        return
    saved[key] = ("success", "Correction saved." if created else "Already saved; nothing added.")


pending = state.pop("chat_pending", None)
# Regenerate keeps the last turn in the history until its new answer is in: a failed redraw loses nothing.
redrawing = bool(history) and bool(pending) and pending[0] == source.sha256
for index, turn in enumerate(history[:-1] if redrawing else history):
    key = hashlib.sha1(f"{source.sha256}|{index}|{turn.question}|{turn.answer}".encode()).hexdigest()[:16]
    with st.chat_message("user"):
        st.text(turn.question)
    with st.chat_message("assistant"):
        for notice in turn.notices:
            st.info(plain(notice))
        if turn.answer:
            st.text(turn.answer, width="stretch")  # as written: no link, no Markdown, spaces kept
        else:
            st.caption("(no answer)")
        st.caption(f"{turn.model} · version {turn.model_version}")  # names the app gave, not data
        with st.expander("Correct this answer"):
            fixed = st.text_input("Correct answer", value=turn.answer, key=f"fix-{key}")
            if st.button("Save correction", key=f"save-qa-{key}"):
                save_correction(key, turn, fixed)
            kind, message = state.chat_saved.get(source.sha256, {}).get(key, (None, None))
            if message:
                (st.success if kind == "success" else st.error)(message)

note = state.pop("chat_note", None)
# Read before the buttons are drawn (the box stays pinned at the bottom): a new answer then streams right under the
# conversation, and Regenerate and Clear come back once it is complete, never sitting between two turns.
question = st.chat_input("Ask about the image")
if redrawing:
    ask(pending[1], history[:-1], replacing=history[-1])
elif question is not None and question.strip():
    ask(question.strip(), history)
elif question is not None:
    st.warning("The question is empty: type something to ask.")
elif note and note[0] == source.sha256 and history:
    st.info(plain(note[1]))
regenerate, clear = st.columns(2)
if history and regenerate.button("Regenerate the last answer"):
    state.chat_pending = (source.sha256, history[-1].question)
    st.rerun()
if history and clear.button("Clear the conversation"):
    state.chats[source.sha256] = []
    state.chat_saved.pop(source.sha256, None)
    st.rerun()
