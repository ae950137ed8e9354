"""The gallery index on disk: immutable vector segments, and generations that name which segments are live.

data/index/<gallery+model slug>/
  segments/seg-*/vectors.npy   float32 [rows, dim], unit length; never changed once written
  segments/seg-*/ivf.index     the segment's IVF (IVF layouts), sharing the centroids in segments/ivf-*.index
  gen-*/meta.json              model, counts, layout, the segments in row order, files that failed
  gen-*/paths.json, entries.npy   one entry per file: path; sha256, size, mtime_ns, row (a global vector row)
  gen-*/dropped.npy            vectors of content that left the gallery, kept to be reused (index_dropped.py)
  CURRENT                      names the live generation; replaced atomically
An update writes its new segment and then a new generation, and only then moves CURRENT, so a search
always opens a complete index and a crash leaves strays that the next update removes. Adding files adds
a segment and rewrites the small entry table; it never rewrites the vectors already there.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .files import fsync_path, write_atomic
from .index_dropped import DROPPED_DTYPE, no_dropped
from .index_entries import ENTRY_DTYPE, Entry, EntryTable
from .search_structure import Layout, SegmentedSearch, read_ivf, segment_structure

FORMAT = 2
NEAR_DUPLICATE = 0.95


class IndexProblem(Exception):
    """An index on disk that is missing, corrupt, or made by another model; the message says which."""


@dataclass(frozen=True)
class Hit:
    """A search result, best first."""

    path: Path
    score: float
    sha256: str
    near_duplicate: bool = False


class GalleryIndex:
    """A loaded index generation: its entries, the search structure over its segments, and search."""

    def __init__(
        self, gallery: Path, meta: dict, table: EntryTable, search_structure: SegmentedSearch, segments: list,
        dropped: np.ndarray | None = None,
    ):  # fmt: skip
        self.gallery, self.meta, self.table, self.structure = gallery, meta, table, search_structure
        self.segments = segments  # each segment's vectors, memory-mapped, in row order
        self.dropped = no_dropped() if dropped is None else dropped  # kept for reuse, never searched

    def __len__(self) -> int:
        return len(self.table)

    @property
    def kind(self) -> str:
        return self.meta["layout"]["kind"]

    @property
    def paths(self) -> list[str]:
        return self.table.paths

    @cached_property
    def entries(self) -> list[Entry]:
        return [self.table.entry(i) for i in range(len(self.table))]

    @cached_property
    def live_vectors(self) -> int:
        """How many distinct vectors the files hold (files of one content share one)."""
        return len(np.unique(self.table.columns["row"]))

    def vector(self, row: int) -> np.ndarray:
        """The stored vector of a global row."""
        for vectors in self.segments:
            if row < len(vectors):
                return np.asarray(vectors[row], dtype=np.float32)
            row -= len(vectors)
        raise IndexError(row)

    def entry_of(self, path: str) -> Entry | None:
        """The entry of a gallery-relative path (paths are sorted: a binary search)."""
        i = bisect.bisect_left(self.table.paths, path)
        return self.table.entry(i) if i < len(self.table) and self.table.paths[i] == path else None

    def search(self, query: np.ndarray, k: int = 10, query_sha256: str | None = None, image_query: bool = False) -> list[Hit]:
        """The k gallery files most similar to a unit query vector, best first."""
        if not len(self.table) or k < 1:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        scores, rows = self.structure.search(query, k)
        if self.kind == "ivf" and (rows[0] < 0).any() and (rows[0] >= 0).sum() < self.live_vectors:
            # the lists probed held too few searchable vectors (those of files that left are kept, masked): all lists
            scores, rows = self.structure.search(query, k, every_list=True)
        hits = []
        for score, row in zip(scores[0], rows[0]):
            for i in self.table.with_row(int(row)) if row >= 0 else []:
                entry = self.table.entry(i)
                near = image_query and (score >= NEAR_DUPLICATE or entry.sha256 == query_sha256)
                hits.append(Hit(self.gallery / entry.path, float(score), entry.sha256, bool(near)))
        return hits[:k]


def index_root(data_dir: Path, gallery: Path, model: str) -> Path:
    """Where the index of this gallery made by this model spec lives."""
    slug = hashlib.sha1(f"{Path(gallery).resolve()}|{model}".encode()).hexdigest()[:16]
    return Path(data_dir) / "index" / slug


def current_generation(root: Path) -> str | None:
    """The live generation's folder name, if there is one."""
    try:
        return json.loads((root / "CURRENT").read_text())["generation"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_index(root: Path, gallery: Path, model: str, version: str) -> GalleryIndex:
    """Open the live generation, checking it is whole and made by this model; IndexProblem says what is wrong."""
    if not (root / "CURRENT").exists():
        raise IndexProblem("no index yet")
    name = current_generation(root)
    if name is None:
        raise IndexProblem("the index pointer is unreadable")
    try:
        meta = json.loads((root / name / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise IndexProblem(f"the index has format {meta.get('format')}, this app reads {FORMAT}")
        if (meta.get("model"), meta.get("model_version")) != (model, version):
            raise IndexProblem(f"the index was made by {meta.get('model')} ({meta.get('model_version')}), not by {model} ({version})")
        paths = json.loads((root / name / "paths.json").read_bytes().decode("utf-8", "surrogateescape"))
        table = EntryTable(paths, np.load(root / name / "entries.npy"))
        # a generation written before dropped vectors were kept has none
        dropped = np.load(root / name / "dropped.npy") if (root / name / "dropped.npy").exists() else no_dropped()
        return GalleryIndex(Path(gallery), meta, table, *_open_structure(root, meta, table, dropped), dropped)
    except IndexProblem:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError) as exc:  # numpy: EOFError for an empty file
        raise IndexProblem(f"the index files are damaged ({_first_line(exc)})") from None


def _open_structure(root: Path, meta: dict, table: EntryTable, dropped: np.ndarray) -> tuple[SegmentedSearch, list]:
    layout, dim = Layout.from_json(meta["layout"]), meta["dim"]
    if table.columns.dtype != ENTRY_DTYPE or len(table.columns) != len(table.paths) or len(table) != meta["entries"]:
        raise IndexProblem(f"the index counts disagree: {len(table)} entries, meta says {meta['entries']}")
    total = sum(rows for _, rows in meta["segments"])
    rows = table.columns["row"]
    if dropped.dtype != DROPPED_DTYPE:
        raise IndexProblem("the table of dropped vectors is damaged")
    for name, held in (("an index entry", rows), ("a dropped vector", dropped["row"])):
        if len(held) and not (0 <= held.min() and held.max() < total):
            raise IndexProblem(f"{name} points past the last vector")
    live = np.zeros(total, bool)
    live[rows] = True
    parts, segments, first = [], [], 0
    for name, count in meta["segments"]:
        folder = root / "segments" / name
        vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        if vectors.shape != (count, dim):
            raise IndexProblem(f"segment {name} holds {vectors.shape} vectors, the index says ({count}, {dim})")
        structure = read_ivf(folder / "ivf.index") if layout.kind == "ivf" else segment_structure(vectors)
        if structure.ntotal != count:
            raise IndexProblem(f"segment {name}'s FAISS file holds {structure.ntotal} vectors, not {count}")
        segment_live = live[first : first + count]
        parts.append((structure, first, None if segment_live.all() else segment_live.copy()))
        segments.append(vectors)
        first += count
    return SegmentedSearch(parts, layout.nprobe), segments


def segment_vectors(root: Path, meta: dict) -> list[np.ndarray]:
    """The vectors of each segment of a generation, memory-mapped, in row order."""
    return [np.load(root / "segments" / name / "vectors.npy", mmap_mode="r") for name, _ in meta["segments"]]


def write_segment(root: Path, vectors: np.ndarray, ivf=None) -> str:
    """A new immutable segment of these vectors, with the IVF that holds them in an IVF layout."""
    import faiss

    name = f"seg-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = root / "segments" / f".{name}.tmp"
    staging.mkdir(parents=True)
    np.save(staging / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    if ivf is not None:
        faiss.write_index(ivf, str(staging / "ivf.index"))
    _fsync_files(staging)
    staging.rename(root / "segments" / name)
    return name


def write_trained(root: Path, trained_ivf) -> str:
    """Store a layout's trained, empty IVF; its file name goes into the layout."""
    import faiss

    name = f"ivf-{uuid.uuid4().hex[:12]}.index"
    (root / "segments").mkdir(parents=True, exist_ok=True)
    faiss.write_index(trained_ivf, str(root / "segments" / f".{name}.tmp"))
    _fsync_files(root / "segments", only=f".{name}.tmp")
    os.replace(root / "segments" / f".{name}.tmp", root / "segments" / name)
    return name


def read_trained(root: Path, layout: Layout):
    return read_ivf(root / "segments" / layout.centroids, mmap=False)


def write_generation(root: Path, meta: dict, table: EntryTable, dropped: np.ndarray) -> str:
    """Write a complete generation, point CURRENT at it, then drop what no kept generation uses."""
    name = f"gen-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    staging = root / f".{name}.tmp"
    staging.mkdir()
    # a file name that is not UTF-8 (Linux allows any bytes) is kept as its own bytes, as os.fsdecode read it
    (staging / "paths.json").write_bytes(json.dumps(table.paths, ensure_ascii=False).encode("utf-8", "surrogateescape"))
    np.save(staging / "entries.npy", table.columns)
    np.save(staging / "dropped.npy", dropped)
    (staging / "meta.json").write_text(json.dumps({**meta, "format": FORMAT, "generation": name}, indent=1) + "\n")
    _fsync_files(staging)
    staging.rename(root / name)
    previous = current_generation(root)
    write_atomic(root / "CURRENT", json.dumps({"generation": name}).encode())
    _prune(root, keep={name, previous})
    return name


def _prune(root: Path, keep: set) -> None:
    """Remove generations other than keep (the previous one stays for searches that opened it just now),
    and the segments and trained IVFs that no kept generation names."""
    used = set()
    for generation in root.glob("gen-*"):
        if generation.name not in keep or _older_format(generation):  # an older format: no search here can open it
            shutil.rmtree(generation, ignore_errors=True)
            continue
        try:
            meta = json.loads((generation / "meta.json").read_text())
            used.update(name for name, _ in meta["segments"])
            used.add(meta["layout"].get("centroids", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return  # a kept generation that cannot be read: keep every segment rather than guess
    for item in (root / "segments").glob("*") if (root / "segments").exists() else []:
        if item.name not in used and not item.name.startswith("."):
            shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)


def remove_strays(root: Path) -> None:
    """What an update that crashed before it finished left behind."""
    for stray in [*root.glob(".gen-*.tmp"), *(root / "segments").glob(".*.tmp")]:
        shutil.rmtree(stray, ignore_errors=True) if stray.is_dir() else stray.unlink(missing_ok=True)


def _older_format(generation: Path) -> bool:
    """A generation an earlier version of the app wrote in another format (the index rebuilt from it says so)."""
    try:
        return json.loads((generation / "meta.json").read_text()).get("format") != FORMAT
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: not known to be of another format, so kept as any unreadable one is


def _fsync_files(folder: Path, only: str | None = None) -> None:
    for item in folder.iterdir():
        if item.is_file() and (only is None or item.name == only):
            fsync_path(item)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
