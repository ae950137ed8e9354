"""Index updates that cost what changed: appended segments, IVF deltas, compaction; links out of the gallery;
nprobe tuned on text-like queries."""

import os
from itertools import product

import numpy as np
import pytest

import images_zoo as zoo
from captioner import images, index_arrange, index_dropped
from captioner.embed import load_embedder
from captioner.gallery_scan import ALREADY_INDEXED, LOOP, OUTSIDE, gallery_file
from captioner.images import ImageError
from captioner.index import build_search_structure, current_generation, index_root, update_index
from captioner.search_structure import recall_at_10

SHAPES = list(product(["circle", "square", "triangle"], ["red", "green", "blue", "yellow"]))


@pytest.fixture
def clip(settings, tiny_clip_dir):
    return load_embedder(str(tiny_clip_dir), settings)


def add_pictures(folder, start: int, count: int) -> list[str]:
    names = []
    for i in range(start, start + count):
        shape, color = SHAPES[i % len(SHAPES)]
        name = f"{i:04d}-{color}-{shape}.png"
        (folder / name).write_bytes(zoo.encode(zoo.demo(shape, color, 40 + i % 61), "PNG"))
        names.append(name)
    return names


@pytest.fixture
def gallery(tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    add_pictures(folder, 0, 12)
    return folder


def segment_files(root):
    return {p.relative_to(root): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (root / "segments").rglob("*.npy")}


def self_hits(index):
    """For every indexed file, the top hit of a search with its own vector (its row, if searchable)."""
    rows = index.table.columns["row"]
    return index.structure.search(np.stack([index.vector(row) for row in rows]), 1)[1][:, 0], rows


def test_adding_files_appends_a_segment_and_reads_only_the_new_files(clip, gallery, settings, monkeypatch):
    index, _ = update_index(clip, gallery, settings.data_dir)
    root = index_root(settings.data_dir, gallery, clip.name)
    before = segment_files(root)
    add_pictures(gallery, 100, 3)
    read = []
    real_read = images.read_file
    monkeypatch.setattr(images, "read_file", lambda path, name=None: read.append(name) or real_read(path, name))
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.added, report.unchanged, report.embedded) == (3, 12, 3) and len(read) == 3  # nothing else read
    assert len(index.meta["segments"]) == 2 and index.meta["segments"][1][1] == 3
    assert {k: v for k, v in segment_files(root).items() if k in before} == before  # old vectors untouched
    vectors = np.concatenate([np.asarray(v) for v in index.segments])
    assert np.abs(np.linalg.norm(vectors, axis=1) - 1).max() <= 1e-6

    generation = current_generation(root)
    again, report = update_index(clip, gallery, settings.data_dir)
    assert report.unchanged == 15 and current_generation(root) == generation  # nothing changed: nothing written


def test_an_ivf_index_grows_by_segments_and_deleted_files_never_come_back(clip, gallery, settings):
    add_pictures(gallery, 12, 108)  # 120 files, over flat_limit: IVF
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert index.kind == "ivf" and index.meta["layout"]["nprobe"] >= 1 and len(index) == 120
    add_pictures(gallery, 200, 20)
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert report.rewritten_because is None and len(index.meta["segments"]) == 2
    root = index_root(settings.data_dir, gallery, clip.name)
    assert (root / "segments" / index.meta["segments"][1][0] / "ivf.index").is_file()
    gone = sorted(gallery.glob("*.png"))[:10]
    for path in gone:
        path.unlink()
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert report.removed == 10 and report.rewritten_because is None and len(index) == 130
    index.structure.set_nprobe(index.meta["layout"]["nlist"])  # every cell: the structure itself is exact
    found, rows = self_hits(index)
    assert (found == rows).mean() >= 0.98  # each file finds itself (identical pictures may tie)
    hits = index.search(index.vector(0), k=140)
    assert not {hit.path.name for hit in hits} & {path.name for path in gone} and len(hits) == 130


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_damaged_ivf_centroids_are_retrained_from_the_stored_vectors(clip, gallery, settings, damage):
    add_pictures(gallery, 12, 108)
    index, _ = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    root = index_root(settings.data_dir, gallery, clip.name)
    centroids = root / "segments" / index.meta["layout"]["centroids"]
    centroids.unlink() if damage == "missing" else centroids.write_bytes(b"garbage")
    add_pictures(gallery, 200, 5)
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert "centroids" in report.rewritten_because and (report.added, report.embedded) == (5, 5)
    assert index.kind == "ivf" and len(index) == 125 and (root / "segments" / index.meta["layout"]["centroids"]).is_file()
    index.structure.set_nprobe(index.meta["layout"]["nlist"])
    found, rows = self_hits(index)
    assert (found == rows).mean() >= 0.98


