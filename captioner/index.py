"""The gallery index: CLIP vectors of every image under a folder, updated incrementally, searched with FAISS.

On disk (data/index/<gallery+model slug>/): generation folders `gen-*` each holding meta.json,
entries.jsonl, vectors.npy and (large galleries) faiss.index, and CURRENT naming the live generation.
An update writes a new generation and then replaces CURRENT atomically, so a search always opens a
complete index; a crash mid-update leaves a stray folder that the next update removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock

from .files import now_utc, write_atomic
from .images import MAX_FILE_BYTES, UPLOAD_TYPES

FORMAT = 1
FLAT_LIMIT = 20_000  # up to here an exact scan answers a query in a few ms; above it, IVF (see bench/search_latency.py)
NEAR_DUPLICATE = 0.95
RECALL_TARGET = 0.97


class IndexProblem(Exception):
    """An index on disk that is missing, corrupt, or made by another model; the message says which."""


@dataclass(frozen=True)
class Entry:
    """One gallery file: where it is, what it holds, and which vector row is its embedding."""

    path: str  # relative to the gallery folder, with forward slashes
    sha256: str
    size: int
    mtime_ns: int
    row: int


@dataclass(frozen=True)
class Hit:
    """A search result, best first."""

    path: Path
    score: float
    sha256: str
    near_duplicate: bool = False


@dataclass
class UpdateReport:
    """What an update did, for the page and the CLI."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0  # same content already embedded under another path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # image files that failed: (path, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # other files, link loops: (path, reason)
    rebuilt_because: str | None = None
    seconds: float = 0.0


class GalleryIndex:
    """A loaded index generation: entries, the FAISS structure over their vectors, and search."""

    def __init__(self, gallery: Path, meta: dict, entries: list[Entry], search_index):
        self.gallery, self.meta, self.entries, self._faiss = gallery, meta, entries, search_index
        self._paths_by_row: dict[int, list[Entry]] = {}
        for entry in entries:
            self._paths_by_row.setdefault(entry.row, []).append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def search(self, query: np.ndarray, k: int = 10, query_sha256: str | None = None, image_query: bool = False) -> list[Hit]:
        """The k gallery files most similar to a unit query vector, best first."""
        if not self.entries or k < 1:
            return []
        scores, rows = self._faiss.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), min(k, self._faiss.ntotal))
        hits = []
        for score, row in zip(scores[0], rows[0]):
            for entry in self._paths_by_row.get(int(row), []):
                near = image_query and (score >= NEAR_DUPLICATE or entry.sha256 == query_sha256)
                hits.append(Hit(self.gallery / entry.path, float(score), entry.sha256, bool(near)))
        return hits[:k]


def index_root(data_dir: Path, gallery: Path, model: str) -> Path:
    """Where the index of this gallery made by this model spec lives."""
    slug = hashlib.sha1(f"{Path(gallery).resolve()}|{model}".encode()).hexdigest()[:16]
    return Path(data_dir) / "index" / slug


def load_index(root: Path, gallery: Path, model: str, version: str) -> GalleryIndex:
    """Open the live generation, checking it is whole and made by this model; IndexProblem says what is wrong."""
    try:
        generation = root / json.loads((root / "CURRENT").read_text())["generation"]
    except FileNotFoundError:
        raise IndexProblem("no index yet") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexProblem(f"the index pointer is unreadable ({exc})") from None
    try:
        meta = json.loads((generation / "meta.json").read_text())
        entries = [Entry(**json.loads(line)) for line in (generation / "entries.jsonl").read_text().splitlines() if line]
        vectors = np.load(generation / "vectors.npy", mmap_mode="r")
    except (OSError, ValueError, TypeError) as exc:
        raise IndexProblem(f"the index files are damaged ({exc})") from None
    if meta.get("format") != FORMAT:
        raise IndexProblem(f"the index has format {meta.get('format')}, this app reads {FORMAT}")
    if (meta.get("model"), meta.get("model_version")) != (model, version):
        raise IndexProblem(
            f"the index was made by {meta.get('model')} ({meta.get('model_version')}), not by {model} ({version})"
        )
    if vectors.ndim != 2 or vectors.shape != (meta.get("vectors"), meta.get("dim")) or len(entries) != meta.get("entries"):
        raise IndexProblem(
            f"the index counts disagree: {len(entries)} entries and {vectors.shape} vectors, "
            f"meta says {meta.get('entries')} and ({meta.get('vectors')}, {meta.get('dim')})"
        )
    if entries and not 0 <= max(e.row for e in entries) < len(vectors):
        raise IndexProblem("an index entry points past the last vector")
    return GalleryIndex(Path(gallery), meta, entries, _open_search_structure(generation, meta, vectors))


