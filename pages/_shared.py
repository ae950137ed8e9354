"""UI helpers shared by the pages: settings, cached models, the sidebar. The only UI-side model code."""

from __future__ import annotations

import streamlit as st

from captioner.feedback import FeedbackLog
from captioner.models import LoadedModel, ModelError, cache_key, load_captioner, resolve_spec
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
