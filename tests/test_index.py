"""Embeddings and the gallery index: tiny open_clip from disk, incremental updates, recovery, search."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import images_zoo as zoo
from dataclasses import replace

from captioner.embed import embed_images, embed_texts, load_embedder
from captioner.loading import serve
from captioner.images import ImageError, ImageInput
from captioner.index import (
    IndexProblem, SearchError, current_generation, index_root, load_index, open_or_build, search_image, search_text,
    update_index,
)  # fmt: skip
from captioner.models import ModelError
from conftest import ROOT, child_env, write_non_utf8_name


@pytest.fixture
def clip(settings, tiny_clip_dir):
    return load_embedder(str(tiny_clip_dir), settings)


@pytest.fixture
def gallery(tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for i, (shape, color) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green"), ("circle", "yellow")]):
        (folder / f"{i}-{color}-{shape}.png").write_bytes(zoo.encode(zoo.demo(shape, color, 96 + 8 * i), "PNG"))
    return folder


def paths(index):
    return sorted(entry.path for entry in index.entries)


def test_tiny_open_clip_loads_from_disk_and_embeds(clip, tiny_clip_dir):
    assert clip.family == "open_clip" and clip.version == tiny_clip_dir.name
    pictures = [ImageInput(f"{i}.png", zoo.encode(zoo.demo(side=40 + i), "PNG")) for i in range(5)]
    pictures.insert(2, ImageInput("bad.png", b"nope"))
    embedded = embed_images(clip, pictures, batch_size=2)
    assert embedded.vectors.shape == (5, 16) and embedded.ok == [0, 1, 3, 4, 5]
    assert "not an image" in embedded.errors[2]
    assert np.abs(np.linalg.norm(embedded.vectors, axis=1) - 1).max() <= 1e-6
    texts = embed_texts(clip, ["a red circle", "a blue square"])
    assert texts.shape == (2, 16) and np.abs(np.linalg.norm(texts, axis=1) - 1).max() <= 1e-6


def test_a_short_text_is_encoded_over_its_own_tokens_only_with_the_same_result(clip):
    import torch

    from captioner import embed

    tokens = clip.processor.tokenizer(["a red circle", "a big blue square on white"])
    assert tokens.shape[1] == 16 and int(tokens.argmax(dim=-1).max()) < 10  # the tiny tower's context is 16
    with torch.inference_mode():
        full = clip.model.encode_text(tokens)
        trimmed = embed._text_features(clip.model, tokens)
    assert torch.allclose(trimmed, full, atol=1e-5)


def test_a_transform_the_device_path_cannot_reproduce_uses_open_clips_own(clip, monkeypatch):
    from captioner import embed

    pictures = [ImageInput(f"{i}.png", zoo.encode(zoo.demo(side=40 + i), "PNG")) for i in range(3)]
    expected = embed_images(clip, pictures)
    monkeypatch.setattr(embed, "pixel_spec", lambda loaded: None)
    fallback = embed_images(clip, pictures[:1] + [ImageInput("bad.png", b"nope")] + pictures[1:])
    assert fallback.ok == [0, 2, 3] and "not an image" in fallback.errors[1]
    assert (fallback.vectors * expected.vectors).sum(axis=1).min() > 0.99  # the same pictures, within resize rounding


def test_a_repeated_text_query_is_not_encoded_again(clip, monkeypatch):
    from captioner import embed

    encoded = []
    real = embed._text_features
    monkeypatch.setattr(embed, "_text_features", lambda model, tokens: encoded.append(len(tokens)) or real(model, tokens))
    first = embed_texts(clip, ["a green triangle", "a red circle"])
    again = embed_texts(clip, ["a red circle", "a blue square"])
    assert encoded == [2, 1] and np.array_equal(again[0], first[1])


def test_open_clip_specs_are_checked(settings, tmp_path):
    with pytest.raises(ModelError, match="not an open_clip model folder"):
        load_embedder(str(tmp_path), settings)
    with pytest.raises(ModelError, match="add a tag"):
        load_embedder("ViT-B-32", settings)
    with pytest.raises(ModelError, match="offline"):
        load_embedder("ViT-B-32/laion2b_s34b_b79k", settings)
    served = serve("search", replace(settings, search_model="ViT-B-32/laion2b_s34b_b79k"))
    assert served.model.name == "demo" and "demo search model" in served.fallback_reason


def test_incremental_update_adds_changes_deletes_and_dedupes(clip, gallery, settings):
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.added, report.embedded, len(index)) == (4, 4, 4) and index.kind == "flat"

    (gallery / "sub").mkdir()
    (gallery / "sub" / "copy.png").write_bytes((gallery / "0-red-circle.png").read_bytes())
    (gallery / "4-new.png").write_bytes(zoo.encode(zoo.demo("square", "yellow"), "PNG"))
    (gallery / "1-blue-square.png").write_bytes(zoo.encode(zoo.demo("triangle", "blue"), "PNG"))
    (gallery / "3-yellow-circle.png").unlink()
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.added, report.changed, report.removed, report.unchanged) == (2, 1, 1, 2)
    assert (report.embedded, report.reused) == (2, 1)
    assert paths(index) == ["0-red-circle.png", "1-blue-square.png", "2-green-triangle.png", "4-new.png", "sub/copy.png"]
    rows = {e.path: e.row for e in index.entries}
    assert rows["sub/copy.png"] == rows["0-red-circle.png"] and len(set(rows.values())) == 4
    assert (index.meta["vectors"], index.meta["dropped"]) == (6, 2)  # the deleted and the replaced kept for reuse

    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.unchanged, report.embedded, report.added) == (5, 0, 0)


def test_bad_files_are_skipped_and_listed_never_fatal(clip, gallery, settings):
    (gallery / "notes.txt").write_text("not a picture")
    (gallery / "broken.jpg").write_bytes(b"text in disguise")
    (gallery / "empty.png").write_bytes(b"")
    (gallery / "cut.png").write_bytes(zoo.truncated(zoo.encode(zoo.demo(side=200), "PNG")))
    odd = zoo.tiff_with_tag_type(zoo.fuzz_seeds()["raw.tiff"], tag=273, new_type=16)  # Pillow: OverflowError
    (gallery / "odd.tiff").write_bytes(odd)
    os.symlink(gallery, gallery / "loop")
    index, report = update_index(clip, gallery, settings.data_dir)
    assert len(index) == 4
    skipped = dict(report.skipped)
    assert skipped["broken.jpg"].startswith("not an image") and skipped["empty.png"].startswith("empty file")
    assert skipped["cut.png"].startswith("truncated") and "OverflowError" in skipped["odd.tiff"]
    ignored = dict(report.ignored)
    assert ignored["notes.txt"] == "not an image file type" and "loop" in ignored["loop"]
    again, report = update_index(clip, gallery, settings.data_dir)
    assert report.added == 0 and dict(report.skipped) == skipped  # bad files are remembered, not re-read


def test_a_file_that_could_not_be_read_is_read_again_at_the_next_update(clip, gallery, settings, monkeypatch):
    from captioner import images

    real_read = images.read_file

    def refused(path, name=None):  # as the OS answers for a file without read permission (chmod 000)
        if name == "1-blue-square.png":
            raise ImageError(name, "permission denied")
        return real_read(path, name)

    monkeypatch.setattr(images, "read_file", refused)
    index, report = update_index(clip, gallery, settings.data_dir)
    assert dict(report.skipped) == {"1-blue-square.png": "permission denied"} and len(index) == 3
    monkeypatch.setattr(images, "read_file", real_read)  # the permissions are fixed: size and mtime stay as they were
    index, report = update_index(clip, gallery, settings.data_dir)
    assert report.skipped == [] and (report.added, len(index)) == (1, 4) and "1-blue-square.png" in index.paths


def test_a_file_name_that_is_not_utf8_is_indexed_and_found(clip, gallery, settings):
    name = write_non_utf8_name(gallery, b"caf\xe9-photo.png", zoo.encode(zoo.demo("star", "blue", 90), "PNG"))
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.added, len(index)) == (5, 5) and os.fsdecode(name) in index.paths
    root = index_root(settings.data_dir, gallery, clip.name)
    index = load_index(root, gallery.resolve(), clip.name, clip.version)
    query = ImageInput("q.png", (gallery / os.fsdecode(name)).read_bytes())
    assert os.fsencode(search_image(clip, index, query, k=1)[0].path.name) == name
    again, report = update_index(clip, gallery, settings.data_dir)
    assert (report.unchanged, report.added) == (5, 0)


def test_the_search_cli_prints_a_name_that_is_not_utf8_so_json_gives_it_back(home, gallery):
    from conftest import run_cli

    name = write_non_utf8_name(gallery, b"caf\xe9-photo.png", zoo.encode(zoo.demo("circle", "red", 90), "PNG"))
    done = run_cli("search", "--text", "a red circle", "-k", "5", "--gallery", gallery, "--model", "demo",
                   env={"CAPTIONER_HOME": str(home)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = [json.loads(line)["path"] for line in done.stdout.splitlines()]
    assert len(found) == 5 and os.path.join(os.fsencode(gallery.resolve()), name) in map(os.fsencode, found)
    assert "reads only the start" not in done.stderr
    long = run_cli("search", "--text", "a red circle on white " * 20, "-k", "2", "--gallery", gallery, "--model", "demo",
                   env={"CAPTIONER_HOME": str(home)})  # fmt: skip
    assert long.returncode == 0 and len(long.stdout.splitlines()) == 2
    assert "note: the search model reads only the start of a long text" in long.stderr
    (home / "empty").mkdir()
    nothing = run_cli("search", "--text", "a red circle", "--gallery", home / "empty", "--model", "demo",
                      env={"CAPTIONER_HOME": str(home)})  # fmt: skip
    assert nothing.returncode == 0 and nothing.stdout == ""
    assert "holds no images: nothing to find (a folder without image files?" in nothing.stderr
    assert f"images added since the last update are added by `captioner index {home / 'empty'}`" in nothing.stderr
    missing = run_cli("search", "--text", "a red circle", "--model", "demo",
                      env={"CAPTIONER_HOME": str(home), "CAPTIONER_GALLERY": str(home / "fotos")})  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1] == (
        f"captioner: the gallery folder {home / 'fotos'} does not exist (CAPTIONER_GALLERY names it; --gallery for "
        "this search)"
    )  # it named the folder only: where it came from was left to guess


def test_a_home_that_cannot_be_written_still_searches_and_an_update_says_why(clip, gallery, settings, monkeypatch):
    import errno

    from filelock import FileLock

    update_index(clip, gallery, settings.data_dir)
    real_acquire = FileLock.acquire

    def read_only(self, *args, **kwargs):  # as a read-only mount answers (root ignores permission bits, not EROFS)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(FileLock, "acquire", read_only)
    index, report = update_index(clip, gallery, settings.data_dir)  # nothing changed: nothing to write
    assert (report.unchanged, len(index)) == (4, 4) and len(search_text(clip, index, "a red circle")) == 4
    (gallery / "0-red-circle.png").unlink()
    with pytest.raises(IndexProblem, match=r"cannot be updated \(Read-only file system\): 1 file\(s\) are new, changed or gone"):
        update_index(clip, gallery, settings.data_dir)
    with pytest.raises(IndexProblem, match=r"cannot be made \(Read-only file system\)"):
        update_index(clip, gallery, settings.data_dir / "elsewhere")  # no index there yet
    monkeypatch.setattr(FileLock, "acquire", real_acquire)
    index, report = update_index(clip, gallery, settings.data_dir)  # writable again: it catches up
    assert (report.removed, len(index)) == (1, 3)


def test_missing_and_empty_galleries(clip, tmp_path, settings):
    with pytest.raises(IndexProblem, match="does not exist"):
        update_index(clip, tmp_path / "nowhere", settings.data_dir)
    (tmp_path / "empty").mkdir()
    index, report = update_index(clip, tmp_path / "empty", settings.data_dir)
    assert len(index) == 0 and search_text(clip, index, "a red circle") == []


def test_pictures_added_after_an_update_that_indexed_nothing_are_indexed(clip, gallery, tmp_path, settings):
    empty = tmp_path / "starts-empty"
    empty.mkdir()
    index, _ = update_index(clip, empty, settings.data_dir)
    assert len(index) == 0
    (empty / "a.png").write_bytes((gallery / "0-red-circle.png").read_bytes())
    index, report = update_index(clip, empty, settings.data_dir)
    assert (report.added, report.embedded, index.paths) == (1, 1, ["a.png"])

    index, _ = update_index(clip, gallery, settings.data_dir)
    moved = {p.name: p.read_bytes() for p in gallery.glob("*.png")}
    for name in moved:
        (gallery / name).unlink()
    index, report = update_index(clip, gallery, settings.data_dir)  # every file gone: an index of nothing
    assert (len(index), report.removed) == (0, 4)
    for name, data in moved.items():
        (gallery / name).write_bytes(data)
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (len(index), report.added) == (4, 4)
    assert len(search_text(clip, index, "a red circle", k=10)) == 4


@pytest.fixture
def custom_text_clip(settings, tmp_path):
    """A tiny open_clip CustomTextCLIP (as SigLIP, EVA and MobileCLIP are): its text tower keeps its own projection."""
    import open_clip
    import torch

    from captioner.embed import write_open_clip_folder
    from tiny_models import TINY_CLIP

    folder, config = tmp_path / "custom-text-clip", {**TINY_CLIP, "custom_text": True}
    preprocess = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    write_open_clip_folder(None, config, preprocess, folder)
    torch.manual_seed(0)
    write_open_clip_folder(open_clip.create_model(f"local-dir:{folder}"), config, preprocess, folder)
    loaded = load_embedder(str(folder), settings)
    assert type(loaded.model).__name__ == "CustomTextCLIP"
    return loaded


def test_updates_that_embed_nothing_work_with_a_custom_text_tower(custom_text_clip, gallery, tmp_path, settings):
    index, report = update_index(custom_text_clip, gallery, settings.data_dir)
    assert (len(index), report.embedded) == (4, 4)
    index, report = update_index(custom_text_clip, gallery, settings.data_dir)  # nothing new to embed
    assert (len(index), report.unchanged) == (4, 4)
    (gallery / "3-yellow-circle.png").unlink()
    index, report = update_index(custom_text_clip, gallery, settings.data_dir)
    assert (len(index), report.removed) == (3, 1) and len(search_text(custom_text_clip, index, "a red circle")) == 3
    (tmp_path / "none").mkdir()
    index, _ = update_index(custom_text_clip, tmp_path / "none", settings.data_dir)
    assert len(index) == 0 and search_text(custom_text_clip, index, "a red circle") == []


def test_search_by_text_and_image_with_near_duplicates(clip, gallery, settings):
    index, _ = update_index(clip, gallery, settings.data_dir)
    query = ImageInput("q.png", (gallery / "2-green-triangle.png").read_bytes())
    hits = search_image(clip, index, query, k=3)
    assert hits[0].path == gallery.resolve() / "2-green-triangle.png" and hits[0].near_duplicate
    assert hits[0].score == pytest.approx(1.0, abs=1e-6) and [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    text_hits = search_text(clip, index, "a red circle", k=10)
    assert len(text_hits) == 4 and not any(h.near_duplicate for h in text_hits)
    with pytest.raises(SearchError, match="empty"):
        search_text(clip, index, "  ")
    with pytest.raises(ImageError, match="bad.png: not an image"):
        search_image(clip, index, ImageInput("bad.png", b"garbage"))


def test_an_index_made_by_another_model_or_damaged_is_rebuilt(clip, gallery, settings, tiny_clip_dir):
    index, _ = update_index(clip, gallery, settings.data_dir)
    root = index_root(settings.data_dir, gallery, clip.name)
    generation = root / current_generation(root)
    meta = json.loads((generation / "meta.json").read_text())
    (generation / "meta.json").write_text(json.dumps({**meta, "model_version": "older"}))
    with pytest.raises(IndexProblem, match="made by"):
        load_index(root, gallery.resolve(), clip.name, clip.version)
    index, report = open_or_build(clip, gallery, settings.data_dir)
    assert "made by" in report.rebuilt_because and len(index) == 4 and report.embedded == 4

    generation = root / current_generation(root)
    paths = json.loads((generation / "paths.json").read_text())
    (generation / "paths.json").write_text(json.dumps(paths + ["ghost.png"]))
    with pytest.raises(IndexProblem, match="counts disagree"):
        load_index(root, gallery.resolve(), clip.name, clip.version)
    (generation / "paths.json").write_text(json.dumps(paths))
    for segment in (root / "segments").glob("seg-*"):
        (segment / "vectors.npy").write_bytes(b"garbage")
    index, report = open_or_build(clip, gallery, settings.data_dir)
    assert "damaged" in report.rebuilt_because and len(index) == 4


@pytest.mark.parametrize("emptied", ["entries.npy", "vectors.npy"])
def test_an_index_file_left_empty_is_damaged_and_rebuilt(clip, gallery, settings, emptied):
    update_index(clip, gallery, settings.data_dir)
    root = index_root(settings.data_dir, gallery, clip.name)
    folder = root / current_generation(root) if emptied == "entries.npy" else next((root / "segments").glob("seg-*"))
    (folder / emptied).write_bytes(b"")  # as a disk that filled up, or a copy cut short, leaves it
    with pytest.raises(IndexProblem, match="damaged"):
        load_index(root, gallery.resolve(), clip.name, clip.version)
    index, report = open_or_build(clip, gallery, settings.data_dir)
    assert "damaged" in report.rebuilt_because and len(index) == 4


CRASHER = """
import os, sys, signal
from pathlib import Path
from captioner import index as gallery_index, index_store
from captioner.embed import load_embedder
from captioner.settings import Settings

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

