"""UI helpers shared by the pages: settings, cached models, the sidebar. The only UI-side model code."""

from __future__ import annotations

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
