"""UI helpers shared by the pages: settings, cached models, the sidebar. The only UI-side model code."""

from __future__ import annotations

import logging

import streamlit as st

from pages.ui.text import plain
from captioner.engine import engine_for
from captioner.feedback import FeedbackLog
from captioner.loading import DEMO_FALLBACK, WHAT, Served, serve, serving_key
from captioner.models import LoadedModel, ModelError
from captioner.settings import Settings, SettingsError, unknown_variables

LOG = logging.getLogger("captioner.app")


def settings() -> Settings:
    """The app's Settings, from CAPTIONER_* variables; a bad value stops the page with its message."""
    try:
        config = Settings.from_env()
    except SettingsError as exc:
        st.error(f"Configuration error: {plain(exc)}")
        st.stop()
    _say_unknown_variables(tuple(unknown_variables()))
    return config


@st.cache_resource(show_spinner=False)
def _say_unknown_variables(notes: tuple[str, ...]) -> None:
    """Each misspelled CAPTIONER_* variable once in the server log, where the operator who set it looks."""
    for note in notes:
        LOG.warning(note)


# One cache per kind (max_entries=1 frees the model a new one replaces), keyed by what decides the answer; the
# policy (fallbacks, the last good model, the check set) is captioner.loading's, the pages only show its reason.
@st.cache_resource(show_spinner="Loading the captioning model…", max_entries=1)
def _served_captioner(asked: None, _settings: Settings, key: tuple) -> Served:
    served = serve("caption", _settings)
    engine_for(served.model)  # its one caption engine, shared by every session, is running before anyone asks
    return served


@st.cache_resource(show_spinner="Loading the Q&A model…", max_entries=1)
def _served_chat_model(asked: str | None, _settings: Settings, key: tuple) -> Served:
    return serve("qa", _settings, asked)


@st.cache_resource(show_spinner="Loading the search model…", max_entries=1)
def _served_search_model(asked: None, _settings: Settings, key: tuple) -> Served:
    return serve("search", _settings)


@st.cache_resource(show_spinner="Loading the caption rewriter…", max_entries=1)
def _served_rewriter(asked: None, _settings: Settings, key: tuple) -> Served:
    return serve("style", _settings)


def _served(kind: str, cached, asked: str | None = None) -> Served:
    config = settings()
    try:
        served = cached(asked, config, serving_key(kind, config, asked))
        if served.worth_retrying():  # the model asked for failed a while ago: its server may be back
            cached.clear()
            served = cached(asked, config, serving_key(kind, config, asked))
        return served
    except ModelError as exc:
        st.error(f"The {WHAT[kind]} cannot be loaded: {plain(exc)}")
        st.stop()


def show_fallback(served: Served, place=st.sidebar, loud: bool = False) -> None:
    """Say, as plain text, why the model serving is not the one asked for (an error when loud)."""
    if not served.fallback_reason:
        return
    if served.fallback == DEMO_FALLBACK:
        place.warning(f"Fallback to the demo {WHAT[served.model.spec.kind]}: {plain(served.fallback_reason)}", icon="⚠️")
    elif loud:
        place.error(plain(served.fallback_reason))
    else:
        place.warning(plain(served.fallback_reason), icon="⚠️")


def caption_model() -> LoadedModel:
    """The live captioner (models/active.json is read on every run, so a new version swaps in for everyone)."""
    return _served("caption", _served_captioner).model


def chat_model(picked: str) -> LoadedModel:
    """The picked Q&A model, shared by all sessions; if it fails to load, the last good one keeps answering."""
    config = settings()
    served = _served("qa", _served_chat_model, None if picked == config.qa_model else picked)
    show_fallback(served, loud=served.fallback != DEMO_FALLBACK)
    return served.model


