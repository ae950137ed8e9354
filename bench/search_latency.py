"""Search latency and recall: this project's search structure against an exact scan, and a text query end to
end (text encoding, index opening, FAISS) against the plain way, in one run.

    python -m bench.search_latency                          # 1e5 and 1e6 vectors, ViT-B-32 text tower (random weights)
    python -m bench.search_latency --sizes 100000 --model demo

Vectors are CLIP-like (synthetic, 512-d): every image shares a common direction (CLIP's "cone": two random
photos score about 0.35), belongs to one of about n/1000 topics, plus noise. Text queries are made the way
CLIP places a text: the topic seen through an offset shared by all texts (the modality gap), so that a
text's best image scores about 0.3 and its top 10 lie close together; the index tunes nprobe on its own
gallery-made text-like queries, never on these. Image queries are fresh images of a topic. Latency is per
single query, p50/p99 over 300 queries; recall@10 is against the exact scan.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


from captioner.index_entries import Entry, EntryTable
from captioner.index_dropped import no_dropped
from captioner.index_store import load_index, write_generation, write_segment, write_trained
from captioner.search_structure import FLAT_LIMIT, build_search_structure, recall_at_10


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, help="vector width (default: the --model's, 512 for ViT-B-32)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--model", default="config:ViT-B-32", help="text tower for the end-to-end query: "
                        "config:NAME (open_clip architecture, random weights), or a search model spec")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class ClipLike:
    """A synthetic CLIP embedding space: a cone shared by images, topics, and a gap between texts and images."""

    def __init__(self, rng, n: int, dim: int):
        self.rng, self.dim = rng, dim
        self.cone, self.gap = unit(rng.standard_normal(dim)), unit(rng.standard_normal(dim))
        self.topics = unit(rng.standard_normal((max(100, n // 1000), dim)))

    def images(self, n: int) -> np.ndarray:
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            topic = self.topics[self.rng.integers(0, len(self.topics), m)]
            noise = self.rng.standard_normal((m, self.dim), dtype=np.float32) * (0.75 / np.sqrt(self.dim))
            out[start : start + m] = unit(0.6 * self.cone + 0.55 * topic + noise)
        return out

    def texts(self, n: int) -> np.ndarray:
        topic = self.topics[self.rng.integers(0, len(self.topics), n)]
        noise = self.rng.standard_normal((n, self.dim), dtype=np.float32) * (0.9 / np.sqrt(self.dim))
        return unit(0.3 * self.cone + 0.3 * topic + 0.75 * self.gap + noise)


def single_query(search, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(search(query[None], k)[1][0])
        times.append(time.perf_counter() - started)
    return np.array(found), np.array(times) * 1000


def row(name: str, way: str, ms: np.ndarray, recall: float, extra: str = "") -> None:
    print(f"{name:<26}{way:<44}{np.median(ms):>8.2f}{np.percentile(ms, 99):>8.2f}{recall:>10.3f}  {extra}")


def measure(n: int, dim: int, queries: int, rng) -> tuple:
    import faiss

    space = ClipLike(rng, n, dim)
    data = space.images(n)
    started = time.perf_counter()
    ours, layout, trained = build_search_structure(data)
    build_s = time.perf_counter() - started
    exact = faiss.IndexFlatIP(dim)
    exact.add(data)
    for kind, q in (("text", space.texts(queries)), ("image", space.images(queries))):
        truth, exact_ms = single_query(exact.search, q)
        found, ours_ms = single_query(ours.search, q)
        top1 = float(np.median(exact.search(q, 1)[0]))
        row(f"{n:,} {kind} queries", "exact scan (faiss IndexFlatIP)", exact_ms, 1.0, f"best match scores {top1:.2f}")
        way = f"captioner ({layout.kind}" + (f" nlist={layout.nlist} nprobe={layout.nprobe})" if layout.kind == "ivf" else ")")
        row("", way, ours_ms, recall_at_10(truth, found), f"built in {build_s:.0f}s" if kind == "text" else "")
    return space, data, ours, layout, trained


def write_index(root: Path, data: np.ndarray, search, layout, trained) -> None:
    """The vectors as a real index on disk (entries for made-up paths), as update_index writes it."""
    from captioner.search_structure import Layout

    if trained is not None:
        layout = Layout(**{**layout.to_json(), "centroids": write_trained(root, trained)})
    segment = write_segment(root, data, search.parts[0][0] if layout.kind == "ivf" else None)
    entries = [Entry(f"photos/{i // 1000:04d}/{i:07d}.jpg", f"{i:064x}", 100_000 + i, 1_700_000_000_000_000_000 + i, i)
               for i in range(len(data))]  # fmt: skip
    meta = {"model": "bench", "model_version": "bench", "dim": data.shape[1], "gallery": "/bench", "entries": len(data),
            "vectors": len(data), "updated": "", "failed": [], "layout": layout.to_json(), "segments": [[segment, len(data)]]}  # fmt: skip
    write_generation(root, meta, EntryTable.from_entries(entries), no_dropped())  # a bench index: no file has left


def footprint(root: Path, queries: np.ndarray) -> str:
    """Disk per image, and the memory an opened index holds once it has answered these queries."""
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    before = resident_bytes()
    index = load_index(root, Path("/bench"), "bench", "bench")
    for query in queries:
        index.search(query, 10)
    held = resident_bytes() - before
    n = len(index)
    return f"disk {disk / n:,.0f} B/image ({disk / 2**20:,.0f} MiB); memory once open and queried {held / n:,.0f} B/image"


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def text_end_to_end(model, space: ClipLike, root: Path, data: np.ndarray) -> None:
    """A text query as the search page (index open) and the CLI (index opened per query) answer it."""
    import torch

    from captioner.embed import embed_texts
    from captioner.index import search_text

    things = ["a dog", "two red bicycles", "snow on a mountain road", "a cat asleep", "a bowl of soup", "a harbour"]
    fresh = (f"a photo of {things[i % len(things)]}, number {i}" for i in range(10_000))  # never seen before: no cache
    timings = {name: [] for name in WAYS}
    index = load_index(root, Path("/bench"), "bench", "bench")
    import faiss

    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)

    def timed(name, run):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        return result

    def plain(text):  # the whole 77-token context, an exact scan
        with torch.inference_mode():
            vector = model.model.encode_text(model.processor.tokenizer([text]))
            return exact.search(torch.nn.functional.normalize(vector, dim=-1).numpy(), 10)

    for _ in range(40):
        timed("plain", lambda: plain(next(fresh)))
        text = next(fresh)
        query = timed("encode", lambda: embed_texts(model, [text])[0])  # noqa: B023 (each lambda is called at once)
        timed("search", lambda: index.search(query, 12))  # noqa: B023
        timed("again", lambda: search_text(model, index, text, 12))  # noqa: B023
        timed("page", lambda: search_text(model, index, next(fresh), 12))
        timed("open", lambda: load_index(root, Path("/bench"), "bench", "bench"))
        timed("cli", lambda: search_text(model, load_index(root, Path("/bench"), "bench", "bench"), next(fresh), 12))
    print(f"\ntext query end to end, {len(data):,} images, {model.name} text tower on {torch.get_num_threads()} threads "
          f"(CPU ms: all threads' CPU time, less sensitive than wall time to other programs on the machine):")
    print(f"{'way':<62}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms':>8}")
    for name, label in WAYS.items():
        wall, cpu = (np.array(column[5:]) * 1000 for column in zip(*timings[name]))  # the first few warm up
        print(f"{label:<62}{np.median(wall):>8.2f}{np.percentile(wall, 99):>8.2f}{np.median(cpu):>8.2f}")
    plain_ms, page_ms = (np.median([wall for wall, _ in timings[name][5:]]) for name in ("plain", "page"))
    print(f"search page speed-up over the plain way: {plain_ms / page_ms:.1f}x")


WAYS = {
    "plain": "plain: encode_text (77 tokens) + exact scan",
    "encode": "captioner: text encoding alone (its own tokens only)",
    "search": "captioner: FAISS search + hits alone",
    "page": "captioner: search_text on the open index (search page)",
    "again": "captioner: the same text again (a page rerun: cached)",
    "open": "captioner: opening the index alone",
    "cli": "captioner: open + search_text (the search CLI, per query)",
}


def load_text_model(spec: str):
    from captioner.embed import load_embedder
    from captioner.settings import Settings

    if not spec.startswith("config:"):
        return load_embedder(spec, Settings(home=Path.cwd(), device="cpu"))
    import open_clip

    from captioner.embed import _Processor
    from captioner.models import LoadedModel, ModelSpec

    import torch

    name = spec.removeprefix("config:")
    model, _, preprocess = open_clip.create_model_and_transforms(name)  # random weights: the timing is the same
    processor = _Processor(preprocess, open_clip.get_tokenizer(name))
    spec = ModelSpec(name, "search", "local", name, "random")
    return LoadedModel(spec, model.eval(), processor, torch.device("cpu"), torch.float32, family="open_clip")


def main():
    import faiss
    import torch

    args = parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"{args.threads} threads; flat (exact) up to {FLAT_LIMIT:,} vectors, IVF above; nprobe tuned on text-like queries")
    print(f"{'vectors':<26}{'way':<44}{'p50 ms':>8}{'p99 ms':>8}{'recall@10':>10}")
    model = load_text_model(args.model)
    if args.dim is None:  # the end-to-end query searches these vectors with the model's own text embeddings
        from captioner.embed import embed_texts

        args.dim = int(embed_texts(model, ["a width probe"]).shape[-1])
    rng = np.random.default_rng(0)
    for n in args.sizes:
        space, data, search, layout, trained = measure(n, args.dim, args.queries, rng)
        with tempfile.TemporaryDirectory() as work:
            root = Path(work)
            write_index(root, data, search, layout, trained)
            print(f"{'':<26}{footprint(root, space.texts(args.queries))}")
            if n == args.sizes[0]:
                text_end_to_end(model, space, root, data)
        del data, search


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