def _open_search_structure(generation: Path, meta: dict, vectors: np.ndarray):
    import faiss

    if meta["kind"] == "flat":
        flat = faiss.IndexFlatIP(meta["dim"])
        if len(vectors):
            flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return flat
    try:
        structure = faiss.read_index(str(generation / "faiss.index"))
    except RuntimeError as exc:
        raise IndexProblem(f"the FAISS file is damaged ({str(exc).splitlines()[0]})") from None
    if structure.ntotal != len(vectors):
        raise IndexProblem(f"the FAISS file holds {structure.ntotal} vectors, the index {len(vectors)}")
    structure.nprobe = meta["nprobe"]
    return structure


def build_search_structure(vectors: np.ndarray, flat_limit: int = FLAT_LIMIT):
    """Exact inner product while small; IVF above flat_limit, its nprobe tuned to RECALL_TARGET."""
    import faiss

    n, dim = vectors.shape
    if n <= flat_limit:
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        return flat, {"kind": "flat"}
    nlist = int(min(65_536, max(64, 4 * np.sqrt(n))))
    rng = np.random.default_rng(0)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[rng.choice(n, min(n, 40 * nlist), replace=False)])
    ivf.add(vectors)
    ivf.nprobe = nprobe = _tune_nprobe(ivf, vectors, rng)
    return ivf, {"kind": "ivf", "nlist": nlist, "nprobe": nprobe}


def _tune_nprobe(ivf, vectors: np.ndarray, rng) -> int:
    """The smallest nprobe whose recall@10 against an exact scan reaches RECALL_TARGET on held-out queries."""
    import faiss

    queries = vectors[rng.choice(len(vectors), 100, replace=False)] + rng.normal(0, 0.02, (100, vectors.shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    truth = exact.search(queries, 10)[1]
    for nprobe in (4, 8, 16, 32, 64, 128, 256, 512):
        ivf.nprobe = nprobe
        found = ivf.search(queries, 10)[1]
        if np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)]) >= RECALL_TARGET:
            return nprobe
    return ivf.nlist  # a full scan of every list: exact


def scan_gallery(gallery: Path) -> tuple[dict[str, os.stat_result], list[tuple[str, str]], list[tuple[str, str]]]:
    """Image files under the gallery (relative path -> stat), the ones that cannot be used, and the other
    files, each with why. Follows symbolic links to folders but never into one it is already inside (a loop)."""
    gallery = Path(gallery)
    if not gallery.exists():
        raise IndexProblem(f"the gallery folder {gallery} does not exist")
    if not gallery.is_dir():
        raise IndexProblem(f"the gallery {gallery} is not a folder")
    found, skipped, ignored, seen = {}, [], [], set()

    def note_error(error: OSError):
        skipped.append((os.path.relpath(error.filename or gallery, gallery), f"cannot be read ({error.strerror})"))

    for folder, subfolders, files in os.walk(gallery, followlinks=True, onerror=note_error):
        real = os.stat(folder)
        if (real.st_dev, real.st_ino) in seen:
            ignored.append((os.path.relpath(folder, gallery), "a symbolic link back into the gallery (loop); not followed"))
            subfolders[:] = []
            continue
        seen.add((real.st_dev, real.st_ino))
        subfolders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            relative = path.relative_to(gallery).as_posix()
            if name.startswith("."):
                continue
            if path.suffix.lower().lstrip(".") not in UPLOAD_TYPES:
                ignored.append((relative, "not an image file type"))
                continue
            try:
                stat = path.stat()
            except OSError as exc:
                skipped.append((relative, f"cannot be read ({exc.strerror})"))
                continue
            if stat.st_size > MAX_FILE_BYTES:
                skipped.append((relative, f"file is {stat.st_size / 2**20:.0f} MiB, over the limit"))
            elif stat.st_size == 0:
                skipped.append((relative, "empty file (0 bytes)"))
            else:
                found[relative] = stat
    return found, skipped, ignored


