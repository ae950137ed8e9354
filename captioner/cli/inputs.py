"""The inputs of `caption`: files, folders, patterns the shell left, and `-` for a list of paths on stdin."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..gallery_scan import scan_gallery
from ..images import UPLOAD_TYPES
from .common import UserError, say

STDIN = "-"  # as a PATH: read the paths from standard input (a file named so is ./-)


def expand_paths(raw: list[str]) -> tuple[list[Path], bool]:
    """Files as given (patterns the shell left unexpanded, expanded; `-`, the paths listed on stdin); folders
    replaced by the image files inside them, sorted, walked as the gallery index walks them (hidden files passed
    over, linked folders followed once); True when part of a folder could not be read. An image file that cannot
    be used (empty, too big) stays an input: its row says why."""
    paths: list[Path] = []
    unreadable = False
    for path in named_paths(raw):
        if not path.is_dir():
            paths.append(path)
            continue
        scan = scan_gallery(path, follow_links=True)  # the person named this folder: where its links lead is theirs
        image_files = {relative for relative, _ in scan.skipped if relative.rpartition(".")[2].lower() in UPLOAD_TYPES}
        for relative, reason in scan.skipped:
            if relative not in image_files:  # a folder or link that cannot be read: no input to give a row
                say(f"{path / relative}: {reason}")
                unreadable = True
        found = sorted(set(scan.found) | image_files)
        if not found:
            say(f"{path}: folder holds no image files")
        if scan.ignored:
            first, why = scan.ignored[0]
            say(f"note: {path}: {len(scan.ignored)} file(s) left out, such as {first} ({why})")
        paths.extend(path / relative for relative in found)
    return paths, unreadable


def named_paths(raw: list[str]):
    """The paths named: patterns expanded, `-` replaced by the paths listed on standard input."""
    for item in unglobbed(raw):
        if item != STDIN:
            yield Path(item)
            continue
        listed = paths_from_stdin()
        if not listed:
            say("-: standard input named no paths")
        yield from listed


def refuse_an_input_as_output(out: Path | None, paths: list[Path]) -> None:
    """A UserError when --out is one of the inputs (or a link to one): opening it for writing would empty the image."""
    if not out or not out.is_file():  # a file that does not exist yet cannot be an input
        return
    target = out.stat()
    for path in paths:
        try:
            same = os.path.samestat(target, path.stat())
        except OSError:  # a missing input: its own row says so
            continue
        if same:
            raise UserError(f"--out {out}: is the input {path}; writing there would destroy it")


def unglobbed(raw: list[str]) -> list[str]:
    """Each pattern that the shell left as it was (quoted, or a Windows shell) and that names no file itself, as the
    files and folders it matches, sorted (`**` for any depth); a pattern matching nothing stays, its row says so."""
    import glob

    expanded = []
    for item in raw:
        if item == STDIN:
            expanded.append(item)
            continue
        matches = glob.has_magic(item) and not os.path.lexists(item) and sorted(glob.glob(item, recursive=True))
        expanded.extend(matches or [item])
    return expanded


def paths_from_stdin() -> list[Path]:
    """The paths listed on standard input, one a line (`find ... |`) or NUL-separated (`find -print0 |`), as given:
    no pattern is expanded, a folder is walked. Names that are not UTF-8 keep their bytes; a Windows line end goes."""
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise UserError("-: standard input is closed; give the paths as arguments")
    listed = sys.stdin.buffer.read()
    if b"\0" in listed:
        names = listed.split(b"\0")
    else:
        names = [line.removesuffix(b"\r") for line in listed.split(b"\n")]
    return [Path(os.fsdecode(name)) for name in names if name]