index_store.write_atomic = die  # killed after the new generation is written, before CURRENT moves
settings = Settings.from_env()
gallery_index.update_index(load_embedder(sys.argv[1], settings), Path(sys.argv[2]), settings.data_dir)
"""


def test_a_crash_in_the_middle_of_an_update_is_recovered(clip, gallery, settings, tiny_clip_dir):
    update_index(clip, gallery, settings.data_dir)
    (gallery / "5-extra.png").write_bytes(zoo.encode(zoo.demo("triangle", "red"), "PNG"))
    done = subprocess.run([sys.executable, "-c", CRASHER, str(tiny_clip_dir), str(gallery)], cwd=ROOT,
                          env=child_env(), timeout=300)  # fmt: skip
    assert done.returncode == -signal.SIGKILL
    root = index_root(settings.data_dir, gallery, clip.name)
    still = load_index(root, gallery.resolve(), clip.name, clip.version)  # searches see the complete old index
    assert len(still) == 4
    index, report = update_index(clip, gallery, settings.data_dir)
    assert len(index) == 5 and report.added == 1
    assert len(list(root.glob("gen-*"))) <= 2 and not list(root.glob(".gen-*"))


def interrupt_on_call(model, monkeypatch, call: int) -> None:
    """The model's image tower is stopped (as by Ctrl-C) when asked for its batch number `call`."""
    calls, encode = [], model.encode_image

    def encode_image(pixels):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return encode(pixels)

    monkeypatch.setattr(model, "encode_image", encode_image)


