"""The one model-loading policy (app, CLI, fine-tune): which model serves a kind, and why when it is not the one
asked for.

- A spec asked for by name is that model; if it cannot be loaded, the model last served for the kind keeps
  serving (in the app; a fresh CLI process has none, so it is an error there).
- The configured model (CAPTIONER_*_MODEL, or for captions the version models/active.json names) falls back:
  to the model last served, then (captions) to the newest version that loads and passes the check set, then
  to the default model, then, for a hub model that cannot be had, to the embedded demo model.
- A captioner version (models/vNNNN) serves only if it captions the check set.
The model last served per kind and models folder is remembered for the process: the "last good" one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import registry
from .embed import load_open_clip
from .engine import retire_engine
from .golive import check_captioner
from .models import (
    ACTIVE, DEMO, LoadedModel, ModelError, ModelSpec, SpecError, cache_key, default_caption_spec, free_memory,
    live_caption_spec, load_blip, load_chat_model_at, load_style_at, resolve_spec, version_spec,
)  # fmt: skip
from .settings import Settings

LOADERS = {"caption": load_blip, "qa": load_chat_model_at, "style": load_style_at, "search": load_open_clip}
WHAT = {"caption": "captioner", "qa": "Q&A model", "style": "caption rewriter", "search": "search model"}
DOING = {"caption": "captioning", "qa": "answering", "style": "rewriting", "search": "searching"}
VARIABLE = {kind: f"CAPTIONER_{kind.upper()}_MODEL" for kind in LOADERS}  # where a configured spec comes from
DEMO_FALLBACK, LAST_GOOD, OTHER_VERSION, DEFAULT = "demo", "last good", "other version", "default"
RETRY_FAILED_S = 30  # a model that failed to load (a server down) is tried again this long after

_LAST_GOOD: dict[tuple[str, str], LoadedModel] = {}
_GUARDS = {kind: threading.Lock() for kind in LOADERS}  # one load at a time per kind


@dataclass(frozen=True)
class Served:
    """The model that serves a request for a kind, and why it is not the one asked for (None: it is)."""

    model: LoadedModel
    asked: str
    fallback_reason: str | None = None
    fallback: str | None = None  # demo | last good | other version | default: which rule picked it
    at: float = field(default_factory=time.monotonic)  # when it was decided: a failed load is worth trying again

    def worth_retrying(self) -> bool:
        """A model asked for failed to load and the last good one stands in: after RETRY_FAILED_S, try again (the
        server may be back); a model that loaded, or the demo for a hub model not cached, is kept."""
        return self.fallback == LAST_GOOD and time.monotonic() - self.at > RETRY_FAILED_S


def configured_spec(kind: str, settings: Settings) -> str:
    """The spec that serves a kind when none is asked for by name."""
    if kind == "caption":
        return live_caption_spec(settings)
    return {"qa": settings.qa_model, "style": settings.style_model, "search": settings.search_model}[kind]


def load_spec(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Load one resolved spec with its kind's loader; a captioner version must also caption the check set."""
    loaded = LOADERS[spec.kind](spec, settings)
    if spec.source == "version":
        check_captioner(loaded)
    return loaded


def serve(kind: str, settings: Settings, asked: str | None = None) -> Served:
    """The model for a kind: `asked` by name (no fallback but the last good one), else the configured one with the
    fallbacks above. ModelError when nothing can serve."""
    explicit = asked is not None
    text = asked if explicit else configured_spec(kind, settings)
    key = (kind, str(Path(settings.models_dir).resolve()))
    with _GUARDS[kind]:
        previous = _LAST_GOOD.get(key)
        try:
            spec = resolve_spec(text, kind, settings)
            same = previous is not None and cache_key(previous.spec, settings) == cache_key(spec, settings)
            if same and spec.source in ("version", "demo", "local"):
                return Served(previous, text)  # the very model already serving: no second copy
            served = Served(load_spec(spec, settings), text)
        except ModelError as exc:
            served = _fallback(kind, text, settings, exc, previous, explicit)
        _remember(key, served.model)
        return served


