"""What every command shares: one-line messages on stderr, user errors, and loading a model by the one policy."""

from __future__ import annotations

import sys

PROG = "captioner"


class UserError(Exception):
    """A problem with what the user asked for: reported as one line on stderr, no traceback."""


def say(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
