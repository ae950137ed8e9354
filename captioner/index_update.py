"""Bringing a gallery's index up to date, at a cost that follows what changed, not the gallery's size.

The scan stats every file and compares size and mtime with the index: unchanged files are neither read
nor hashed. New and changed files are read once each (threads), hashed, and content the index already
holds (a moved or copied file), or held lately (a file back after an update without it: index_dropped.py),
keeps its vector; the rest is embedded (embed.py: device decoding, encoding overlapped with the next batch).
The new vectors go into a new segment; only the entry table is rewritten (index_arrange.py says when the
vectors are).
"""

from __future__ import annotations

import bisect
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from collections.abc import Callable

import numpy as np
from filelock import FileLock, Timeout

from . import images
from .files import now_utc
from .gallery_scan import GalleryProblem, scan_gallery
from .images import ImageError
from .index_arrange import arrange
from .index_dropped import RETAIN_DAYS, known_contents, no_dropped, still_dropped
from .index_entries import ENTRY_DTYPE, EntryTable, ShaRows
from .index_journal import Journal
from .index_store import GalleryIndex, IndexProblem, index_root, load_index, remove_strays, write_generation
from .runtime import lock_holder
from .search_structure import FLAT_LIMIT

READERS = 8
UPDATE_LOCK = "update.lock"  # beside the index: held by the one update that may write it


@dataclass
class UpdateReport:
    """What an update did, for the page and the CLI."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    resumed: int = 0  # embedded by an update that was interrupted, kept in its journal
    reused: int = 0  # same content already embedded: under another path, or before it left the gallery
    skipped: list[tuple[str, str]] = field(default_factory=list)  # image files that failed: (path, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # other files, links out, loops: (path, reason)
    rebuilt_because: str | None = None  # the old index could not be used
    rewritten_because: str | None = None  # the vectors were rewritten (layout change, compaction)
    kept_because: str | None = None  # the gallery looks absent (a disk not mounted): the index was left as it was
    warnings: list[str] = field(default_factory=list)  # what the person should know: many files gone, index kept
    seconds: float = 0.0


def update_index(
    embedder, gallery: Path, data_dir: Path, on_progress: Callable[[int, int, float], None] | None = None,
    flat_limit: int = FLAT_LIMIT, follow_links: bool = False, on_wait: Callable[[], None] | None = None,
) -> tuple[GalleryIndex, UpdateReport]:  # fmt: skip
    """Bring the gallery's index up to date: embed new and changed files, drop deleted ones, skip the rest.
    on_wait is called once if another update of this index is running (this one waits for it to end); waiting_note
    says which."""
    started, gallery = time.time(), Path(gallery).resolve()
    root = index_root(data_dir, gallery, embedder.name)
    report = UpdateReport()
    with _written_to(root), _update_lock(root, on_wait) as cannot_write:
        if not cannot_write:
            remove_strays(root)
        old = _previous_index(root, gallery, embedder, report)
        try:
            scan = scan_gallery(gallery, follow_links)
        except GalleryProblem as exc:
            raise IndexProblem(str(exc)) from None
        report.skipped, report.ignored = scan.skipped, scan.ignored
        if old is not None and len(old) and _absent(gallery, scan, old, report):
            report.unchanged, report.seconds = len(old), time.time() - started
            return old, report
        kept, to_read, known = _compare(scan, old, report)
        if old is not None and report.removed > len(old) // 2:
            report.warnings.append(
                f"{report.removed:,} of the {len(old):,} indexed files are gone from {gallery}; their vectors are kept "
                f"{RETAIN_DAYS} days, so the files that come back are hashed, not embedded again"
            )
        if cannot_write and (old is None or to_read or report.removed):  # before any reading or embedding
            if old is None:
                raise IndexProblem(f"the index in {root} cannot be made ({cannot_write})")
            raise IndexProblem(f"the index in {root} cannot be updated ({cannot_write}): "
                               f"{len(to_read) + report.removed} file(s) are new, changed or gone")  # fmt: skip
        journal = Journal.open(root, embedder.version) if not cannot_write else None
        try:
            fresh, new_vectors, new_position, unread = _read_and_embed(
                embedder, gallery, to_read, known, report, on_progress, journal,
            )  # fmt: skip
        finally:
            if journal is not None:
                journal.close()
        base = sum(rows for _, rows in old.meta["segments"]) if old is not None else 0
        added = EntryTable.from_rows([
            (relative, sha, *scan.found[relative], base + new_position[sha] if known.get(sha) is None else known.get(sha))
            for relative, sha in fresh.items()
        ])  # fmt: skip
        table = old.table.take(kept).plus(added) if old is not None else added
        report.changed = sum(1 for relative in fresh if old is not None and old.entry_of(relative) is not None)
        report.added = len(fresh) - report.changed
        failed = [  # remembered, never read again; not a file that could not be read (chmod leaves its mtime)
            {"path": path, "size": scan.found[path][0], "mtime_ns": scan.found[path][1], "reason": reason}
            for path, reason in report.skipped if path in scan.found and path not in unread
        ]  # fmt: skip
        if old is not None and not fresh and not report.removed and failed == old.meta.get("failed", []):
            report.seconds = time.time() - started
            if journal is not None:
                journal.discard()
            return old, report  # nothing changed: the live generation stays
        live_rows = np.unique(table.columns["row"])
        largest = max(old.meta.get("largest", len(old.table)) if old is not None else 0, len(live_rows))
        dropped = no_dropped() if old is None else still_dropped(
            old.table.columns, old.dropped, live_rows, largest, int(time.time())
        )  # fmt: skip
        table, dropped, segments, layout = arrange(root, old, table, dropped, new_vectors, embedder, flat_limit, report)
        dim = new_vectors.shape[1] if len(new_vectors) else old.meta["dim"] if old is not None else _text_dim(embedder)
        meta = {
            "model": embedder.name, "model_version": embedder.version, "dim": int(dim), "gallery": str(gallery),
            "gallery_device": os.stat(gallery).st_dev,
            "entries": len(table), "vectors": sum(rows for _, rows in segments), "dropped": len(dropped),
            "largest": largest, "updated": now_utc(), "failed": failed, "layout": layout.to_json(), "segments": segments,
        }  # fmt: skip
        write_generation(root, meta, table, dropped)
        if journal is not None:
            journal.discard()  # every vector it kept is in the live generation now
        index = load_index(root, gallery, embedder.name, embedder.version)
    report.seconds = time.time() - started
    return index, report


@contextmanager
def _written_to(root: Path):
    """A disk that fills up (or a folder that turns read-only) mid-update is one IndexProblem saying so, not a
    traceback; CURRENT has not moved, so searches still see the index as it was."""
    try:
        yield
    except OSError as exc:
        raise IndexProblem(
            f"the index in {root} could not be written ({exc.strerror or exc}); it is as it was before this update"
        ) from None


def waiting_note(data_dir: Path, gallery: Path, embedder) -> str:
    """What to say while another update of this gallery's index runs, naming the process that holds its lock (a
    session's update or a `captioner index` hung or stopped there is the one to look at) where it can be told."""
    holder = lock_holder(index_root(data_dir, Path(gallery).resolve(), embedder.name) / UPDATE_LOCK)
    return "another update of this index is running: waiting for it to finish" + (f" ({holder} holds it)" if holder else "")


