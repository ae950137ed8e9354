"""Which files of a gallery folder can be indexed: image files inside the folder, each with its size and mtime.

A symbolic link that leads outside the gallery (to a file or a folder) is listed as ignored and never read,
unless the user opts in (CAPTIONER_GALLERY_FOLLOW_LINKS=1, or `index --follow-links`): a gallery must not
become a way to index and serve /etc. Links that stay inside are followed, never into a loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .images import MAX_FILE_BYTES, UPLOAD_TYPES, ImageError

_IMAGE_SUFFIXES = frozenset(UPLOAD_TYPES)
OUTSIDE = "a symbolic link to outside the gallery; not followed (set CAPTIONER_GALLERY_FOLLOW_LINKS=1 to allow)"
LOOP = "a symbolic link back into the gallery (loop); not followed"
ALREADY_INDEXED = "a symbolic link to a folder of the gallery, indexed under its own name; not indexed twice"


class GalleryProblem(Exception):
    """A gallery folder that is missing or not a folder."""


@dataclass
class Scan:
    """Image files by path relative to the gallery (forward slashes), and what was left out, with why."""

    found: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # image files that cannot be used
    ignored: list[tuple[str, str]] = field(default_factory=list)  # other files, links out, loops
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed ("sub/"; "" the gallery)


def scan_gallery(gallery: Path, follow_links: bool = False) -> Scan:
    """Walk the gallery (one stat per file, no reading); hidden files and folders are passed over."""
    gallery = Path(gallery)
    if not gallery.exists():
        raise GalleryProblem(f"the gallery folder {gallery} does not exist")
    if not gallery.is_dir():
        raise GalleryProblem(f"the gallery {gallery} is not a folder")
    root = os.path.realpath(gallery)
    scan, seen = Scan(), {_identity(root)}
    folders, linked = [(root, "")], []
    while folders or linked:
        if folders:
            folder, prefix = folders.pop()
        else:  # folders links lead to come after every folder reached without one: a folder keeps its own name
            folder, prefix = linked.pop()
            try:
                identity = _identity(folder)
            except OSError as exc:
                scan.skipped.append((prefix.rstrip("/"), f"cannot be read ({exc.strerror})"))
                continue
            if identity in seen:
                link_in = os.path.realpath(os.path.join(root, os.path.dirname(prefix.rstrip("/"))))
                loop = _inside(os.path.realpath(folder), link_in)  # it leads to a folder it stands in
                scan.ignored.append((prefix.rstrip("/"), LOOP if loop else ALREADY_INDEXED))
                continue
            seen.add(identity)
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda entry: entry.name, reverse=True)
        except OSError as exc:
            scan.skipped.append((prefix.rstrip("/") or ".", f"cannot be read ({exc.strerror})"))
            scan.unlisted.append(prefix)
            continue
        for entry in children:
            name = entry.name
            if name.startswith("."):
                continue
            relative, is_link = prefix + name, False
            try:
                if entry.is_file(follow_symlinks=False):  # the common case, told by the listing itself
                    _note_file(scan, entry, relative)
                    continue
                is_link = entry.is_symlink()
                if is_link and not follow_links and not _inside(root, os.path.realpath(entry.path)):
                    scan.ignored.append((relative, OUTSIDE))
                elif entry.is_dir() and is_link:
                    linked.append((entry.path, relative + "/"))
                elif entry.is_dir():
                    identity = _identity(entry.path)
                    if identity in seen:
                        scan.ignored.append((relative, LOOP))
                    else:
                        seen.add(identity)
                        folders.append((entry.path, relative + "/"))
                else:
                    _note_file(scan, entry, relative)
            except OSError as exc:
                reason = "a broken symbolic link" if is_link and not os.path.exists(entry.path) else exc.strerror
                scan.skipped.append((relative, f"cannot be read ({reason})"))
    return scan


def _note_file(scan: Scan, entry: os.DirEntry, relative: str) -> None:
    if entry.name.rpartition(".")[2].lower() not in _IMAGE_SUFFIXES:
        scan.ignored.append((relative, "not an image file type"))
        return
    stat = entry.stat()
    if stat.st_size > MAX_FILE_BYTES:
        scan.skipped.append((relative, f"file is {stat.st_size / 2**20:.0f} MiB, over the limit"))
    elif stat.st_size == 0:
        scan.skipped.append((relative, "empty file (0 bytes)"))
    else:
        scan.found[relative] = (stat.st_size, stat.st_mtime_ns)


def gallery_file(gallery: Path, relative: str, follow_links: bool = False) -> Path:
    """The file at a gallery-relative path, refused (ImageError) if it leads outside the gallery, as a file
    swapped for a link after it was indexed would."""
    path = Path(gallery) / relative
    if not follow_links and not _inside(os.path.realpath(gallery), os.path.realpath(path)):
        raise ImageError(relative, "leads outside the gallery folder; not read")
    return path


def _inside(root: str, target: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino
