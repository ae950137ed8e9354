"""Vectors of files that left the gallery are kept a while: a file back (a disk mounted again, a folder moved out
and back) is hashed, never embedded again; what stays away is forgotten and compacted, within a bounded size."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import images_zoo as zoo
from captioner.embed import load_embedder
from captioner.index import current_generation, index_root, search_gallery_image, update_index
from captioner.index_dropped import RETAIN_DAYS, known_contents
from conftest import ROOT, child_env, run_cli
from test_index_segments import add_pictures, segment_files


@pytest.fixture
def clip(settings, tiny_clip_dir):
    return load_embedder(str(tiny_clip_dir), settings)


@pytest.fixture
def encoded(clip, monkeypatch):
    """The number of images the model's image tower encodes, counted at the model itself."""
    count = [0]
    real = clip.model.encode_image

    def counting(pixels, *args, **kwargs):
        count[0] += len(pixels)
        return real(pixels, *args, **kwargs)

    monkeypatch.setattr(clip.model, "encode_image", counting)
    return count


@pytest.fixture
def gallery(tmp_path):
    folder = tmp_path / "gallery"
    (folder / "2024").mkdir(parents=True)
    add_pictures(folder / "2024", 0, 12)
    return folder


def test_a_gallery_emptied_and_filled_again_embeds_nothing_again(clip, gallery, settings, tmp_path, encoded):
    update_index(clip, gallery, settings.data_dir)
    assert encoded[0] == 12
    root = index_root(settings.data_dir, gallery, clip.name)
    vectors_before = segment_files(root)
    shutil.move(gallery / "2024", tmp_path / "disk")  # the disk is not mounted: its mount point is an empty folder
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (len(index), report.removed, report.rewritten_because) == (0, 12, None)
    assert index.search(np.ones(16, np.float32) / 4, k=5) == []  # kept, never found
    shutil.move(tmp_path / "disk", gallery / "2024")
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (len(index), report.added, report.embedded, report.reused) == (12, 12, 0, 12)
    assert encoded[0] == 12 and segment_files(root) == vectors_before  # no image encoded, no vector written
    hits = search_gallery_image(index, index.paths[3], k=1)
    assert hits[0].path == gallery / index.paths[3] and hits[0].score > 0.999


def test_a_folder_moved_out_and_back_under_a_new_name_is_not_embedded_again(clip, gallery, settings, tmp_path, encoded):
    add_pictures(gallery, 100, 4)
    update_index(clip, gallery, settings.data_dir)
    shutil.move(gallery / "2024", tmp_path / "aside")
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (len(index), report.removed) == (4, 12)
    shutil.move(tmp_path / "aside", gallery / "archive")
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.added, report.removed, report.embedded, report.reused) == (12, 0, 0, 12)
    assert encoded[0] == 16 and len(index) == 16 and sum(p.startswith("archive/") for p in index.paths) == 12
    assert index.meta["dropped"] == 0


def age_dropped(root, days: float) -> None:
    """Make the live generation's dropped vectors look as if they left `days` ago."""
    path = root / current_generation(root) / "dropped.npy"
    dropped = np.load(path)
    dropped["dropped_at"] -= int(days * 86400)
    np.save(path, dropped)


def test_dropped_vectors_are_forgotten_after_the_retention_time_and_compacted_away(clip, gallery, settings, encoded):
    update_index(clip, gallery, settings.data_dir)
    gone = sorted((gallery / "2024").glob("*.png"))[:8]
    kept = {path: path.read_bytes() for path in gone}
    for path in gone:
        path.unlink()
    index, report = update_index(clip, gallery, settings.data_dir)
    assert report.rewritten_because is None and (index.meta["vectors"], index.meta["dropped"]) == (12, 8)
    root = index_root(settings.data_dir, gallery, clip.name)
    age_dropped(root, RETAIN_DAYS + 1)
    add_pictures(gallery, 200, 1)
    index, report = update_index(clip, gallery, settings.data_dir)
    assert "belong to no file" in report.rewritten_because
    assert (index.meta["vectors"], index.meta["dropped"], len(index)) == (5, 0, 5)
    for path, data in kept.items():
        path.write_bytes(data)
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.added, report.embedded) == (8, 8) and encoded[0] == 12 + 1 + 8


def test_dropped_vectors_never_outnumber_the_gallery_at_its_largest(clip, gallery, settings):
    update_index(clip, gallery, settings.data_dir)
    first = {path: path.read_bytes() for path in (gallery / "2024").glob("*.png")}
    for start in (300, 400):  # the whole gallery replaced by new pictures, twice
        shutil.rmtree(gallery / "2024")
        (gallery / "2024").mkdir()
        add_pictures(gallery / "2024", start, 12)
        index, report = update_index(clip, gallery, settings.data_dir)
    assert index.meta["dropped"] == 12 and index.meta["largest"] == 12  # the newest 12 kept, the first 12 forgotten
    assert index.meta["vectors"] <= 3 * 12
    (gallery / "back").mkdir()
    for path, data in first.items():
        (gallery / "back" / path.name).write_bytes(data)
    index, report = update_index(clip, gallery, settings.data_dir)
    assert report.embedded == 12


def test_an_edit_undone_reuses_the_vector_of_the_picture_as_it_was(clip, gallery, settings):
    update_index(clip, gallery, settings.data_dir)
    photo = sorted((gallery / "2024").glob("*.png"))[0]
    original = photo.read_bytes()
    photo.write_bytes(zoo.encode(zoo.demo("triangle", "blue", 77), "PNG"))
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.changed, report.embedded) == (1, 1)
    photo.write_bytes(original)
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.changed, report.embedded, report.reused) == (1, 0, 1)