def test_deleting_most_files_compacts_and_many_segments_merge(clip, gallery, settings, monkeypatch):
    update_index(clip, gallery, settings.data_dir)
    monkeypatch.setattr(index_arrange, "MAX_SEGMENTS", 3)
    for start in (300, 310, 320):
        add_pictures(gallery, start, 2)
        index, report = update_index(clip, gallery, settings.data_dir)
    assert len(index.meta["segments"]) == 2 and len(index) == 18  # 4 segments merged into 2, rows kept
    found, rows = self_hits(index)
    assert (found == rows).mean() >= 0.9
    monkeypatch.setattr(index_dropped, "RETAIN_DAYS", 0)  # deleted files' vectors are not kept for their return
    for path in sorted(gallery.glob("*.png"))[:10]:
        path.unlink()
    index, report = update_index(clip, gallery, settings.data_dir)
    assert "belong to no file" in report.rewritten_because and len(index.meta["segments"]) == 1
    assert index.meta["vectors"] == len({row for row in index.table.columns["row"]}) == 8


def test_a_growing_flat_index_switches_to_ivf(clip, gallery, settings):
    index, _ = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    add_pictures(gallery, 12, 60)
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert index.kind == "ivf" and "from flat to ivf" in report.rewritten_because and len(index) == 72


def test_an_ivf_index_shrinking_below_the_limit_and_growing_back_rewrites_nothing(clip, gallery, settings):
    add_pictures(gallery, 12, 40)  # 52 files: just over flat_limit
    index, _ = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert index.kind == "ivf"
    gone = sorted(gallery.glob("*.png"))[:4]
    for path in gone:
        path.unlink()
    root = index_root(settings.data_dir, gallery, clip.name)
    before = segment_files(root)
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)  # 48: under the limit
    assert report.rewritten_because is None and index.kind == "ivf" and len(index) == 48
    assert segment_files(root) == before
    add_pictures(gallery, 400, 3)  # 51: over it again
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert report.rewritten_because is None and len(index.meta["segments"]) == 2 and len(index) == 51
    hits = index.search(index.vector(index.entry_of(sorted(index.paths)[0]).row), k=60)
    assert len(hits) == 51 and not {hit.path.name for hit in hits} & {path.name for path in gone}


def test_files_in_a_folder_that_cannot_be_listed_are_kept_not_forgotten(clip, gallery, settings, monkeypatch):
    import errno

    (gallery / "shoot").mkdir()
    names = add_pictures(gallery / "shoot", 100, 5)
    update_index(clip, gallery, settings.data_dir)
    listing = os.scandir

    def flaky_share(path="."):
        if os.fspath(path).endswith("shoot"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", flaky_share)
    (gallery / "0000-red-circle.png").unlink()  # a real deletion beside it is still seen
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.removed, report.unchanged, len(index)) == (1, 16, 16)
    assert ("shoot", "cannot be read (Input/output error)") in report.skipped
    assert {f"shoot/{name}" for name in names} <= set(index.paths)
    monkeypatch.setattr(os, "scandir", listing)
    (gallery / "shoot" / names[0]).unlink()
    index, report = update_index(clip, gallery, settings.data_dir)  # listed again: gone is gone
    assert report.removed == 1 and len(index) == 15 and f"shoot/{names[0]}" not in index.paths


