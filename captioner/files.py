"""How the app writes files: atomic replaces, durable appends, staged folders published by one rename, one mode policy.

Mode policy (every file the app writes): a file it creates gets 0o666 minus the umask, as `open()` would give
it, whichever way it is written (atomic replace, append, copy); a file it replaces keeps the mode it had.

Portability: Linux, macOS and Windows. Positional reads and writes fall back to seek + read/write where the OS
lacks pread/pwrite (Windows; callers hold the file's lock); raw descriptors are opened in binary mode (Windows
would otherwise turn "\n" into "\r\n"); macOS's fsync leaves data in the drive's cache, so F_FULLFSYNC is used.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path


BINARY = getattr(os, "O_BINARY", 0)  # os.open flag: 0 where files have no text mode
UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by errors="surrogateescape"


def has_undecodable(text: str) -> bool:
    """True when text holds bytes that were not UTF-8 (a file name read with os.fsdecode, a log decoded with
    errors="surrogateescape")."""
    return UNDECODABLE.search(text) is not None


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet run a cell as a formula (OWASP)


def spreadsheet_safe(text: str) -> str:
    """Text for a CSV cell people open in a spreadsheet: one that would run as a formula (a correction typed as
    =HYPERLINK(...), a file named =cmd.jpg) gets a leading apostrophe, which spreadsheets show as text."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def read_at(handle, size: int, offset: int) -> bytes:
    """Up to size bytes at offset of an open binary file (pread where the OS has it)."""
    if hasattr(os, "pread"):
        return os.pread(handle.fileno(), size, offset)
    handle.seek(offset)
    return handle.read(size)


def write_at(fd: int, payload: bytes, offset: int) -> None:
    """Write all of payload at offset of a descriptor opened with BINARY (pwrite where the OS has it)."""
    view = memoryview(payload)
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, view, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.write(fd, view)
        view, offset = view[written:], offset + written


def flush_to_disk(fd: int) -> None:
    """fsync, and on macOS F_FULLFSYNC (its fsync stops at the drive's volatile cache)."""
    if sys.platform == "darwin":
        import fcntl

        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_FULLFSYNC", 51))  # 51: its value in macOS's <fcntl.h>
            return
        except OSError:
            pass  # some file systems (network shares) refuse it; fsync is the best they offer
    os.fsync(fd)


def fsync_path(path: Path) -> None:
    """Flush a file that is already written (Windows can only flush a handle open for writing)."""
    with open(path, "rb" if os.name != "nt" else "r+b") as handle:
        flush_to_disk(handle.fileno())


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
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; the policy above decides instead
            os.fchmod(fd, mode)
        else:
            os.chmod(tmp, mode)  # Windows before 3.13: only the read-only bit means anything there
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            flush_to_disk(handle.fileno())
        replace_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


REPLACE_TRIES = 50 if os.name == "nt" else 1  # Windows refuses to replace a file another handle has open


def replace_file(source: Path, target: Path) -> None:
    """os.replace; on Windows retried for up to about 2.5 s while a reader holds the target open (it reads briefly)."""
    for attempt in range(REPLACE_TRIES):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if attempt == REPLACE_TRIES - 1:
                raise
            time.sleep(0.05)


def append_durably(path: Path, payload: bytes) -> int:
    """Append bytes in one write loop, fsync; creates the file (with the policy's mode). Returns the offset written at."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | BINARY, 0o666)  # the kernel applies the umask
    try:
        offset = os.fstat(fd).st_size
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        flush_to_disk(fd)
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


def staging_path(target: Path) -> Path:
    """A new name beside target for a staging folder: `.<target's name>.<12 hex digits>.partial`."""
    target = Path(target)
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.partial"


def staging_folder(target: Path) -> Path:
    """A fresh, empty folder beside target to write into before publish_folder moves it into place."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    folder = staging_path(target)
    folder.mkdir()
    return folder


def publish_folder(staging: Path, target: Path) -> None:
    """Give every file under staging the umask's mode and fsync it, then rename staging to target (absent or an
    empty folder): all or nothing."""
    staging, target = Path(staging), Path(target)
    paths = sorted(staging.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    files = [path for path in paths if path.is_file() and not path.is_symlink()]
    for path in files:  # writers that go through a temp file (safetensors' save) leave 0600:
        os.chmod(path, new_file_mode())  # another user's server could not load the weights it was told to serve
    # an fsync waits on the disk, not the CPU: one at a time, 3,000 exported photos took 9 s of a 14 s export
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync") as pool:
        list(pool.map(fsync_path, files))
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o777 & ~UMASK)
            fsync_dir(path)
    os.chmod(staging, 0o777 & ~UMASK)
    fsync_dir(staging)
    if target.is_dir() and not target.is_symlink():
        target.rmdir()  # only an empty folder may be replaced; rmdir refuses anything else
    staging.rename(target)
    fsync_dir(target.parent)


def discard_folder(staging: Path) -> None:
    """Remove a staging folder that will not be published."""
    shutil.rmtree(staging, ignore_errors=True)
