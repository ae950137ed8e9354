"""Where `caption` writes its rows: stdout, or an --out file that a run replaces only once it is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from ..files import flush_to_disk, fsync_dir
from .common import UserError, say

try:
    import fcntl
except ImportError:  # Windows: no flock; a file open in one run cannot be replaced by another there anyway
    fcntl = None

PARTIAL_SUFFIX = ".partial"  # beside --out: the rows of a run not yet finished (what a stopped run keeps)


def open_output(out: Path | None):
    """The --out file, or stdout; one clear error when it cannot be written. A regular --out file is written as
    <out>.partial and renamed over --out when the run is complete: a run stopped midway (Ctrl-C, a crash, a full
    disk) leaves the file of the run before as it was, and its own rows in the .partial file."""
    if not out:  # a file name that is not UTF-8 (Linux allows any bytes) goes out as its own bytes in CSV and text
        if sys.stdout is None:  # started with stdout closed (`>&-`): Python has no stream to write to
            raise UserError("standard output is closed; give --out FILE")
        sys.stdout.reconfigure(errors="surrogateescape")
        return contextlib.nullcontext(sys.stdout)
    target = Path(os.path.realpath(out))  # a link to the results file: the file it leads to is the one replaced
    try:
        if target.exists() and not target.is_file():  # /dev/null, a pipe, a terminal: nothing to keep or rename
            return open(out, "w", encoding="utf-8", errors="surrogateescape", newline="")
        if target.exists() and not os.access(target, os.W_OK):  # made read-only to keep it: it is not replaced
            raise PermissionError(13, "Permission denied")
        return _ReplacedWhenComplete(out, target)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot be written ({exc.strerror or exc})") from None


def refuse_an_output_with_no_folder(out: Path | None) -> None:
    """A UserError when --out is a folder or its folder does not exist: said at once, not after the model loads."""
    if not out:
        return
    target = Path(os.path.realpath(out))
    if target.is_dir():
        raise UserError(f"--out {out}: cannot be written (Is a directory)")
    if not target.parent.is_dir():
        raise UserError(f"--out {out}: cannot be written (No such file or directory)")


class _ReplacedWhenComplete:
    """A text file written as <target>.partial, fsynced and renamed onto target when the with-block ends without an
    exception; otherwise the partial file is left with the rows written (or removed if there are none) and said."""

    def __init__(self, out: Path, target: Path):
        self.out, self.target = out, target
        self.partial = target.with_name(target.name + PARTIAL_SUFFIX)
        self.file = self._open_locked()
        self.file.truncate(0)  # what a stopped run left: this run's rows replace it
        self.written = False

    def _open_locked(self):
        """The partial file, opened and locked: two runs writing one --out at once (an overlapping cron job) would
        interleave their rows. The lock is the system's, let go when a run dies; the run holding it keeps it until
        its file is renamed onto --out, so a lock got on a file renamed meanwhile is let go and taken again."""
        while True:
            file = open(self.partial, "a", encoding="utf-8", errors="surrogateescape", newline="")
            if fcntl is None:
                return file
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.close()
                raise UserError(f"--out {self.out}: another run is writing it now ({self.partial})") from None
            if os.path.exists(self.partial) and os.path.samestat(os.fstat(file.fileno()), os.stat(self.partial)):
                return file
            file.close()

    def write(self, text: str) -> int:
        self.written = self.written or bool(text)
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return False

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            try:
                self.file.flush()
                flush_to_disk(self.file.fileno())  # the rows are on disk before the name points at them
                with contextlib.suppress(OSError):  # the results keep the old file's permissions (a shared folder's)
                    if self.target.is_file():
                        shutil.copymode(self.target, self.partial)
                if fcntl is None:  # Windows renames no open file
                    self.file.close()
                os.replace(self.partial, self.target)
                fsync_dir(self.target.parent)  # and the new name is on disk too
                self.file.close()  # the lock goes only now: no other run can take this file before it is --out
                return
            except OSError:
                self._left_unfinished()
                raise
        self._left_unfinished()

    def _left_unfinished(self) -> None:
        with contextlib.suppress(OSError):  # a full disk may refuse the last flush: what is there stays
            self.file.close()
        kept = "the file before is unchanged" if self.target.exists() else "nothing was written there"
        if self.written and _size(self.partial):
            say(f"--out {self.out}: the run did not finish; {kept}, and the rows done are in {self.partial}")
        else:
            with contextlib.suppress(OSError):
                self.partial.unlink()
            say(f"--out {self.out}: the run did not finish; {kept}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

