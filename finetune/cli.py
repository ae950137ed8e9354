"""The command line of `python -m finetune`: exit status, and the final progress record the admin page shows."""

from __future__ import annotations

import json
import signal
import time
import warnings

from captioner.settings import unknown_variables

from .config import FinetuneConfig, parse_args
from .errors import FinetuneError, NotLive, Refused
from .run import log, main


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(argv: list[str] | None = None) -> int:
    """`python -m finetune ...`: exit 0 when a version was published (and made live, unless --no-activate), 1 when
    refused, failed or published but not made live, 130 when cancelled."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's business
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # Cancel on the admin page: clean up like Ctrl-C
    for note in unknown_variables():
        log(f"note: {note}")
    try:
        folder = main(cfg)
    except NotLive as exc:  # published, but not made live: the outcome names the version all the same
        log(str(exc))
        _final(cfg, exc.status, str(exc), exc.version)
        return 130 if exc.status == "cancelled" else 1
    except FinetuneError as exc:
        log(str(exc))
        _final(cfg, "refused" if isinstance(exc, Refused) else "failed", str(exc))
        return 1
    except KeyboardInterrupt:
        log("cancelled; nothing was published and the live model is unchanged")
        _final(cfg, "cancelled", "cancelled; nothing was published")
        return 130
    except Exception as exc:  # an unexpected failure still ends the run visibly for the admin page
        _final(cfg, "failed", f"{type(exc).__name__}: {exc}")
        raise
    if folder is not None:
        _final(cfg, "published", f"published {folder.name}" + (" and made it live" if cfg.activate else ""), folder.name)
    return 0


def _final(cfg: FinetuneConfig, status: str, message: str, version: str | None = None) -> None:
    if not cfg.progress_file:
        return
    try:
        with open(cfg.progress_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), "phase": "done", "status": status, "message": message,
                                     "version": version}) + "\n")  # fmt: skip
    except OSError:
        pass  # a progress file that cannot be written was said on stderr; the exit status still tells the outcome
