"""Retraining as a background job: `python -m finetune` in a subprocess, followed through its progress file.

Each run has a folder models/.runs/<id>/ with job.json (pid and when it started, arguments), log.txt (its output) and
progress.jsonl (each phase, with its words and counts, and the training steps as JSON lines, then a final
record with the outcome: finetune/progress.py), so any session, or a
restarted app, can show it and cancel it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from . import runtime
from .files import write_atomic
from .runtime import process_alive, process_started
from .settings import Settings

ROOT = Path(__file__).resolve().parents[1]
_CHILDREN: dict[str, subprocess.Popen] = {}  # reaped by whoever polls; the app's own runs
CANCEL_FILE = "cancel-requested"


@dataclass(frozen=True)
class Run:
    """One retraining job as its files tell it."""

    id: str
    folder: Path
    pid: int
    started: float
    args: list[str]
    pid_started: float | None = None  # when its process started: a later process given the same id is not it

    @property
    def progress(self) -> list[dict]:
        try:
            lines = (self.folder / "progress.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        return [record for line in lines if (record := _record(line)) is not None]

    @property
    def outcome(self) -> dict | None:
        """The final record (status: published, refused, failed, cancelled), once the run has ended. A run cancelled
        before it could write one (still importing torch) is cancelled all the same."""
        final = [record for record in self.progress if record.get("phase") == "done"]
        if final:
            return final[-1]
        if (self.folder / CANCEL_FILE).exists() and not self.running:
            return {"phase": "done", "status": "cancelled", "message": "cancelled; nothing was published"}
        return None

    @property
    def running(self) -> bool:
        child = _CHILDREN.get(self.id)
        if child is not None:
            return child.poll() is None
        done = any(record.get("phase") == "done" for record in self.progress)
        return process_alive(self.pid, self.pid_started) and not done

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.folder / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _record(line: str) -> dict | None:
    """One progress line; None for a torn one (read while it was being appended across a page boundary, or its
    writer killed or out of disk space mid-line), which took the whole admin page down with a JSONDecodeError."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def runs_dir(settings: Settings) -> Path:
    return settings.models_dir / ".runs"


def start(settings: Settings, options: list[str]) -> Run:
    """Start `python -m finetune` for this CAPTIONER_HOME with extra command-line options (one at a time: two
    sessions pressing Retrain at once start one run, and the other is told it is running)."""
    runs_dir(settings).mkdir(parents=True, exist_ok=True)
    with FileLock(str(runs_dir(settings) / ".start.lock")):
        if (current := latest(settings)) and current.running:
            raise RuntimeError(f"a retrain is already running (started {time.ctime(current.started)})")
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = runs_dir(settings) / run_id
        folder.mkdir(parents=True)
        args = [sys.executable, "-m", "finetune", "--home", str(settings.home), "--progress-file", str(folder / "progress.jsonl"), *options]
        with open(folder / "log.txt", "w", encoding="utf-8") as log:
            child = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**runtime.child_env("retrain"), "PYTHONUNBUFFERED": "1"})  # fmt: skip
        _CHILDREN[run_id] = child
        job = {"pid": child.pid, "pid_started": process_started(child.pid), "started": time.time(), "args": args}
        try:
            write_atomic(folder / "job.json", json.dumps(job).encode())  # another session's page never reads half of it
        except OSError:  # a full disk: a run nobody could follow or cancel is stopped, and the page says it did not start
            child.kill()
            child.wait()
            raise
    return _read(folder)


def latest(settings: Settings) -> Run | None:
    """The most recent run, if any (a folder whose job.json cannot be read, a disk that filled up as it was
    written, is passed over: it took the whole admin page down with a JSONDecodeError on every visit)."""
    for folder in sorted((p for p in runs_dir(settings).glob("*") if (p / "job.json").is_file()), reverse=True):
        try:
            return _read(folder)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _read(folder: Path) -> Run:
    job = json.loads((folder / "job.json").read_text())
    return Run(folder.name, folder, job["pid"], job["started"], job["args"], job.get("pid_started"))


def cancel(run: Run) -> None:
    """Ask the run to stop (SIGTERM: it cleans up and publishes nothing); the request is written down first, so a
    run stopped before it could say so itself still ends as cancelled."""
    if run.running:
        (run.folder / CANCEL_FILE).write_text(str(time.time()))
        os.kill(run.pid, signal.SIGTERM)