def _fallback(kind: str, text: str, settings: Settings, exc: ModelError, previous: LoadedModel | None, explicit: bool) -> Served:
    if previous is not None:
        reason = f"{_sentence(exc)} Still {DOING[kind]} with {previous.name} ({previous.version})."
        return Served(previous, text, reason, LAST_GOOD)
    if explicit:
        raise exc
    if kind == "caption" and text == ACTIVE:
        return _other_caption_version(settings, exc)
    return _demo_instead(kind, text, settings, exc)


def _sentence(exc: Exception) -> str:
    """The error as a sentence: a full stop added unless it ends with one (transformers' messages often do)."""
    said = str(exc).rstrip()
    return said if said.endswith((".", "?", "!")) else f"{said}."


def _other_caption_version(settings: Settings, exc: ModelError) -> Served:
    """The live version cannot serve: the newest other version that loads and passes the check set, else the default."""
    state = registry.active_state(settings.models_dir)
    live, default = state.version, default_caption_spec(settings)
    if live is None and state.problem is None:  # no version is live: `active` was the default, and that failed
        served = _demo_instead("caption", default, settings, exc)
        return Served(served.model, ACTIVE, served.fallback_reason, served.fallback)
    for version in reversed(registry.list_versions(settings.models_dir)):
        if version.name == live:
            continue
        try:
            loaded = load_spec(version_spec(version.path, version.name), settings)
        except ModelError:
            continue
        reason = f"{_sentence(exc)} Captioning with {version.name}, the newest version that loads and passes the check set."
        return Served(loaded, ACTIVE, reason, OTHER_VERSION)
    try:
        loaded = load_spec(resolve_spec(default, "caption", settings), settings)
    except ModelError as inner:
        served = _demo_instead("caption", default, settings, inner)
        return Served(served.model, ACTIVE, f"{exc}; captioning with {default} instead; {served.fallback_reason}", served.fallback)
    return Served(loaded, ACTIVE, f"{exc}; captioning with the default model {default} instead", DEFAULT)


def _demo_instead(kind: str, text: str, settings: Settings, exc: ModelError) -> Served:
    """A hub model that cannot be had gives way to the embedded demo model; anything else (a folder that is not
    there, a name that is no model) is an error that names the variable it came from."""
    try:
        hub = resolve_spec(text, kind, settings).source == "hub"
    except ModelError:
        hub = False
    if not hub or isinstance(exc, SpecError):
        raise ModelError(f"{exc} ({VARIABLE[kind]}={text})") from exc
    loaded = load_spec(resolve_spec(DEMO, kind, settings), settings)
    return Served(loaded, text, f"{exc}; using the embedded demo {WHAT[kind]} instead", DEMO_FALLBACK)


def _remember(key: tuple[str, str], loaded: LoadedModel) -> None:
    """Keep the model just served as the kind's last good one; a replaced captioner's engine finishes and retires."""
    replaced = _LAST_GOOD.get(key)
    if replaced is loaded:
        return
    _LAST_GOOD[key] = loaded
    if replaced is not None:
        if key[0] == "caption":
            retire_engine(replaced)  # captions under way finish on the old model; new ones go to this one
        free_memory()  # the replaced model, once nothing in progress holds it


def serving_key(kind: str, settings: Settings, asked: str | None = None) -> tuple:
    """What decides serve()'s answer without loading anything: a cache key for callers that keep Served objects."""
    state = registry.active_state(settings.models_dir) if kind == "caption" and asked is None else None
    return (kind, asked, configured_spec(kind, settings), state, str(settings.models_dir),
            settings.device, settings.dtype, settings.quantize)  # fmt: skip


def forget(kind: str | None = None) -> None:
    """Drop the remembered last good models (all kinds, or one): a later serve() starts afresh."""
    for key in [k for k in _LAST_GOOD if kind in (None, k[0])]:
        dropped = _LAST_GOOD.pop(key, None)
        if dropped is not None and key[0] == "caption":
            retire_engine(dropped)  # its worker thread would otherwise keep the model alive
