"""Loading the model a command needs through the one loading policy, saying any fallback on stderr."""

from __future__ import annotations

from ..loading import serve
from ..models import LoadedModel, ModelError
from ..settings import Settings
from .common import UserError, say


def load_for_cli(kind: str, explicit: str | None, settings: Settings) -> LoadedModel:
    """The model for a kind: an explicit --model exactly, else the configured one (its fallback said as a note)."""
    try:
        served = serve(kind, settings, explicit)
    except ModelError as exc:
        raise UserError(str(exc)) from None
    if served.fallback_reason:
        say(f"note: {served.fallback_reason}")
    return served.model
