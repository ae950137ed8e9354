"""The command line: `python -m captioner caption|ask|index|search|feedback|models|demo ...` (see README)."""

from __future__ import annotations

import os
import sys

from .. import runtime
from ..settings import Settings, SettingsError, unknown_variables
from .common import UserError, say
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    runtime.configure("cli")  # threads and OpenMP wait policy, before any command loads torch
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        for note in unknown_variables():
            say(f"note: {note}")
        return run(args, settings)
    except (UserError, SettingsError) as exc:
        say(str(exc))
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except BrokenPipeError:  # the reader stopped reading (`models list --json | head`): the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit does not complain
        return 1


def run(args, settings: Settings) -> int:
    """Hand the parsed command to its module, imported only now: `feedback list` and `models list` stay torch-free."""
    if args.command == "caption":
        from .captions import cmd_caption as command
    elif args.command == "ask":
        from .captions import cmd_ask as command
    elif args.command == "index":
        from .gallery import cmd_index as command
    elif args.command == "search":
        from .gallery import cmd_search as command
    elif args.command == "feedback":
        from .feedback import cmd_feedback as command
    elif args.command == "models":
        from .models import cmd_models as command
    else:
        from .demo import cmd_demo as command
    return command(args, settings)
