"""Model versions under models/ (v0001, v0002, ...) and the active pointer models/active.json.

A version folder appears only when complete: it is written as models/.staging-*/ and renamed into place.
active.json is replaced atomically, under the registry lock (a killed activation's temp file goes at the next one),
and keeps the versions live before (null: the default model): rollback points it back at the one live before, not
at the next lower number.
No torch here: listing and pointing must answer at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .files import now_utc, publish_folder, remove_stale_temps, write_atomic
from .runtime import process_alive, process_started

ACTIVE_FILE = "active.json"
OWNER_FILE = ".owner-pid"
LOCK_FILE = ".registry.lock"
STALE_STAGING_S = 600  # an ownerless staging folder touched more recently may still be on its way to publishing
VERSION_NAME = re.compile(r"^v(\d{4,})$")
HISTORY_KEPT = 100  # versions live before the current one that active.json remembers for rollback
ANY = object()  # activate(expected=ANY): whatever is live now may be replaced


class RegistryError(ValueError):
    """A version that does not exist or cannot be made live; the message says which and why."""


@dataclass(frozen=True)
class Version:
    """One published model version and what its files say about it."""

    name: str
    path: Path
    created: str
    base: str
    rows_used: int
    metrics: dict

    @property
    def heldout(self) -> tuple[dict, dict]:
        """(before, after) held-out metrics."""
        return self.metrics.get("heldout_before", {}), self.metrics.get("heldout_after", {})

    @property
    def new_concepts(self) -> dict:
        """Held-out exact match on corrections: {before, after, count} (empty for a version trained before it)."""
        return self.metrics.get("new_concepts", {})

    @property
    def old_knowledge(self) -> dict:
        """Held-out exact match on what the live model got right: {before, after, count}; a drop means forgetting."""
        return self.metrics.get("old_knowledge", {})


@dataclass(frozen=True)
class ActiveState:
    """What models/active.json says: a version, the default model (None), or a problem that makes it unreadable."""

    version: str | None
    problem: str | None = None
    history: tuple = ()  # the versions live before, oldest first (None: the default model)


def active_state(models_dir: Path) -> ActiveState:
    """Read models/active.json; a file that is there but unreadable is a problem to say, never the default."""
    path = Path(models_dir) / ACTIVE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ActiveState(None)
    except (OSError, UnicodeDecodeError) as exc:
        return ActiveState(None, f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc})")
    except ValueError as exc:
        return ActiveState(None, f"{path} is corrupt (not valid JSON: {exc})")
    if not isinstance(data, dict) or "version" not in data:
        return ActiveState(None, f"{path} is corrupt (no \"version\" field)")
    version = data["version"]
    if version is not None and not (isinstance(version, str) and VERSION_NAME.match(version)):
        return ActiveState(None, f"{path} is corrupt (version {version!r} is not a version name)")
    history = data.get("history") if isinstance(data.get("history"), list) else []  # written before it was kept: none
    return ActiveState(version, None, tuple(v for v in history if v is None or (isinstance(v, str) and VERSION_NAME.match(v))))


def active_version(models_dir: Path) -> str | None:
    """The version models/active.json names (whether or not its folder is still there), or None."""
    return active_state(models_dir).version


def version_problem(folder: Path) -> str | None:
    """Why a version folder cannot load, as far as its files tell without loading it; None when it looks whole."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder.name} is missing from {folder.parent}"
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{folder.name} holds no config.json (a half-written or hand-made folder, not a published version)"
    except (OSError, ValueError) as exc:
        return f"{folder.name}/config.json is unreadable ({type(exc).__name__})"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return f"{folder.name} holds no weights (*.safetensors)"
    for path in weights:
        if not _safetensors_whole(path):
            return f"{folder.name}/{path.name} is truncated or corrupt"
    return None


def _safetensors_whole(path: Path) -> bool:
    """The file's header parses and its tensors end exactly where the file does."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= 100_000_000:
                return False
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        return path.stat().st_size == 8 + length + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def list_versions(models_dir: Path) -> list[Version]:
    """Every complete version, oldest first."""
    found = []
    for folder in Path(models_dir).glob("v*"):
        match = VERSION_NAME.match(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), _describe(folder)))
    return [version for _, version in sorted(found, key=lambda pair: pair[0])]


def _describe(folder: Path) -> Version:
    def read(name: str) -> dict:
        try:
            return json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    metrics, args = read("metrics.json"), read("train_args.json")
    base = args.get("base_description", args.get("base", ""))  # older versions kept the description as "base"
    return Version(folder.name, folder, args.get("created", ""), base, int(args.get("rows_used", 0)), metrics)


def staging_dir(models_dir: Path) -> Path:
    """A fresh folder to write a version into before it is published."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    folder = models_dir / f".staging-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    (folder / OWNER_FILE).write_text(f"{os.getpid()} {process_started(os.getpid())}")  # the id, and when it started
    return folder


