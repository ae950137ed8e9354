"""Where an update's vectors go: a new segment beside the old ones, or (when due) every kept vector rewritten
into one new segment under a freshly planned layout. The vectors are rewritten only when the layout must change
(flat -> IVF past FLAT_LIMIT, an IVF grown RETRAIN_GROWTH-fold past what its centroids were trained on), when
more than DEAD_FRACTION of them belong to no file and are not kept as dropped (index_dropped.py), or (the small
ones merged) when there are more than MAX_SEGMENTS segments.
"""

from __future__ import annotations

import numpy as np

from .index_entries import EntryTable
from .index_store import read_trained, segment_vectors, write_segment, write_trained
from .search_structure import Layout, build_search_structure, plan_layout, segment_structure

MAX_SEGMENTS = 8
DEAD_FRACTION = 0.25
RETRAIN_GROWTH = 4
# Text queries to tune nprobe with, embedded by the index's own model, beside gallery-made text-like ones.
TUNING_PROMPTS = tuple(
    f"a photo of {thing}" for thing in (
        "a dog", "a cat", "a beach at sunset", "a city street at night", "a bowl of fruit", "a mountain lake",
        "people at a party", "a red car", "a forest in autumn", "a plate of food", "a child playing", "an old building",
        "a bird in the sky", "flowers in a garden", "a snowy road", "a boat on the sea", "a computer screen",
        "a bicycle", "a bedroom", "a football match", "a red circle", "a blue square", "a green triangle", "a portrait",
    )
)  # fmt: skip


def arrange(root, old, table: EntryTable, dropped: np.ndarray, new_vectors, embedder, flat_limit, report):
    """Where the vectors go: a new segment beside the old ones, or (when due) every kept vector rewritten.
    Returns the entry table and the dropped table (rows renumbered if rewritten), the segments and the layout."""
    old_segments = [tuple(segment) for segment in old.meta["segments"]] if old is not None else []
    total = sum(rows for _, rows in old_segments) + len(new_vectors)
    rows = np.union1d(table.columns["row"], dropped["row"])  # the files' vectors and the dropped ones kept
    kind, nlist = plan_layout(len(rows), flat_limit)
    layout = Layout.from_json(old.meta["layout"]) if old is not None else None
    why = None
    # an IVF that shrinks below the limit stays one (it still finds what it holds): a gallery hovering at the limit
    # would otherwise have every vector rewritten, and an IVF trained again, on each crossing
    if layout is not None and layout.kind == "flat" and kind == "ivf":
        why = f"{len(rows):,} vectors: the search structure changes from flat to ivf"
    elif layout is not None and layout.kind == "ivf" and len(rows) > RETRAIN_GROWTH * layout.trained_on:
        why = f"{len(rows):,} vectors, over {RETRAIN_GROWTH}x the {layout.trained_on:,} its IVF was trained on"
    elif total and (total - len(rows)) / total > DEAD_FRACTION:
        why = f"{total - len(rows):,} of {total:,} vectors belong to no file any more (nor to one that left lately)"
    trained = None
    if layout is not None and not why and layout.kind == "ivf":
        try:
            trained = read_trained(root, layout)
        except (OSError, RuntimeError):  # FAISS raises RuntimeError for a missing or garbled file
            why = f"the IVF centroids ({layout.centroids}) are missing or damaged: trained again from the stored vectors"
    if layout is None or why:
        report.rewritten_because = why
        parts = (segment_vectors(root, old.meta) if old is not None else []) + [new_vectors]
        table = table.with_rows(np.searchsorted(rows, table.columns["row"]))  # kept rows renumbered 0..n-1
        dropped = dropped.copy()
        dropped["row"] = np.searchsorted(rows, dropped["row"])
        segments, layout = _build(root, _gather(parts, rows, new_vectors.shape[1]), flat_limit, embedder)
        return table, dropped, segments, layout
    segments = list(old_segments)
    if len(new_vectors):
        segments.append((write_segment(root, new_vectors, _ivf_of(new_vectors, trained)), len(new_vectors)))
    if len(segments) > MAX_SEGMENTS:  # merge all but the first (largest) into one; rows keep their numbers
        merged = np.concatenate([np.asarray(v) for v in segment_vectors(root, {"segments": segments[1:]})])
        segments = [segments[0], (write_segment(root, merged, _ivf_of(merged, trained)), len(merged))]
    return table, dropped, segments, layout


def _ivf_of(vectors: np.ndarray, trained):
    return segment_structure(vectors, trained) if trained is not None else None


def _build(root, vectors: np.ndarray, flat_limit: int, embedder) -> tuple[list, Layout]:
    """Every kept vector in one new segment, under a freshly planned (and, for IVF, trained and tuned) layout."""
    prompts = None
    if plan_layout(len(vectors), flat_limit)[0] == "ivf":
        from .embed import embed_texts

        prompts = embed_texts(embedder, list(TUNING_PROMPTS))
    search, layout, trained = build_search_structure(vectors, flat_limit, prompts)
    if trained is None:
        return [(write_segment(root, vectors), len(vectors))], layout
    layout = Layout(**{**layout.to_json(), "centroids": write_trained(root, trained)})
    return [(write_segment(root, vectors, search.parts[0][0]), len(vectors))], layout


def _gather(parts: list[np.ndarray], rows: np.ndarray, dim: int) -> np.ndarray:
    """The vectors at these global rows of segments laid end to end."""
    offsets = np.cumsum([0] + [len(part) for part in parts])
    out = np.empty((len(rows), dim), np.float32)
    which = np.searchsorted(offsets, rows, side="right") - 1
    for s, part in enumerate(parts):
        mask = which == s
        if mask.any():
            out[mask] = np.asarray(part)[rows[mask] - offsets[s]]
    return out
