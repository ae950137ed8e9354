"""The FAISS structures an index searches: exact inner product while small, IVF above FLAT_LIMIT.

An index's vectors live in segments (see index_store.py). Each segment gets its own structure; all IVF
segments of one layout share the coarse centroids trained when the layout was built, so a new segment
is an IVF too at the cost of assigning its own vectors. A search asks every segment for its top k
(skipping rows no file uses any more) and merges. nprobe is tuned at build time on text-like queries:
CLIP puts a text far from every image (cosine about 0.3 to its best match, where a near copy of a
gallery image scores 0.9), so its neighbours are spread over more IVF cells than an image query's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FLAT_LIMIT = 20_000  # up to here an exact scan answers in a few ms; above it, IVF (see bench/search_latency.py)
RECALL_TARGET = 0.97
SYNTHETIC_RECALL_TARGET = 0.99  # on gallery-made text-like queries, and then NPROBE_MARGIN times the probes:
NPROBE_MARGIN = 3  # real text queries scatter wider (bench/search_latency.py: 1e6 vectors need 3x what these do)
TEXT_TOP1_COSINE = 0.3  # a CLIP text query's typical cosine to its best image
NPROBE_STEPS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TUNING_QUERIES = 200


@dataclass(frozen=True)
class Layout:
    """How an index's segments are searched: flat, or IVF with nlist cells trained on trained_on vectors."""

    kind: str = "flat"
    nlist: int = 0
    nprobe: int = 0
    trained_on: int = 0
    centroids: str = ""  # file (in the segments folder) of the trained, empty IVF every segment copies

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Layout":
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def plan_layout(n: int, flat_limit: int = FLAT_LIMIT) -> tuple[str, int]:
    """Flat up to flat_limit vectors; above, IVF with about 4 sqrt(n) cells (and 40 vectors to train each)."""
    if n <= flat_limit:
        return "flat", 0
    return "ivf", max(1, min(int(min(65_536, max(64, 4 * np.sqrt(n)))), n // 40))


def train_ivf(vectors: np.ndarray, nlist: int, seed: int = 0):
    """An empty IVF whose coarse centroids are trained on (a sample of) these vectors."""
    import faiss

    dim = vectors.shape[1]
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(len(vectors), min(len(vectors), 40 * nlist), replace=False))]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
    return ivf


def segment_structure(vectors: np.ndarray, trained_ivf=None):
    """A segment's own structure: a copy of the trained IVF holding its vectors, or an exact flat index."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if trained_ivf is None:
        structure = faiss.IndexFlatIP(vectors.shape[1])
    else:
        structure = faiss.clone_index(trained_ivf)
        structure.reset()
    if len(vectors):
        structure.add(vectors)
    return structure


def read_ivf(path: Path, mmap: bool = True):
    """An IVF file; memory-mapped by default, so opening it costs little and memory holds only what is read."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    lists = faiss.downcast_InvertedLists(index.invlists)
    if isinstance(lists, faiss.OnDiskInvertedLists):
        # FAISS would start 32 threads per search (per segment) to touch the probed lists; the page cache holds
        # them once warm, and starting the threads costs 3-4x the search itself
        lists.prefetch_nthread = 0
    return index