def add_pictures(gallery, count):
    for i in range(count):
        shape, color = ("circle", "square", "triangle")[i % 3], ("red", "green", "blue", "yellow")[i % 4]
        (gallery / f"more-{i}.png").write_bytes(zoo.encode(zoo.demo(shape, color, 70 + 9 * i), "PNG"))


def test_an_interrupted_update_resumes_without_embedding_again_what_it_had_done(
    clip, gallery, settings, tmp_path, monkeypatch,
):  # fmt: skip
    monkeypatch.setattr("captioner.embed.DEFAULT_BATCH_SIZE", 2)
    add_pictures(gallery, 6)  # 10 pictures: 5 batches
    interrupt_on_call(clip.model, monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        update_index(clip, gallery, settings.data_dir)
    monkeypatch.undo()
    monkeypatch.setattr("captioner.embed.DEFAULT_BATCH_SIZE", 2)

    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.resumed, report.embedded, report.added, len(index)) == (6, 4, 10, 10)
    assert not (index_root(settings.data_dir, gallery, clip.name) / "unfinished").exists()
    clean, _ = update_index(clip, gallery, tmp_path / "clean")  # the same gallery indexed in one go
    for entry in clean.entries:
        resumed_vector = index.vector(index.entry_of(entry.path).row)
        np.testing.assert_allclose(resumed_vector, clean.vector(entry.row), atol=1e-6)
    assert [r.path for r in search_text(clip, index, "a red circle", 10)] == [
        r.path for r in search_text(clip, clean, "a red circle", 10)
    ]  # fmt: skip