def chat_model_quietly(picked: str) -> LoadedModel:
    """The Q&A model chat_model() serves for this pick, leaving the page alone; ModelError if none can answer."""
    config = settings()
    asked = None if picked == config.qa_model else picked
    return _served_chat_model(asked, config, serving_key("qa", config, asked)).model


def style_model() -> Served:
    """The caption rewriter (CAPTIONER_STYLE_MODEL, or its fallback), shared by all sessions; ModelError if none."""
    config = settings()
    return _served_rewriter(None, config, serving_key("style", config))


def search_model() -> LoadedModel:
    """The live CLIP model for search, shared by all sessions; the sidebar says when it is a fallback."""
    served = _served("search", _served_search_model)
    st.sidebar.caption(f"Search: `{served.model.name}` · version {served.model.version}")
    show_fallback(served)
    return served.model


@st.cache_resource(max_entries=4)
def _open_index_of(root: str, gallery: str, model: str, version: str) -> dict:
    """The one opened generation kept for an index: {generation: index}. One per index, not one per generation:
    each update's new generation replaces the last (a flat one holds all its vectors in memory)."""
    return {}


def gallery_index(embedder: LoadedModel):
    """The gallery's index as the last update left it (opened once per generation); IndexProblem if unusable."""
    from captioner.index import current_generation, index_root, load_index

    config = settings()
    root, gallery = index_root(config.data_dir, config.gallery, embedder.name), config.gallery.resolve()
    held = _open_index_of(str(root), str(gallery), embedder.name, embedder.version)
    generation = current_generation(root)
    index = held.get(generation) if generation is not None else None
    if index is None:
        index = load_index(root, gallery, embedder.name, embedder.version)
        held.clear()  # a session searching the old one keeps its own reference until it is done
        held[generation] = index
    return index


def feedback_log() -> FeedbackLog:
    return FeedbackLog(settings().data_dir)


def sidebar_models() -> None:
    """Show which models are live, and say plainly when the app fell back (and why)."""
    served = _served("caption", _served_captioner)
    loaded = served.model
    with st.sidebar:
        st.subheader("Live models")
        shown = f"{loaded.version} (fine-tuned, from models/)" if loaded.spec.source == "version" else loaded.name
        st.markdown(f"**Captioning:** `{shown}`")  # a version served as `active` by its own name
        st.caption(f"version {loaded.version} · {loaded.device.type} · {str(loaded.dtype).removeprefix('torch.')}")
    show_fallback(served)


# Widgets whose value a person sets once and expects to find again after visiting another page (Streamlit forgets
# a widget's state when a run does not draw it; a key written back on every run is kept).
KEPT_WIDGETS = ("gen_beams", "gen_max_new_tokens", "gen_min_new_tokens", "gen_repetition_penalty", "gen_prefix",
                "caption_style", "caption_style_instruction", "chat_model_pick", "chat_pick", "search_mode", "search_top_k",
                "search_cutoff", "search_text", "search_gallery_filter", "search_gallery_pick")  # fmt: skip


def keep_widget_values() -> None:
    """Called on every run, whatever the page: the KEPT_WIDGETS' values survive pages that do not draw them."""
    for key in KEPT_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


_GENERATED_PASSWORD: list[str] = []


def admin_password() -> str:
    """CAPTIONER_ADMIN_PASSWORD, else st.secrets["admin_password"], else one made up at start and printed to
    the server log (as notebook servers print their token)."""
    config = settings()
    if config.admin_password:
        return config.admin_password
    try:
        if "admin_password" in st.secrets:
            return str(st.secrets["admin_password"])
    except Exception:  # no secrets.toml at all: Streamlit raises rather than returning nothing
        pass
    if not _GENERATED_PASSWORD:
        import secrets

        _GENERATED_PASSWORD.append(secrets.token_urlsafe(12))
        print(f"\n  Admin page password (set CAPTIONER_ADMIN_PASSWORD to choose one): {_GENERATED_PASSWORD[0]}\n", flush=True)
    return _GENERATED_PASSWORD[0]