@contextmanager
def _update_lock(root: Path, on_wait: Callable[[], None] | None = None):
    """Hold the index's update lock; yields why the index cannot be written ("" when it can). A folder that takes
    no lock file (read-only, full) is read without one: no other process can write it either."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / UPDATE_LOCK), timeout=3600)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another update (a session, the CLI) may run for an hour: say why nothing moves
            if on_wait:
                on_wait()
            lock.acquire()
    except OSError as exc:
        yield exc.strerror or str(exc)
        return
    try:
        yield ""
    finally:
        lock.release()


def _previous_index(root: Path, gallery: Path, embedder, report: UpdateReport) -> GalleryIndex | None:
    try:
        return load_index(root, gallery, embedder.name, embedder.version)
    except IndexProblem as problem:
        if str(problem) != "no index yet":
            report.rebuilt_because = str(problem)
        return None


def _absent(gallery: Path, scan, old: GalleryIndex, report: UpdateReport) -> bool:
    """Whether an empty gallery folder is a disk that is not mounted (the folder is on another device than when it
    was indexed, and is no mount point now): then the index is kept as it was, and the report says why. A gallery
    emptied on its own disk, or an empty disk mounted there, empties the index (the vectors are kept for a return)."""
    if scan.found or scan.skipped or scan.ignored or scan.unlisted:
        return False
    then = old.meta.get("gallery_device")
    if then is None or os.stat(gallery).st_dev == then or os.path.ismount(gallery):
        return False
    report.kept_because = (
        f"the gallery folder {gallery} is empty and is not on the disk it was on when it was indexed (a disk not "
        f"mounted?): the index keeps its {len(old):,} files as they were; update it again once the disk is back"
    )
    report.warnings.append(report.kept_because)
    return True


def _compare(scan, old: GalleryIndex | None, report: UpdateReport) -> tuple[np.ndarray, list[str], ShaRows]:
    """Positions (in the old table) of the entries kept as they are (same size and mtime), the files to read,
    and the row of every content the old index holds or dropped lately (a moved, copied or returning file keeps
    its vector)."""
    found = sorted(scan.found)
    if old is None:
        return np.zeros(0, np.int64), found, ShaRows(np.zeros(0, ENTRY_DTYPE))
    position = {path: i for i, path in enumerate(old.paths)}
    where = np.fromiter((position.get(path, -1) for path in found), np.int64, len(found))
    size_mtime = np.array([scan.found[path] for path in found], dtype=np.int64).reshape(-1, 2)
    same = where >= 0  # an old table of no entries has no row to look at: only paths it holds are compared
    columns = old.table.columns[where[same]]
    same[same] = (columns["size"] == size_mtime[same, 0]) & (columns["mtime_ns"] == size_mtime[same, 1])
    failed_before = {f["path"]: f for f in old.meta.get("failed", [])}
    to_read = []
    for i in np.flatnonzero(~same).tolist():
        relative, failed = found[i], failed_before.get(found[i])
        if failed and (failed["size"], failed["mtime_ns"]) == tuple(size_mtime[i]):
            report.skipped.append((relative, failed["reason"]))  # still the same bad file: not read again
        else:
            to_read.append(relative)
    # a folder that could not be listed (a network share that hiccuped) has not lost its files: keep what they were
    unlisted = np.array(_under(old.paths, scan.unlisted), np.int64)
    report.unchanged = int(same.sum()) + len(unlisted)
    report.removed = len(old.paths) - int((where >= 0).sum()) - len(unlisted)
    # sorting every content hash costs about 0.8 s a million files: only an update that reads files looks them up
    known = known_contents(old.table.columns, old.dropped) if to_read else ShaRows(np.zeros(0, ENTRY_DTYPE))
    return np.unique(np.concatenate([where[same], unlisted])), to_read, known


def _under(paths: list[str], folders: list[str]) -> list[int]:
    """Positions of the (sorted) paths inside these folders ("" is the whole gallery)."""
    inside = []
    for folder in folders:
        at = bisect.bisect_left(paths, folder)
        while at < len(paths) and paths[at].startswith(folder):
            inside.append(at)
            at += 1
    return inside


def _read_hashed(gallery: Path, relative: str):
    try:
        item = images.read_file(gallery / relative, name=relative)
    except ImageError as exc:
        return relative, exc
    item.sha256  # noqa: B018 (a cached property: hashed here, in the reading thread)
    return relative, item


def _read_and_embed(embedder, gallery, to_read, known, report, on_progress, journal: Journal | None):
    """Read each file once, reuse vectors of content already indexed (or in the journal of an interrupted update),
    embed the rest (streamed, never all in memory; each batch journaled). Returns relative -> sha of every file
    read, the new vectors, sha -> position in them, and the files not read."""
    from .embed import embed_images

    fresh: dict[str, str] = {}
    unread: set[str] = set()
    handed: list[str] = []  # sha of each input given to the embedder, in order
    started, done = time.time(), 0

    def new_content():
        nonlocal done
        for batch in images.prefetched(to_read, partial(_read_hashed, gallery), batch_size=64, workers=READERS):
            for relative, item in batch:
                if isinstance(item, ImageError):
                    report.skipped.append((relative, item.reason))
                    unread.add(relative)
                    continue
                fresh[relative] = item.sha256
                if known.get(item.sha256) is None and item.sha256 not in handed_set:
                    handed_set.add(item.sha256)
                    if item.sha256 in resumable:
                        resumed.append(item.sha256)
                        continue
                    handed.append(item.sha256)
                    yield item
            done += len(batch)
            if on_progress:
                on_progress(done, len(to_read), done / max(time.time() - started, 1e-9))

    handed_set: set[str] = set()
    resumable, resumed = journal.rows if journal else {}, []  # sha of each input the journal had, in order

    def keep(positions, vectors):
        journal.add([handed[position] for position in positions], vectors)

    embedded = embed_images(embedder, new_content(), on_vectors=keep if journal else None)
    failed = {handed[position]: reason for position, reason in embedded.errors.items()}
    for relative, sha in list(fresh.items()):
        if sha in failed:
            report.skipped.append((relative, failed[sha]))
            del fresh[relative]
    report.embedded, report.resumed = len(embedded.ok), len(resumed)
    report.reused = len(fresh) - report.embedded - report.resumed
    position = {sha: j for j, sha in enumerate(resumed)}
    position.update({handed[at]: len(resumed) + j for j, at in enumerate(embedded.ok)})
    if resumed:
        vectors = np.concatenate([np.stack([resumable[sha] for sha in resumed]), embedded.vectors])
    else:
        vectors = embedded.vectors
    return fresh, vectors, position, unread


def _text_dim(embedder) -> int:
    from .embed import embedding_dim

    return embedding_dim(embedder)