def test_a_journal_keeps_only_whole_rows_of_its_own_model_version(clip, gallery, settings, monkeypatch):
    monkeypatch.setattr("captioner.embed.DEFAULT_BATCH_SIZE", 2)
    interrupt_on_call(clip.model, monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        update_index(clip, gallery, settings.data_dir)  # 4 pictures: the first batch of 2 journaled, then stopped
    journal = index_root(settings.data_dir, gallery, clip.name) / "unfinished"
    vectors = journal / "vectors.f32"
    vectors.write_bytes(vectors.read_bytes()[:-5])  # the last row torn, as by a power cut
    with open(journal / "shas.txt", "a") as shas:
        shas.write("f" * 20)  # a hash line cut short
    monkeypatch.undo()
    _, report = update_index(clip, gallery, settings.data_dir)
    assert (report.resumed, report.embedded) == (1, 3)

    interrupt_on_call(clip.model, monkeypatch, 1)
    (gallery / "new.png").write_bytes(zoo.encode(zoo.demo("square", "green"), "PNG"))
    (gallery / "new2.png").write_bytes(zoo.encode(zoo.demo("circle", "blue"), "PNG"))
    with pytest.raises(KeyboardInterrupt):
        update_index(clip, gallery, settings.data_dir)
    assert not (journal / "vectors.f32").exists()  # stopped before its first batch: nothing to keep
    monkeypatch.undo()
    (journal).mkdir(exist_ok=True)
    (journal / "meta.json").write_text(json.dumps({"model_version": "another", "dim": 4}))
    (journal / "vectors.f32").write_bytes(np.ones((2, 4), np.float32).tobytes())
    _, report = update_index(clip, gallery, settings.data_dir)
    assert (report.resumed, report.embedded, report.added) == (0, 2, 2)


def test_a_resumed_update_interrupted_again_pairs_every_file_with_its_own_vector(
    clip, gallery, settings, tmp_path, monkeypatch,
):  # fmt: skip
    monkeypatch.setattr("captioner.embed.DEFAULT_BATCH_SIZE", 2)
    add_pictures(gallery, 6)
    interrupt_on_call(clip.model, monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        update_index(clip, gallery, settings.data_dir)
    journal = index_root(settings.data_dir, gallery, clip.name) / "unfinished"
    with open(journal / "vectors.f32", "ab") as vectors:  # a batch whose vectors reached the disk, not its hashes
        stray = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
        vectors.write((stray / np.linalg.norm(stray, axis=1, keepdims=True)).tobytes())
    for stop_at in (3, None):  # the resumed update is interrupted too, then one finishes
        monkeypatch.undo()
        monkeypatch.setattr("captioner.embed.DEFAULT_BATCH_SIZE", 2)
        if stop_at:
            interrupt_on_call(clip.model, monkeypatch, stop_at)
            with pytest.raises(KeyboardInterrupt):
                update_index(clip, gallery, settings.data_dir)
        else:
            index, _ = update_index(clip, gallery, settings.data_dir)
    clean, _ = update_index(clip, gallery, tmp_path / "clean")
    for entry in clean.entries:
        np.testing.assert_allclose(index.vector(index.entry_of(entry.path).row), clean.vector(entry.row), atol=1e-6)


def test_an_update_that_finds_another_running_says_so_and_waits_for_it(clip, gallery, settings, tiny_clip_dir):
    import threading

    from filelock import FileLock

    update_index(clip, gallery, settings.data_dir)
    (gallery / "new.png").write_bytes(zoo.encode(zoo.demo("square", "green"), "PNG"))
    other = FileLock(str(index_root(settings.data_dir, gallery, clip.name) / "update.lock"))
    other.acquire()  # another update of this index is running
    waiting, finished = threading.Event(), []
    worker = threading.Thread(
        target=lambda: finished.append(update_index(clip, gallery, settings.data_dir, on_wait=waiting.set))
    )  # fmt: skip
    worker.start()
    assert waiting.wait(60) and worker.is_alive() and not finished  # told, and waiting
    other.release()
    worker.join(60)
    index, report = finished[0]
    assert report.added == 1 and len(index) == 5
    told = []
    update_index(clip, gallery, settings.data_dir, on_wait=lambda: told.append(1))
    assert told == []  # nothing else running: nothing said

    other.acquire()  # the CLI says it on stderr
    cli = subprocess.Popen([sys.executable, "-m", "captioner", "index", str(gallery), "--model", str(tiny_clip_dir)],
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())  # fmt: skip
    watchdog = threading.Timer(120, cli.kill)  # a CLI that never says so would wait an hour for the lock
    watchdog.start()
    lines = []
    try:
        while not lines or (lines[-1] and "waiting" not in lines[-1]):
            lines.append(cli.stderr.readline())
    finally:
        other.release()
        watchdog.cancel()
    assert "another update of this index is running: waiting for it to finish" in lines[-1]
    assert cli.wait(120) == 0 and "5 images indexed" in cli.stderr.read()


def test_a_disk_that_fills_up_mid_update_is_one_clear_problem_and_the_next_update_resumes(
    clip, gallery, settings, monkeypatch,
):  # fmt: skip
    import errno

    from captioner import index_arrange

    update_index(clip, gallery, settings.data_dir)
    (gallery / "new.png").write_bytes(zoo.encode(zoo.demo("square", "green"), "PNG"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(index_arrange, "write_segment", disk_full)
    with pytest.raises(IndexProblem, match=r"could not be written \(No space left on device\); it is as it was"):
        update_index(clip, gallery, settings.data_dir)
    root = index_root(settings.data_dir, gallery, clip.name)
    assert len(load_index(root, gallery.resolve(), clip.name, clip.version)) == 4  # searches see the old index
    monkeypatch.undo()
    index, report = update_index(clip, gallery, settings.data_dir)
    assert (report.added, report.resumed, report.embedded, len(index)) == (1, 1, 0, 5)


def test_demo_clip_reaches_precision_at_5(settings, tmp_path):
    from captioner.demo.quality import demo_inputs

    clip = load_embedder("demo", settings)
    gallery = tmp_path / "demo-gallery"
    gallery.mkdir()
    inputs, shown = demo_inputs(100, seed=777)
    for item in inputs:
        (gallery / item.name).write_bytes(item.data)
    assert sum(s.caption == "a red circle" for s in shown) >= 5
    index, _ = update_index(clip, gallery, settings.data_dir)
    label = lambda hit: "a " + " ".join(hit.path.stem.split("-")[2:4])  # noqa: E731
    text_hits = search_text(clip, index, "a red circle", k=5)
    assert sum(label(h) == "a red circle" for h in text_hits) / 5 >= 0.9
    query, truth = demo_inputs(1, seed=4321, shapes=("circle",), colors=("red",))
    image_hits = search_image(clip, index, query[0], k=5)
    assert sum(label(h) == truth[0].caption for h in image_hits) / 5 >= 0.9


@pytest.mark.gpu
def test_indexing_on_cuda_gives_unit_vectors_close_to_the_cpus(settings, tiny_clip_dir, gallery):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from captioner.settings import Settings

    on_gpu = load_embedder(str(tiny_clip_dir), Settings(home=settings.home, device="cuda"))
    on_cpu = load_embedder(str(tiny_clip_dir), Settings(home=settings.home, device="cpu"))
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.bfloat16
    inputs = [ImageInput(p.name, p.read_bytes()) for p in sorted(gallery.glob("*.png"))]
    inputs.append(ImageInput("photo.jpg", zoo.encode(zoo.demo("square", "red", 300), "JPEG")))
    gpu, cpu = embed_images(on_gpu, inputs), embed_images(on_cpu, inputs)
    assert gpu.ok == cpu.ok == list(range(5))
    assert np.abs(np.linalg.norm(gpu.vectors, axis=1) - 1).max() <= 1e-6  # normalised in fp32 after bf16
    assert (gpu.vectors * cpu.vectors).sum(axis=1).min() >= 0.98
    index, _ = update_index(on_gpu, gallery, settings.data_dir)
    query = ImageInput("q.png", (gallery / "2-green-triangle.png").read_bytes())
    assert search_image(on_gpu, index, query, k=1)[0].score == pytest.approx(1.0, abs=1e-6)


def test_a_query_image_searched_again_is_not_decoded_or_encoded_again(clip, gallery, settings, monkeypatch):
    index, _ = update_index(clip, gallery, settings.data_dir)
    encoded = []
    encode_image = clip.model.encode_image
    monkeypatch.setattr(clip.model, "encode_image", lambda pixels: encoded.append(len(pixels)) or encode_image(pixels))
    query = ImageInput("q.png", (gallery / "2-green-triangle.png").read_bytes())
    first = search_image(clip, index, query, k=3)
    again = search_image(clip, index, ImageInput("same-bytes.png", query.data), k=4)  # a rerun: another page, another k
    assert encoded == [1] and [h.path for h in again[:3]] == [h.path for h in first]
    search_image(clip, index, ImageInput("other.png", (gallery / "1-blue-square.png").read_bytes()), k=3)
    assert encoded == [1, 1]  # another picture is encoded


def test_a_rebuild_from_an_older_format_removes_the_old_files(clip, gallery, settings):
    update_index(clip, gallery, settings.data_dir)
    root = index_root(settings.data_dir, gallery, clip.name)
    generation = root / current_generation(root)
    old = root / "gen-20261122000000-abcdef"  # as the first index format left it: all vectors inside its generation
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"format": 1, "model": clip.name, "entries": 4}))
    (old / "vectors.npy").write_bytes(b"\0" * 4096)
    (old / "entries.jsonl").write_text("{}\n" * 4)
    (root / "CURRENT").write_text(json.dumps({"generation": old.name}))
    shutil.rmtree(generation)
    for segment in (root / "segments").glob("seg-*"):
        shutil.rmtree(segment)
    index, report = open_or_build(clip, gallery, settings.data_dir)
    assert "format 1" in report.rebuilt_because and len(index) == 4
    assert not old.exists() and [p.name for p in root.glob("gen-*")] == [current_generation(root)]  # nothing stays
    index, report = update_index(clip, gallery, settings.data_dir)
    assert report.unchanged == 4 and len(index) == 4
