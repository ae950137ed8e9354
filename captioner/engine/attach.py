"""One engine per loaded captioner, process-wide: the app's sessions, the CLI and finetune all find it here."""

from __future__ import annotations

import threading
import weakref

from .engine import CaptionEngine, close_all
from .limits import EngineLimits

_ENGINES: dict[int, CaptionEngine] = {}  # id(LoadedModel) -> its engine; an entry goes when the model is collected
_LOCK = threading.RLock()  # reentrant: a finalizer may run in a thread that holds it


def engine_for(loaded, limits: EngineLimits | None = None) -> CaptionEngine:
    """The engine of this LoadedModel, started on first use (with these limits, else the device's defaults);
    every caller of the same model shares it."""
    with _LOCK:
        engine = _ENGINES.get(id(loaded))
        if engine is None:
            weakref.finalize(loaded, _forget, id(loaded))  # the model is gone: its engine drains and stops
        elif not engine.serves(loaded):  # its model was replaced in place (finetune merges LoRA into it)
            engine.close(wait=False)
        if engine is None or engine.closed or not engine.serves(loaded):
            engine = _ENGINES[id(loaded)] = CaptionEngine(loaded, limits=limits)
        return engine


def retire_engine(loaded, wait: bool = False) -> None:
    """Hot-swap: the replaced captioner's engine finishes the jobs under way, then stops its thread. A caller
    that still holds this model afterwards gets a fresh engine for it (its captions still name this model)."""
    with _LOCK:
        engine = _ENGINES.pop(id(loaded), None)
    if engine is not None:
        engine.close(wait=wait)


def shutdown_engines(timeout: float | None = 30) -> None:
    """Close every engine, letting the jobs under way finish, and wait for their threads (tests; exit does it too)."""
    with _LOCK:
        _ENGINES.clear()
    close_all(timeout)


def _forget(key: int) -> None:
    with _LOCK:
        engine = _ENGINES.pop(key, None)
    if engine is not None:
        engine.close(wait=False)

