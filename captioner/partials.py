"""Partial outputs a writer claims while it writes them, so what a killed writer left can be told apart and removed.

A writer makes and flocks `<partial>.lock` before it makes the partial output itself, and unlinks it only once the
partial is gone (published by a rename, or discarded). The system lets go of a flock when its process dies, even by
kill -9; so a partial whose lock file can be locked by someone else is a dead writer's, and one whose lock is held
is another session's work in progress, left alone. A partial with no lock file at all was written before writers
claimed them (or where there is no flock: Windows): it is taken as dead only once it is UNCLAIMED_STALE_S old.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; partials there are judged by their age alone
    fcntl = None

LOCK_SUFFIX = ".lock"
UNCLAIMED_STALE_S = 3600  # an unclaimed partial untouched this long is no running writer's


def lock_file(partial: Path) -> Path:
    """The lock file beside a partial output."""
    return Path(partial).with_name(Path(partial).name + LOCK_SUFFIX)


@contextmanager
def claimed(partial: Path) -> Iterator[Path]:
    """Hold the lock beside partial for the with-block: enter before partial is made, leave after it is gone."""
    if fcntl is None:
        yield Path(partial)
        return
    lock = lock_file(partial)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new name: only a cleaner's probe can hold it, and only for a moment
        yield Path(partial)
    finally:
        with suppress(OSError):
            lock.unlink()  # still held: a cleaner that opened it before waits, then finds the partial gone
        os.close(fd)


def remove_abandoned(partials: list[Path]) -> list[Path]:
    """Remove the partials (files or folders) whose writer is gone; returns those removed."""
    return [partial for partial in partials if _remove_if_abandoned(Path(partial))]


def _remove_if_abandoned(partial: Path) -> bool:
    try:
        fd = os.open(lock_file(partial), os.O_RDWR)  # never made here: making it would claim a stranger's partial
    except FileNotFoundError:
        return _unclaimed_stale(partial) and _remove(partial)
    except OSError:
        return False  # cannot tell (another user's file): left alone
    try:
        if fcntl is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a running writer's (or a file system without flock: cannot tell)
            return False
        if not os.path.lexists(partial):  # its writer finished between the listing and the lock
            return False
        removed = _remove(partial)
        if removed:
            with suppress(OSError):
                lock_file(partial).unlink()
        return removed
    finally:
        os.close(fd)


def _unclaimed_stale(partial: Path) -> bool:
    try:
        return time.time() - partial.lstat().st_mtime >= UNCLAIMED_STALE_S
    except OSError:
        return False  # gone meanwhile


def _remove(partial: Path) -> bool:
    try:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial)
        else:
            partial.unlink()
    except OSError:  # gone meanwhile, or not ours to remove: left as it is
        return False
    return True