def test_an_empty_gallery_on_another_disk_than_when_indexed_keeps_the_index_and_says_why(clip, gallery, settings, tmp_path):
    update_index(clip, gallery, settings.data_dir)
    root = index_root(settings.data_dir, gallery, clip.name)
    meta_path = root / current_generation(root) / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["gallery_device"] == gallery.stat().st_dev
    meta_path.write_text(json.dumps({**meta, "gallery_device": meta["gallery_device"] + 1}))  # indexed on the disk
    shutil.move(gallery / "2024", tmp_path / "disk")  # ... now not mounted: its mount point is an empty folder
    index, report = update_index(clip, gallery, settings.data_dir)
    assert len(index) == 12 and (report.removed, report.unchanged) == (0, 12)
    assert "is empty and is not on the disk it was on" in report.kept_because and report.warnings == [report.kept_because]
    assert current_generation(root) == meta["generation"]
    (gallery / "new.png").write_bytes(zoo.encode(zoo.demo("square", "blue"), "PNG"))  # not empty: a real update
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (len(index), report.removed, report.kept_because) == (1, 12, None)


def test_the_cli_says_how_many_files_disappeared(clip, home, settings, gallery, tmp_path, tiny_clip_dir):
    update_index(clip, gallery, settings.data_dir)
    shutil.move(gallery / "2024", tmp_path / "disk")
    done = run_cli("index", gallery, "--model", tiny_clip_dir, env={"CAPTIONER_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert f"warning: 12 of the 12 indexed files are gone from {gallery}; their vectors are kept 30 days" in done.stderr
    assert "0 added, 0 changed, 12 removed" in done.stderr and "0 images indexed" in done.stderr


def test_an_ivf_index_mostly_of_dropped_vectors_still_finds_k_of_its_files(clip, gallery, settings):
    add_pictures(gallery, 100, 300)
    index, _ = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert index.kind == "ivf" and index.meta["layout"]["nlist"] >= 5
    for path in sorted(gallery.glob("*.png"))[12:]:
        path.unlink()
    index, report = update_index(clip, gallery, settings.data_dir, flat_limit=50)
    assert (len(index), index.meta["dropped"], report.rewritten_because) == (24, 288, None)
    index.structure.set_nprobe(1)  # a tuned probe count: the lists it probes hold a file or two among the dropped
    for row in np.unique(index.table.columns["row"])[:5]:
        hits = index.search(index.vector(int(row)), k=10)
        exact = sorted((float(index.vector(e.row) @ index.vector(int(row))) for e in index.entries), reverse=True)[:10]
        assert [round(hit.score, 4) for hit in hits] == [round(score, 4) for score in exact]


MOUNTED_AND_NOT = """
import subprocess, sys
from pathlib import Path
from captioner.embed import load_embedder
from captioner.index import update_index
from captioner.settings import Settings
from test_index_segments import add_pictures
gallery, home, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
clip = load_embedder(model, Settings(home=home))
subprocess.run(["mount", "-t", "tmpfs", "none", gallery], check=True)
add_pictures(gallery, 0, 5)
update_index(clip, gallery, home / "data")
subprocess.run(["umount", gallery], check=True)
index, report = update_index(clip, gallery, home / "data")
print("unmounted:", len(index), report.removed, bool(report.kept_because))
(home / "other").mkdir()
subprocess.run(["mount", "-t", "tmpfs", "none", home / "other"], check=True)  # takes the device number freed
subprocess.run(["mount", "-t", "tmpfs", "none", gallery], check=True)  # an empty disk mounted there
index, report = update_index(clip, gallery, home / "data")
print("empty disk:", len(index), report.removed, bool(report.kept_because))
"""


@pytest.mark.slow
def test_a_real_mount_point_without_its_disk_keeps_the_index_and_an_empty_disk_mounted_there_empties_it(
    tmp_path, tiny_clip_dir,
):  # fmt: skip
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user and mount namespaces here (unshare -rm)")
    gallery, home = tmp_path / "mnt", tmp_path / "home"
    gallery.mkdir()
    done = subprocess.run(["unshare", "-rm", sys.executable, "-c", MOUNTED_AND_NOT, gallery, home, tiny_clip_dir],
                          capture_output=True, text=True, env=child_env(), cwd=ROOT / "tests", timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unmounted: 5 0 True" in done.stdout and "empty disk: 0 5 False" in done.stdout, done.stdout


def test_search_says_when_files_it_finds_are_no_longer_in_the_gallery(clip, home, settings, gallery, tiny_clip_dir):
    update_index(clip, gallery, settings.data_dir)
    for path in sorted((gallery / "2024").glob("*.png")):
        path.unlink()
    done = run_cli("search", "--text", "a red circle", "-k", "3", "--gallery", gallery, "--model", tiny_clip_dir,
                   env={"CAPTIONER_HOME": str(home)})  # fmt: skip
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3, done.stderr
    assert f"note: 3 of these 3 files are not in {gallery} any more" in done.stderr
    assert f"`captioner index {gallery}` brings the index up to date" in done.stderr


def test_an_update_that_reads_no_file_does_not_sort_the_content_hashes(clip, gallery, settings, monkeypatch):
    from captioner import index_update

    update_index(clip, gallery, settings.data_dir)
    built = []
    monkeypatch.setattr(index_update, "known_contents", lambda *a: built.append(1) or known_contents(*a))
    (sorted((gallery / "2024").glob("*.png"))[0]).unlink()
    update_index(clip, gallery, settings.data_dir)  # a deletion, and nothing to read: ~0.8 s a million files saved
    assert built == []
    add_pictures(gallery, 500, 1)
    index, report = update_index(clip, gallery, settings.data_dir)
    assert built == [1] and report.embedded == 1
