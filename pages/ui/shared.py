"""UI helpers shared by the pages: settings, cached models, the sidebar. The only UI-side model code."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from captioner.engine import engine_for, retire_engine
from captioner.feedback import FeedbackLog
from captioner.models import (
    ACTIVE, LoadedModel, ModelError, cache_key, free_memory, live_caption_spec, load_captioner, load_chat_model,
    resolve_spec,
)  # fmt: skip
from captioner.settings import Settings, SettingsError


def settings() -> Settings:
    """The app's Settings, from CAPTIONER_* variables; a bad value stops the page with its message."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        st.error(f"Configuration error: {exc}")
        st.stop()


_LAST_GOOD: dict[str, LoadedModel] = {}  # process-wide: the captioner every session was last served


@st.cache_resource(show_spinner="Loading the captioning model…", max_entries=1)
def _shared_captioner(spec_text: str, _settings: Settings, key: tuple) -> LoadedModel:
    # One copy for every session, keyed by spec, version, device, dtype and quantization; max_entries=1 frees
    # the previous version once a new one is swapped in. A version goes live only if it captions the check set.
    from captioner.caption import check_captioner

    loaded = load_captioner(spec_text, _settings, fallback=spec_text != ACTIVE)
    check_captioner(loaded)
    engine_for(loaded)  # its one caption engine, shared by every session, is running before anyone asks
    return loaded


def caption_model() -> LoadedModel:
    """The live captioner (models/active.json is read on every run, so a new version swaps in for everyone).
    A version that fails to load or to caption the check set leaves the last good model serving, with a warning."""
    config = settings()
    spec_text = live_caption_spec(config)
    try:
        loaded = _shared_captioner(spec_text, config, cache_key(resolve_spec(spec_text, "caption", config), config))
    except ModelError as exc:
        previous = _LAST_GOOD.get("caption")
        try:
            if previous is None:
                fallback = config.caption_model if config.caption_model != ACTIVE else "demo"
                previous = _shared_captioner(fallback, config, cache_key(resolve_spec(fallback, "caption", config), config))
        except ModelError as inner:
            st.error(f"The captioning model cannot be loaded: {exc}; nor can {fallback}: {inner}")
            st.stop()
        st.session_state["caption_model_warning"] = f"{exc}. Still captioning with {previous.name} ({previous.version})."
        return previous
    if (replaced := _LAST_GOOD.get("caption")) is not loaded:
        _LAST_GOOD["caption"] = loaded
        if replaced is not None:
            retire_engine(replaced)  # captions under way finish on the old version; new ones go to this one
        free_memory()  # the version this one replaced, once no caption in progress holds it
    st.session_state.pop("caption_model_warning", None)
    return loaded


@st.cache_resource(show_spinner="Loading the Q&A model…", max_entries=1)
def _shared_chat_model(spec_text: str, _settings: Settings, key: tuple) -> LoadedModel:
    # max_entries=1: loading another chat model drops this one for every session.
    return load_chat_model(spec_text, _settings)


def chat_model(picked: str) -> LoadedModel:
    """The picked Q&A model, shared by all sessions; if it fails to load, the last good one keeps answering."""
    config, state = settings(), st.session_state
    previous = state.get("chat_model_live")
    try:
        key = cache_key(resolve_spec(picked, "qa", config), config)
        loaded = _shared_chat_model(picked, config, key)
    except ModelError as exc:
        if previous in (None, picked):
            st.error(f"The Q&A model cannot be loaded: {exc}")
            st.stop()
        st.error(f"{picked} cannot be loaded, so {previous} keeps answering. {exc}")
        return chat_model(previous)
    if previous != picked:
        state.chat_model_live = picked
        free_memory()  # the model this one replaced in the cache
    return loaded


@st.cache_resource(show_spinner="Loading the search model…", max_entries=1)
def _shared_search_model(spec_text: str, _settings: Settings, key: tuple) -> LoadedModel:
    from captioner.embed import load_embedder

    return load_embedder(spec_text, _settings)


def search_model() -> LoadedModel:
    """The live CLIP model for search, shared by all sessions; the sidebar says when it is the demo fallback."""
    config = settings()
    try:
        key = cache_key(resolve_spec(config.search_model, "search", config), config)
        loaded = _shared_search_model(config.search_model, config, key)
    except ModelError as exc:
        st.error(f"The search model cannot be loaded: {exc}")
        st.stop()
    st.sidebar.caption(f"Search: `{loaded.name}` · version {loaded.version}")
    if loaded.fallback_reason:
        st.sidebar.warning(f"Fallback to the demo search model: {loaded.fallback_reason}", icon="⚠️")
    return loaded


@st.cache_resource(max_entries=4)
def _opened_index(root: str, generation: str | None, gallery: str, model: str, version: str):
    from captioner.index import load_index

    return load_index(Path(root), Path(gallery), model, version)


def gallery_index(embedder: LoadedModel):
    """The gallery's index as the last update left it (cached per generation); IndexProblem if unusable."""
    from captioner.index import current_generation, index_root

    config = settings()
    root = index_root(config.data_dir, config.gallery, embedder.name)
    return _opened_index(str(root), current_generation(root), str(config.gallery.resolve()), embedder.name, embedder.version)


def feedback_log() -> FeedbackLog:
    return FeedbackLog(settings().data_dir)


def sidebar_models() -> None:
    """Show which models are live, and say plainly when the app fell back to a demo model."""
    loaded = caption_model()
    with st.sidebar:
        st.subheader("Live models")
        st.markdown(f"**Captioning:** `{loaded.name}`")
        st.caption(f"version {loaded.version} · {loaded.device.type} · {str(loaded.dtype).removeprefix('torch.')}")
        if loaded.fallback_reason:
            st.warning(f"Fallback to the demo captioner: {loaded.fallback_reason}", icon="⚠️")
        if st.session_state.get("caption_model_warning"):
            st.warning(st.session_state["caption_model_warning"], icon="⚠️")


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
