"""How the app writes files: atomic replaces, durable appends, staged folders published by one rename, one mode policy.

Mode policy (every file the app writes): a file it creates gets 0o666 minus the umask, as `open()` would give
it, whichever way it is written (atomic replace, append, copy); a file it replaces keeps the mode it had.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path


def now_utc() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_umask() -> int:
    # os.umask can only be read by setting it, which races other threads; Linux shows it in /proc.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once at import, before the app starts threads


def new_file_mode() -> int:
    """The mode a new file gets: 0o666 minus the umask."""
    return 0o666 & ~UMASK


def write_atomic(path: Path, payload: bytes) -> None:
    """Write a file through a temp file in the same folder, fsync, os.replace: readers see old or new, never half."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600 files; the policy above decides instead
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def append_durably(path: Path, payload: bytes) -> int:
    """Append bytes in one write loop, fsync; creates the file (with the policy's mode). Returns the offset written at."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the kernel applies the umask
    try:
        offset = os.fstat(fd).st_size
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return offset


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in folder durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a folder; the file itself is already fsynced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path, pattern: str, older_than_s: float = 0.0) -> int:
    """Delete temp files matching pattern that a killed writer left (older than older_than_s); returns how many."""
    removed, cutoff = 0, time.time() - older_than_s
    for path in Path(folder).glob(pattern):
        try:
            if path.is_file() and path.stat().st_mtime <= cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def staging_folder(target: Path) -> Path:
    """A fresh, empty folder beside target to write into before publish_folder moves it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.partial"
    folder.mkdir()
    return folder


def publish_folder(staging: Path, target: Path) -> None:
    """Fsync every file under staging, then rename it to target (absent or an empty folder): all or nothing."""
    staging, target = Path(staging), Path(target)
    for path in sorted(staging.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(staging)
    if target.is_dir() and not target.is_symlink():
        target.rmdir()  # only an empty folder may be replaced; rmdir refuses anything else
    staging.rename(target)
    fsync_dir(target.parent)


def discard_folder(staging: Path) -> None:
    """Remove a staging folder that will not be published."""
    shutil.rmtree(staging, ignore_errors=True)
