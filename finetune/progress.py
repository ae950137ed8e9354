"""What a run is doing, for the admin page: one JSON line per phase (and per stretch of work within one) appended to
--progress-file, and the same words on stderr for a person at a terminal."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# the phases in order; the page shows the latest one's words (train: its steps and loss; done: the outcome)
PHASES = ("load", "prepare", "judge", "train", "save", "activate", "done")


def note(file: str | Path | None, record: dict) -> None:
    """Append one progress record (with its time) to file, if there is one."""
    if file:
        with open(file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), **record}) + "\n")


def say(file: str | Path | None, phase: str, said: str, done: int | None = None, total: int | None = None) -> None:
    """Report a phase (and how far into it, when counted): in the progress file for the page, and on stderr.
    Only the first process of `accelerate launch` reports: the others train their share and say nothing."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    counted = {"done": done, "total": total} if total else {}
    try:
        note(file, {"phase": phase, "said": said, **counted})
    except OSError as exc:  # the page cannot follow this stretch; the run itself goes on (its outcome is on stderr)
        print(f"finetune: cannot write the progress file {file}: {exc.strerror or exc}", file=sys.stderr, flush=True)
    if done is None or done == total:  # a count's stretches only go to the page: the terminal gets the phase once
        print(f"finetune: {said}", file=sys.stderr, flush=True)


def counter(file: str | Path | None, phase: str, what: str):
    """A (done, total) callback that says "what: done of total", once per count (the caption engine also calls it
    every 0.25 s while it waits)."""
    said = [None]

    def report(done: int, total: int) -> None:
        if done != said[0]:
            said[0] = done
            say(file, phase, f"{what}: {done} of {total}", done, total)

    return report
