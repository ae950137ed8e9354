"""The gallery index: CLIP vectors of every image under a folder, updated incrementally, searched with FAISS.

Split by job: gallery_scan.py (which files), index_entries.py (the table of indexed files),
index_store.py (the files on disk, opening an index),
search_structure.py (FAISS: flat or IVF, nprobe tuning, search across segments), index_update.py
(bringing an index up to date), index_arrange.py (where its vectors go: new segment or rewrite), index_dropped.py
(vectors of files that left, kept for their return). This module is the public face: opening, and answering queries.
"""

from __future__ import annotations

from pathlib import Path

from .embed import embed_query_image, embed_texts, text_is_cut
from .images import ImageInput
from .index_entries import Entry
from .index_store import FORMAT, NEAR_DUPLICATE, GalleryIndex, Hit, IndexProblem, current_generation, index_root, load_index
from .index_update import UpdateReport, update_index, waiting_note
from .search_structure import FLAT_LIMIT, RECALL_TARGET, build_search_structure

__all__ = [  # the index's public names, in one place
    "FLAT_LIMIT", "FORMAT", "NEAR_DUPLICATE", "RECALL_TARGET", "Entry", "GalleryIndex", "Hit", "IndexProblem",
    "SearchError", "UpdateReport", "build_search_structure", "current_generation", "index_root", "load_index",
    "open_or_build", "search_gallery_image", "search_image", "search_text", "text_is_cut", "update_index",
    "waiting_note",
]  # fmt: skip


class SearchError(ValueError):
    """A query that cannot be searched; the message says why."""


def open_or_build(
    embedder, gallery: Path, data_dir: Path, on_progress=None, follow_links: bool = False, on_wait=None
) -> tuple[GalleryIndex, UpdateReport | None]:
    """The gallery's index as it is; built (or rebuilt, saying why) when missing, damaged or made by another model."""
    root = index_root(data_dir, gallery, embedder.name)
    try:
        return load_index(root, Path(gallery).resolve(), embedder.name, embedder.version), None
    except IndexProblem:
        return update_index(embedder, gallery, data_dir, on_progress, follow_links=follow_links, on_wait=on_wait)


def search_text(embedder, index: GalleryIndex, text: str, k: int = 10) -> list[Hit]:
    """Gallery images best matching a text."""
    if not (text or "").strip():
        raise SearchError("the text query is empty")
    return index.search(embed_texts(embedder, [text.strip()])[0], k)


def search_image(embedder, index: GalleryIndex, source: ImageInput, k: int = 10) -> list[Hit]:
    """Gallery images most similar to an image (an ImageInput); near-duplicates of it are marked."""
    return index.search(embed_query_image(embedder, source), k, query_sha256=source.sha256, image_query=True)


def search_gallery_image(index: GalleryIndex, path: str, k: int = 10) -> list[Hit]:
    """Gallery images most similar to one already in the index: its stored vector, nothing decoded again."""
    entry = index.entry_of(path)
    if entry is None:
        raise SearchError(f"{path} is not in the index")
    return index.search(index.vector(entry.row), k, query_sha256=entry.sha256, image_query=True)