def publish(models_dir: Path, staging: Path) -> str:
    """Rename a complete staging folder to the next version name; returns that name."""
    models_dir = Path(models_dir)
    with FileLock(str(models_dir / LOCK_FILE)):  # remove_stale_staging waits: it never sees this folder ownerless
        numbers = [int(m.group(1)) for p in models_dir.iterdir() if (m := VERSION_NAME.match(p.name))]
        name = f"v{max(numbers, default=0) + 1:04d}"
        (staging / OWNER_FILE).unlink(missing_ok=True)
        publish_folder(staging, models_dir / name)
    return name


def activate(models_dir: Path, version: str | None, expected=ANY, rollback: bool = False) -> None:
    """Point active.json at a version (None: back to the default model), atomically. expected: only if that is
    still what is live (a retrain judged against it must not undo an activation made while it trained).
    rollback: the history is wound back to before `version`, instead of remembering the version replaced."""
    models_dir = Path(models_dir)
    if version is not None and not (models_dir / version / "config.json").is_file():
        raise RegistryError(f"version {version!r} does not exist in {models_dir} (see `models list`)")
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(models_dir / LOCK_FILE)):
            remove_stale_temps(models_dir, f".{ACTIVE_FILE}.*.tmp")  # a killed activation's: every one holds this lock
            state = active_state(models_dir)
            if expected is not ANY and (state.problem or state.version != expected):
                now = "an unreadable active.json" if state.problem else state.version or "the default model"
                raise RegistryError(f"the live model changed meanwhile ({expected or 'the default model'} -> {now})")
            history = list(state.history)
            if rollback:
                if version in history:  # back to before its last time live
                    history = history[: len(history) - history[::-1].index(version) - 1]
            elif not state.problem and state.version != version:
                history = (history + [state.version])[-HISTORY_KEPT:]
            payload = {"version": version, "activated_at": now_utc(), "history": history}
            write_atomic(models_dir / ACTIVE_FILE, (json.dumps(payload, indent=2) + "\n").encode())
    except OSError as exc:  # a read-only or full models folder: the live model stays
        raise RegistryError(f"cannot write {models_dir / ACTIVE_FILE}: {exc.strerror or exc}") from None


def require_whole(models_dir: Path, version: str) -> None:
    """RegistryError unless `version` names a whole version folder: one that is not there, or one that is there but
    half-written (listed by `models list`, so "does not exist" would be untrue), each said as it is."""
    folder = Path(models_dir) / version
    if not (VERSION_NAME.match(version) and folder.is_dir()):
        raise RegistryError(f"version {version!r} does not exist in {models_dir} (see `models list`)")
    problem = version_problem(folder)
    if problem:
        raise RegistryError(f"version {version!r} cannot go live: {problem}")


def previous_version(models_dir: Path) -> str | None:
    """The version live before the live one (None: the default model), for rollback: the newest one in active.json's
    history whose folder is still there; without a history (written before it was kept, or a version whose folder
    is gone), the newest version numbered below the live one. A corrupt pointer is refused (activate one by name)."""
    state = active_state(models_dir)
    if state.problem:
        raise RegistryError(f"{state.problem}; activate a version by name to repair it")
    if state.version is None:
        raise RegistryError("no version is live, so there is nothing to roll back")
    for earlier in reversed(state.history):
        if earlier != state.version and (earlier is None or (Path(models_dir) / earlier / "config.json").is_file()):
            return earlier
    older = [v.name for v in list_versions(models_dir) if _number(v.name) < _number(state.version)]
    return older[-1] if older else None


def _number(version: str) -> int:
    return int(VERSION_NAME.match(version).group(1))


def _owner_alive(owner: str) -> bool:
    pid, _, started = owner.partition(" ")
    try:
        return process_alive(int(pid), float(started) if started and started != "None" else None)
    except ValueError:
        return False


def remove_stale_staging(models_dir: Path) -> list[str]:
    """Staging folders a killed run left behind (their writer is gone); a running one's stays, and so does one
    without an owner that was touched in the last minutes (under the registry lock, publish leaves none such).
    Returns the names of the folders removed."""
    models_dir = Path(models_dir)
    removed: list[str] = []
    if not models_dir.is_dir():
        return removed
    with FileLock(str(models_dir / LOCK_FILE)):
        remove_stale_temps(models_dir, f".{ACTIVE_FILE}.*.tmp")  # a killed activation's: activations hold this lock
        for folder in models_dir.glob(".staging-*"):
            try:
                owner = (folder / OWNER_FILE).read_text().strip()
            except OSError:
                owner = None
            if owner is not None and _owner_alive(owner):
                continue
            try:
                young = time.time() - folder.stat().st_mtime < STALE_STAGING_S
            except OSError:
                continue  # gone meanwhile
            if owner is None and young:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return sorted(removed)