def test_links_out_of_the_gallery_are_ignored_unless_allowed(clip, gallery, settings, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    add_pictures(elsewhere, 50, 2)
    os.symlink(elsewhere / os.listdir(elsewhere)[0], gallery / "outside-file.png")
    os.symlink(elsewhere, gallery / "outside-folder")
    os.symlink(gallery / "0000-red-circle.png", gallery / "inside-link.png")
    index, report = update_index(clip, gallery, settings.data_dir)
    ignored = dict(report.ignored)
    assert ignored["outside-file.png"] == OUTSIDE and ignored["outside-folder"] == OUTSIDE
    assert "inside-link.png" in index.paths and not any(p.startswith("outside") for p in index.paths)
    index, report = update_index(clip, gallery, settings.data_dir, follow_links=True)
    assert {"outside-file.png", "outside-folder/" + sorted(os.listdir(elsewhere))[1]} <= set(index.paths)

    assert gallery_file(gallery, "inside-link.png") == gallery / "inside-link.png"
    with pytest.raises(ImageError, match="outside-file.png: leads outside the gallery"):
        gallery_file(gallery, "outside-file.png")


def test_a_link_to_a_folder_of_the_gallery_leaves_the_folder_indexed_under_its_own_name(clip, gallery, settings):
    (gallery / "2023").mkdir()
    names = add_pictures(gallery / "2023", 400, 2)
    os.symlink("2023", gallery / "favourites")  # sorts after 2023, and is walked first, whatever the order
    os.symlink("2023", gallery / "0-latest")
    index, report = update_index(clip, gallery, settings.data_dir)
    assert {f"2023/{name}" for name in names} <= set(index.paths)
    assert not any(p.startswith(("favourites/", "0-latest/")) for p in index.paths)
    ignored = dict(report.ignored)
    assert "2023" not in ignored and ignored["favourites"] == ignored["0-latest"] == ALREADY_INDEXED
    os.symlink("..", gallery / "2023" / "up")  # a link to a folder it stands in is a loop
    again, report = update_index(clip, gallery, settings.data_dir)
    assert dict(report.ignored)["2023/up"] == LOOP and again.paths == index.paths


def clip_like(rng, n: int, dim: int, topics: np.ndarray, cone: np.ndarray) -> np.ndarray:
    """Image-like vectors: a shared direction (CLIP's cone), a topic, and noise."""
    x = 0.6 * cone + 0.5 * topics[rng.integers(0, len(topics), n)] + rng.normal(0, 0.6 / np.sqrt(dim), (n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_nprobe_tuned_on_text_like_queries_reaches_the_target_on_other_text_queries():
    rng = np.random.default_rng(0)
    dim = 64
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    topics, cone = unit(rng.normal(size=(60, dim))), unit(rng.normal(size=dim))
    vectors = clip_like(rng, 8000, dim, topics, cone)
    search, layout, trained = build_search_structure(vectors, flat_limit=2000)
    assert layout.kind == "ivf" and trained is not None and 1 <= layout.nprobe <= layout.nlist
    # independent text-like queries: a topic seen from another modality (its own offset), far from every image
    gap = unit(rng.normal(size=dim))
    queries = unit(0.45 * topics[rng.integers(0, 60, 100)] + 0.5 * gap + rng.normal(0, 0.8 / np.sqrt(dim), (100, dim)))
    exact, _, _ = build_search_structure(vectors)
    truth, found = exact.search(queries, 10)[1], search.search(queries, 10)[1]
    assert recall_at_10(truth, found) >= 0.95


def test_a_memory_mapped_ivf_segment_answers_as_the_built_one_without_prefetch_threads(tmp_path):
    import faiss

    from captioner.search_structure import SegmentedSearch, read_ivf

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built, layout, _ = build_search_structure(vectors, flat_limit=2000)
    faiss.write_index(built.parts[0][0], str(tmp_path / "ivf.index"))
    opened = read_ivf(tmp_path / "ivf.index")
    lists = faiss.downcast_InvertedLists(opened.invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # memory-mapped: shared between processes, evictable
    # FAISS's default starts 32 threads per search to touch the lists: 3-4x the search's own time when warm
    assert lists.prefetch_nthread == 0
    queries = vectors[:50] + rng.normal(0, 0.3, size=(50, 32)).astype(np.float32)
    reopened = SegmentedSearch([(opened, 0, None)], layout.nprobe)
    np.testing.assert_array_equal(reopened.search(queries, 10)[1], built.search(queries, 10)[1])


def test_the_index_cli_lists_links_out_as_ignored(home, tmp_path):
    from conftest import run_cli

    gallery, elsewhere = tmp_path / "cli-gallery", tmp_path / "private"
    gallery.mkdir()
    elsewhere.mkdir()
    add_pictures(gallery, 0, 2)
    add_pictures(elsewhere, 5, 1)
    os.symlink(elsewhere / os.listdir(elsewhere)[0], gallery / "outside.png")
    for i in range(40):  # the RAW files beside a photographer's JPEGs
        (gallery / f"IMG_{i:04d}.CR2").write_bytes(b"raw")
    done = run_cli("index", gallery, "--model", "demo", env={"CAPTIONER_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert f"ignored outside.png: {OUTSIDE}" in done.stderr and "2 images indexed" in done.stderr
    lines = done.stderr.splitlines()
    assert sum(".CR2: not an image file type" in line for line in lines) == 3  # a few named, the rest counted
    assert "captioner: ignored 37 more: not an image file type" in lines and len(lines) < 12