def _sha256_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def update_index(
    embedder, gallery: Path, data_dir: Path, on_progress: Callable[[int, int, float], None] | None = None,
    flat_limit: int = FLAT_LIMIT,
) -> tuple[GalleryIndex, UpdateReport]:  # fmt: skip
    """Bring the gallery's index up to date: embed new and changed files, drop deleted ones, skip the rest."""
    started, gallery = time.time(), Path(gallery).resolve()
    root = index_root(data_dir, gallery, embedder.name)
    root.mkdir(parents=True, exist_ok=True)
    report = UpdateReport()
    with FileLock(str(root / "update.lock"), timeout=3600):
        _remove_stray_generations(root)
        try:
            old = load_index(root, gallery, embedder.name, embedder.version)
            old_vectors = np.load(root / old.meta["generation"] / "vectors.npy", mmap_mode="r")
        except IndexProblem as problem:
            old, old_vectors = None, np.zeros((0, 0), np.float32)
            if str(problem) != "no index yet":
                report.rebuilt_because = str(problem)
        found, report.skipped, report.ignored = scan_gallery(gallery)
        old_entries = {e.path: e for e in old.entries} if old else {}
        old_failed = {f["path"]: f for f in (old.meta.get("failed", []) if old else [])}
        vector_of: dict[str, np.ndarray] = {}  # sha256 -> vector, for content already embedded
        keep: dict[str, tuple[str, os.stat_result]] = {}
        to_hash = []
        for relative, stat in found.items():
            previous, failed = old_entries.get(relative), old_failed.get(relative)
            if failed and (failed["size"], failed["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                report.skipped.append((relative, failed["reason"]))  # still the same bad file: not read again
            elif previous and (previous.size, previous.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                keep[relative] = (previous.sha256, stat)
                vector_of[previous.sha256] = old_vectors[previous.row]
                report.unchanged += 1
            else:
                to_hash.append(relative)
        report.removed = len(set(old_entries) - set(found))
        if old:
            for entry in old.entries:  # content moved or copied keeps its vector
                vector_of.setdefault(entry.sha256, old_vectors[entry.row])
        with ThreadPoolExecutor(4) as pool:
            hashes = dict(zip(to_hash, pool.map(lambda rel: _sha256_of(gallery / rel), to_hash)))
        fresh: dict[str, str] = {}  # sha256 -> first relative path holding it
        for relative in to_hash:
            sha = hashes[relative]
            if sha is None:
                report.skipped.append((relative, "cannot be read"))
                continue
            keep[relative] = (sha, found[relative])
            if sha in vector_of or sha in fresh:
                report.reused += 1
            else:
                fresh[sha] = relative
        vector_of.update(_embed_new(embedder, gallery, fresh, report, on_progress))
        entries, vectors = _assemble(keep, vector_of, report, embedder)
        fresh_paths = set(to_hash) & {entry.path for entry in entries}
        report.changed = len(fresh_paths & set(old_entries))
        report.added = len(fresh_paths) - report.changed
        failed = [
            {"path": path, "size": found[path].st_size, "mtime_ns": found[path].st_mtime_ns, "reason": reason}
            for path, reason in report.skipped if path in found
        ]  # fmt: skip
        index = _write_generation(root, gallery, embedder, entries, vectors, flat_limit, failed)
    report.seconds = time.time() - started
    return index, report


def _embed_new(embedder, gallery, fresh: dict[str, str], report, on_progress) -> dict[str, np.ndarray]:
    from .embed import embed_images

    shas, paths = list(fresh), [gallery / fresh[sha] for sha in fresh]
    started = time.time()

    def progress(done, total):
        if on_progress:
            on_progress(done, total, done / max(time.time() - started, 1e-9))

    embedded = embed_images(embedder, paths, on_progress=progress)
    for position, reason in embedded.errors.items():
        report.skipped.append((fresh[shas[position]], reason))
    report.embedded = len(embedded.ok)
    return {shas[position]: vector for position, vector in zip(embedded.ok, embedded.vectors)}


def _assemble(keep, vector_of, report, embedder) -> tuple[list[Entry], np.ndarray]:
    rows: dict[str, int] = {}
    vectors, entries = [], []
    for relative in sorted(keep):
        sha, stat = keep[relative]
        if sha not in vector_of:
            continue  # its content could not be embedded: already listed as skipped
        if sha not in rows:
            rows[sha] = len(vectors)
            vectors.append(np.asarray(vector_of[sha], dtype=np.float32))
        entries.append(Entry(relative, sha, stat.st_size, stat.st_mtime_ns, rows[sha]))
    dim = len(vectors[0]) if vectors else int(embedder.model.text_projection.shape[-1])
    return entries, (np.stack(vectors) if vectors else np.zeros((0, dim), np.float32))


def _write_generation(root: Path, gallery: Path, embedder, entries, vectors, flat_limit: int, failed: list) -> GalleryIndex:
    name = f"gen-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    staging = root / f".{name}.tmp"
    staging.mkdir()
    structure, layout = build_search_structure(np.ascontiguousarray(vectors), flat_limit)
    meta = {
        "format": FORMAT, "model": embedder.name, "model_version": embedder.version, "dim": int(vectors.shape[1]),
        "gallery": str(gallery), "entries": len(entries), "vectors": int(len(vectors)), "updated": now_utc(),
        "generation": name, "failed": failed, **layout,
    }  # fmt: skip
    np.save(staging / "vectors.npy", vectors)
    (staging / "entries.jsonl").write_text("".join(json.dumps(asdict(e)) + "\n" for e in entries))
    if layout["kind"] != "flat":
        import faiss

        faiss.write_index(structure, str(staging / "faiss.index"))
    (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for item in staging.iterdir():
        with open(item, "rb+") as handle:
            os.fsync(handle.fileno())
    staging.rename(root / name)
    previous = current_generation(root)
    write_atomic(root / "CURRENT", json.dumps({"generation": name}).encode())
    for old in root.glob("gen-*"):
        if old.name not in (name, previous):  # the previous one stays for searches that opened it just now
            shutil.rmtree(old, ignore_errors=True)
    return GalleryIndex(gallery, meta, entries, structure)


def current_generation(root: Path) -> str | None:
    """The live generation's folder name, if there is one."""
    try:
        return json.loads((root / "CURRENT").read_text())["generation"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_stray_generations(root: Path) -> None:
    """Folders of an update that crashed before it finished."""
    for stray in root.glob(".gen-*.tmp"):
        shutil.rmtree(stray, ignore_errors=True)


def open_or_build(embedder, gallery: Path, data_dir: Path, on_progress=None) -> tuple[GalleryIndex, UpdateReport | None]:
    """The gallery's index as it is; built (or rebuilt, saying why) when missing, damaged or made by another model."""
    root = index_root(data_dir, gallery, embedder.name)
    try:
        return load_index(root, Path(gallery).resolve(), embedder.name, embedder.version), None
    except IndexProblem:
        return update_index(embedder, gallery, data_dir, on_progress)


class SearchError(ValueError):
    """A query that cannot be searched; the message says why."""


def search_text(embedder, index: GalleryIndex, text: str, k: int = 10) -> list[Hit]:
    """Gallery images best matching a text."""
    from .embed import embed_texts

    if not (text or "").strip():
        raise SearchError("the text query is empty")
    return index.search(embed_texts(embedder, [text.strip()])[0], k)


def search_image(embedder, index: GalleryIndex, source, k: int = 10) -> list[Hit]:
    """Gallery images most similar to an image (an ImageInput); near-duplicates of it are marked."""
    from .embed import embed_images
    from .images import ImageError

    embedded = embed_images(embedder, [source])
    if embedded.errors:
        raise ImageError(source.name, embedded.errors[0])
    return index.search(embedded.vectors[0], k, query_sha256=source.sha256, image_query=True)
