"""UI helpers shared by the pages: settings, cached models, the sidebar. The only UI-side model code."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from captioner.feedback import FeedbackLog
from captioner.models import (
    LoadedModel, ModelError, cache_key, free_memory, load_captioner, load_chat_model, resolve_spec,
)  # fmt: skip
from captioner.settings import Settings, SettingsError


def settings() -> Settings:
    """The app's Settings, from CAPTIONER_* variables; a bad value stops the page with its message."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        st.error(f"Configuration error: {exc}")
        st.stop()


@st.cache_resource(show_spinner="Loading the captioning model…", max_entries=2)
def _shared_captioner(spec_text: str, _settings: Settings, key: tuple) -> LoadedModel:
    # One copy per key for every session; the key carries spec, version, device, dtype and quantization.
    return load_captioner(spec_text, _settings)


def caption_model() -> LoadedModel:
    """The live captioner, loaded once and shared by all sessions; a load failure stops the page clearly."""
    config = settings()
    try:
        spec = resolve_spec(config.caption_model, "caption", config)
        return _shared_captioner(config.caption_model, config, cache_key(spec, config))
    except ModelError as exc:
        st.error(f"The captioning model cannot be loaded: {exc}")
        st.stop()


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
