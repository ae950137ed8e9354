"""The command line: `python -m captioner caption|ask|index|search|feedback|models|demo ...` (see README)."""

from __future__ import annotations

import os
import signal
import sys
import threading

from .. import runtime
from ..settings import Settings, SettingsError, unknown_variables
from .common import UserError, say
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    runtime.configure("cli")  # threads and OpenMP wait policy, before any command loads torch
    args = build_parser().parse_args(argv)
    interrupt = _second_interrupt_stops_at_once()
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
    finally:
        if interrupt and signal.getsignal(signal.SIGINT) is interrupt:  # no Ctrl-C came: as it was, for a caller
            signal.signal(signal.SIGINT, signal.default_int_handler)  # in this process (after one, exiting stays quick)


def _second_interrupt_stops_at_once():
    """Ctrl-C stops a command cleanly (an --out file's rows kept, said); a second one while it winds down (waiting
    for the model's threads) exits at once, where it printed a traceback and aborted. The handler set, or None
    where Ctrl-C is not Python's to handle (ignored, as in a background job, or not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    before = signal.getsignal(signal.SIGINT)
    if before is not signal.default_int_handler:
        return None

    def stop_at_once(signum, frame):
        erase = b"\r\x1b[K" if os.isatty(2) else b""  # a progress line may be on the terminal
        os.write(2, erase + b"captioner: interrupted again: stopped at once\n")  # not say(): the code interrupted
        os._exit(130)  # may hold stderr's lock; and no exit-time wait (rows written so far stay in their file)

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, stop_at_once)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    return interrupt


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