class SegmentedSearch:
    """Top-k inner product over several segments, as one index of global rows."""

    def __init__(self, parts: list[tuple[object, int, np.ndarray | None]], nprobe: int = 0):
        # parts: (structure, first global row, bitmap of live rows or None when every row is live)
        self.parts, self.nprobe = parts, nprobe
        self._params = [self._search_params(structure, live) for structure, _, live in parts]

    @property
    def ntotal(self) -> int:
        return sum(structure.ntotal for structure, _, _ in self.parts)

    def _search_params(self, structure, live, nprobe: int | None = None):
        import faiss

        selector = None
        if live is not None:
            bits = np.packbits(live, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(bits))
            selector.bits_owner = bits  # the selector points into this array: keep it alive with it
        if isinstance(structure, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(nprobe=max(1, min(nprobe or self.nprobe, structure.nlist)))
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
            params.selector_owner = selector
        return params

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = nprobe
        self._params = [self._search_params(structure, live) for structure, _, live in self.parts]

    def search(self, queries: np.ndarray, k: int, every_list: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Scores and global rows [len(queries), k], best first; rows -1 where fewer than k exist (or, in an IVF,
        were found in the lists probed; every_list probes them all: exact)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, queries.shape[-1])
        scores, rows = [], []
        if every_list:
            all_lists = [self._search_params(structure, live, 1 << 30) for structure, _, live in self.parts]
        for (structure, first, _), params in zip(self.parts, all_lists if every_list else self._params):
            if structure.ntotal == 0:
                continue
            found_scores, found_rows = structure.search(queries, k, params=params)
            scores.append(found_scores)
            rows.append(np.where(found_rows >= 0, found_rows + first, -1))
        if not scores:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        scores, rows = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)
        scores = np.where(rows >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def build_search_structure(vectors: np.ndarray, flat_limit: int = FLAT_LIMIT, text_queries: np.ndarray | None = None):
    """One segment over all these vectors: exact while small; above flat_limit an IVF whose nprobe is the
    smallest reaching SYNTHETIC_RECALL_TARGET on gallery-made text-like queries, times NPROBE_MARGIN, and
    at least what reaches RECALL_TARGET on text_queries (the model's own embeddings of a few prompts, if given).
    Returns the search, its Layout, and the trained empty IVF (None for flat)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    kind, nlist = plan_layout(len(vectors), flat_limit)
    if kind == "flat":
        return SegmentedSearch([(segment_structure(vectors), 0, None)]), Layout("flat"), None
    trained = train_ivf(vectors, nlist)
    search = SegmentedSearch([(segment_structure(vectors, trained), 0, None)])
    synthetic = tune_nprobe(search, vectors, text_like_queries(vectors), nlist, SYNTHETIC_RECALL_TARGET)
    nprobe = min(nlist, NPROBE_MARGIN * synthetic)
    if text_queries is not None and len(text_queries):
        real = _unit(np.asarray(text_queries, np.float32))
        nprobe = max(nprobe, tune_nprobe(search, vectors, real, nlist, RECALL_TARGET))
    search.set_nprobe(nprobe)
    return search, Layout("ivf", nlist, nprobe, len(vectors)), trained


def text_like_queries(vectors: np.ndarray, n: int = TUNING_QUERIES, seed: int = 1) -> np.ndarray:
    """Queries shaped like CLIP text queries, made from the gallery alone. A text names a concept many images
    share, not one image: each query is the mean of a random image's neighbourhood, without the collection's
    common direction, blurred with noise until its best match scores TEXT_TOP1_COSINE."""
    import faiss

    rng = np.random.default_rng(seed)
    sample = np.ascontiguousarray(vectors[np.sort(rng.choice(len(vectors), min(len(vectors), 50_000), replace=False))])
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(sample)
    seeds = sample[rng.choice(len(sample), min(n, len(sample)), replace=False)]
    neighbourhood = exact.search(seeds, min(32, len(sample)))[1]
    topic = sample[neighbourhood].mean(axis=1) - sample.mean(axis=0)
    topic /= np.maximum(np.linalg.norm(topic, axis=1, keepdims=True), 1e-12)
    noise = rng.standard_normal(topic.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    low, high = 0.0, 20.0  # weight of the noise: found by bisection on the median best score
    for _ in range(20):
        weight = (low + high) / 2
        if np.median(exact.search(_unit(topic + weight * noise)[:50], 1)[0][:, 0]) > TEXT_TOP1_COSINE:
            low = weight
        else:
            high = weight
    return _unit(topic + low * noise)


def tune_nprobe(search: SegmentedSearch, vectors: np.ndarray, queries: np.ndarray, nlist: int, target: float) -> int:
    """The smallest nprobe whose recall@10 against an exact scan of vectors (the search's rows, in order)
    reaches target on these queries."""
    import faiss

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    truth = exact.search(queries, 10)[1]
    for nprobe in [step for step in NPROBE_STEPS if step < nlist] + [nlist]:
        search.set_nprobe(nprobe)
        if recall_at_10(truth, search.search(queries, 10)[1]) >= target:
            return nprobe
    return nlist


def recall_at_10(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)]))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)
