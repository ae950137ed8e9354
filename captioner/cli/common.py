"""What every command shares: one-line messages on stderr, user errors, and loading a model by the one policy."""

from __future__ import annotations

import contextlib
import re
import sys

PROG = "captioner"
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but the tab
status_line = None  # a run's progress line while it is on the terminal: a message clears it rather than share its line


class UserError(Exception):
    """A problem with what the user asked for: reported as one line on stderr, no traceback."""


def say(message: str) -> None:
    """One line on stderr, prefixed with the program name. A line break or other control character in it (a file
    name may hold them) is written as its escape, so a file name cannot split a message or forge another line."""
    message = CONTROL.sub(lambda found: repr(found.group())[1:-1], message)
    if sys.stderr is None:  # started with stderr closed (`2>&-`): there is nowhere to say it
        return
    with status_line.aside() if status_line else contextlib.nullcontext():
        sys.stderr.write(f"{PROG}: {message}\n")  # one write: a progress line from another thread goes before or after
        sys.stderr.flush()
