"""Search latency: this project's gallery search structure against an exact scan, on synthetic 512-d vectors.

    python bench/search_latency.py                  # 1e5 and 1e6 vectors
    python bench/search_latency.py --sizes 100000   # just one size

Vectors are drawn around random centres (about 1,000 per million), as embeddings of real image
collections are: similar pictures close together. Uniform random vectors have no such structure: every
vector is almost orthogonal to every other, so no index finds their top-10 faster than a full scan;
--uniform measures that case too. Latency is per single query (one thread of the app's search), p50/p99
over 300 queries drawn from the same distribution, none of them in the data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioner.index import FLAT_LIMIT, build_search_structure  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--uniform", action="store_true", help="also measure uniform random vectors")
    return parser.parse_args()


def clustered(rng, n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def uniform(rng, n: int, dim: int) -> np.ndarray:
    out = rng.standard_normal((n, dim), dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def single_query_latency(structure, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(structure.search(query[None], 10)[1][0])
        times.append(time.perf_counter() - started)
    return np.array(found), np.array(times) * 1000


def measure(name: str, data: np.ndarray, queries: np.ndarray) -> None:
    import faiss

    started = time.perf_counter()
    ours, layout = build_search_structure(data)
    build_s = time.perf_counter() - started
    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    truth, exact_ms = single_query_latency(exact, queries)
    found, ours_ms = single_query_latency(ours, queries)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
    per_vector = faiss.serialize_index(ours).nbytes / len(data)
    kind = layout["kind"] + (f" nlist={layout['nlist']} nprobe={layout['nprobe']}" if layout["kind"] == "ivf" else "")
    print(f"{name:<22}{'exact scan':<34}{np.median(exact_ms):>8.2f}{np.percentile(exact_ms, 99):>8.2f}{1.0:>10.3f}{data.shape[1] * 4:>10.0f}")
    print(f"{'':<22}{'captioner (' + kind + ')':<34}{np.median(ours_ms):>8.2f}{np.percentile(ours_ms, 99):>8.2f}"
          f"{recall:>10.3f}{per_vector:>10.0f}   built in {build_s:.0f}s")  # fmt: skip


def main():
    import faiss

    args = parse_args()
    print(f"{faiss.omp_get_max_threads()} threads; flat (exact) up to {FLAT_LIMIT:,} vectors, IVF above")
    print(f"{'vectors':<22}{'way':<34}{'p50 ms':>8}{'p99 ms':>8}{'recall@10':>10}{'B/vector':>10}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        centres = uniform(rng, max(100, n // 1000), args.dim)
        measure(f"{n:,} clustered", clustered(rng, n, args.dim, centres), clustered(rng, args.queries, args.dim, centres))
        if args.uniform:
            measure(f"{n:,} uniform", uniform(rng, n, args.dim), uniform(rng, args.queries, args.dim))


if __name__ == "__main__":
    main()
