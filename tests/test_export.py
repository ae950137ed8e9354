"""Exports other tools read: the Hugging Face dataset folder, JSONL, and a log that tries to lead the export astray."""

import json
import os
from datetime import timezone
from pathlib import Path

import pytest

from captioner.export import ExportError, export, new_export_folder, zip_export
from captioner.feedback import FIELDS, FeedbackLog
from captioner.review import set_status
from conftest import needs


@pytest.fixture
def log(tmp_path, demo_png):
    log = FeedbackLog(tmp_path / "data")
    for i, (shape, color) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")]):
        log.record(demo_png(shape, color), "png", task="caption", model_output="a blob", correction=f"a {color} {shape}",
                   score=-0.5 - i)  # fmt: skip
    log.record(demo_png("circle", "red"), "png", task="qa", prompt="what color is the shape?", model_output="blue", correction="red")
    set_status(log, {r.id for r in log.read()[0]}, "approved", "tester")
    return log


def test_hf_export_keeps_qa_apart_times_in_utc_and_paths_inside_the_export(log, tmp_path):
    needs("datasets")
    from datasets import load_dataset

    out = tmp_path / "export"
    report = export(log, out, "hf")
    assert report.count == 4 and report.by_config == {"captions": 3, "qa": 1} and report.skipped == []
    cache = str(tmp_path / "hf-cache")  # datasets' own cache can serve an older export of the same folder name
    captions = load_dataset(str(out), split="train", cache_dir=cache)  # the card's default config: captions only
    assert sorted(captions["text"]) == ["a blue square", "a green triangle", "a red circle"]
    assert set(captions["task"]) == {"caption"}
    created = captions[0]["created_at"]
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert captions[0]["reviewed_at"].tzinfo == timezone.utc or captions[0]["reviewed_at"].utcoffset().total_seconds() == 0
    assert sorted(captions["score"]) == [-2.5, -1.5, -0.5]
    for path in captions["image_path"]:
        assert (out / path).is_file() and (out / path).resolve().is_relative_to(out.resolve())
    qa = load_dataset(str(out), "qa", split="train", cache_dir=cache)
    assert qa["text"] == ["red"] and qa["prompt"] == ["what color is the shape?"]
    only_captions = load_dataset("imagefolder", data_dir=str(out / "captions"), split="train", cache_dir=cache)
    assert len(only_captions) == 3 and only_captions[0]["image"].size == (128, 128)


def test_jsonl_export_lists_every_field_with_images_inside_it(log, tmp_path):
    out = tmp_path / "export"
    report = export(log, out, "jsonl")
    lines = [json.loads(line) for line in (out / "approved.jsonl").read_text(encoding="utf-8").splitlines()]
    assert report.count == 4 and len(lines) == 4
    assert all((out / line["image"]).is_file() and line["image_path"] == line["image"] for line in lines)
    assert len(list((out / "images").iterdir())) == 3  # the red circle is stored once for its two rows


def test_an_export_copies_so_editing_it_cannot_change_the_stored_images(log, tmp_path):
    out = tmp_path / "export"
    export(log, out, "hf")
    exported = next((out / "captions" / "train").glob("*.png"))
    row = next(r for r in log.read()[0] if exported.stem == r.id)
    exported.write_bytes(b"edited")
    assert (log.data_dir / row.image_path).read_bytes() != b"edited"


def test_rows_that_lead_outside_data_images_are_reported_and_never_followed(log, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for export")
    rows, _ = log.read()
    outside = log.images_dir / "link.png"
    os.symlink(secret, outside)
    hostile = [
        rows[0]._replace(id="via-link", image_path="images/link.png", correction="x1"),
        rows[1]._replace(id="missing", image_path="images/none.png", correction="x2"),
    ]
    log.append(hostile)
    with open(log.csv_path, "ab") as handle:  # hand edits the log refuses to read as rows
        rest = b"," * (len(FIELDS) - 11) + b"\r\n"
        handle.write(b"../../escape,2026-01-01T00:00:00+00:00,ab,images/a.png,caption,,,,a,b,approved" + rest)
        handle.write(b"ok-id,2026-01-01T00:00:00+00:00,ab,../../../etc/passwd,caption,,,,a,b,approved" + rest)
    out = tmp_path / "exports" / "one"
    report = export(log, out, "hf")
    assert report.count == 4 and len(report.skipped) == 2
    assert any("via-link" in reason and "outside" in reason for reason in report.skipped)
    assert any("missing" in reason and "missing" in reason for reason in report.skipped)
    assert not any("not for export" in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["one"]  # nothing written beside it
    problems = log.read()[1]  # two bad lines in a row: one problem, both kept verbatim
    assert len(problems) == 1 and problems[0].reason.startswith("id '../../escape'") and "etc/passwd" in problems[0].raw


def test_an_export_says_how_far_it_is_and_its_zip_stores_pictures_without_deflating_them_again(log, tmp_path):
    import zipfile

    copied, zipped = [], []
    out = tmp_path / "export"
    export(log, out, "hf", on_progress=lambda done, total: copied.append((done, total)))
    assert copied[-1] == (4, 4) and [done for done, _ in copied] == sorted({done for done, _ in copied})
    archive = zip_export(out, on_progress=lambda done, total: zipped.append((done, total)))
    assert archive == tmp_path / "export.zip" and not list(tmp_path.glob("*.partial"))
    with zipfile.ZipFile(archive) as bundle:
        entries = {info.filename: info for info in bundle.infolist()}
        assert bundle.testzip() is None
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert sorted(entries) == written and zipped[-1] == (len(written), len(written))
    methods = {name.rsplit(".", 1)[1]: info.compress_type for name, info in entries.items()}
    assert methods == {"png": zipfile.ZIP_STORED, "parquet": zipfile.ZIP_STORED, "md": zipfile.ZIP_DEFLATED}


def test_an_export_into_a_folder_in_use_is_refused(log, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        export(log, busy, "hf")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_an_export_that_cannot_be_written_is_one_clear_error_and_leaves_nothing(log, tmp_path, monkeypatch):
    import errno

    from captioner import export as export_module

    with pytest.raises(ExportError, match="cannot write the export into /proc"):
        export(log, Path("/proc/approved"), "jsonl")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module.shutil, "copyfile", disk_full)
    with pytest.raises(ExportError, match="could not be written: No space left on device; nothing was kept"):
        export(log, tmp_path / "out", "jsonl")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*.partial"))


def test_the_readme_recipe_reads_the_log_with_pandas_keeping_empty_fields_and_words_as_text(tmp_path):
    import pandas as pd

    log = FeedbackLog(tmp_path)
    log.record(b"img", "png", task="caption", model_output="NA", correction="null", notes="nan")
    log.record(b"img2", "png", task="caption", model_output="", correction="N/A", prompt="")
    frame = pd.read_csv(log.csv_path, dtype=str, keep_default_na=False)  # the README's recipe
    assert frame["correction"].tolist() == ["null", "N/A"] and frame["notes"].tolist() == ["nan", ""]
    assert frame["model_output"].tolist() == ["NA", ""] and frame["score"].tolist() == ["", ""]
    assert not frame.isna().any().any()


def test_an_export_without_caption_rows_never_gives_qa_rows_as_the_captions(tmp_path, demo_png):
    needs("datasets")
    from datasets import load_dataset

    log = FeedbackLog(tmp_path / "data")
    for question, answer in (("what shape is it?", "circle"), ("what color is the shape?", "red")):
        log.record(demo_png("circle", "red"), "png", task="qa", prompt=question, model_output="x", correction=answer)
    log.record(demo_png("square", "blue"), "png", task="style", prompt="poetic", model_output="a", correction="b")
    set_status(log, {r.id for r in log.read()[0]}, "approved", "tester")
    out = tmp_path / "export"
    assert export(log, out, "hf").by_config == {"qa": 2, "styles": 1}
    cache = str(tmp_path / "hf-cache")
    with pytest.raises(ValueError, match="qa.*styles|styles.*qa"):  # no default: the caller must name one
        load_dataset(str(out), split="train", cache_dir=cache)
    assert sorted(load_dataset(str(out), "qa", split="train", cache_dir=cache)["text"]) == ["circle", "red"]


def test_exports_started_in_the_same_second_each_get_their_own_folder_and_zip(log, tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(time, "strftime", lambda *_: "20261207-190923")  # the same second for every one of them
    exports = tmp_path / "data" / "exports"
    (exports / "20261207-190923-hf-3.zip").parent.mkdir(parents=True)
    (exports / "20261207-190923-hf-3.zip").write_bytes(b"an older export's zip, its folder removed")
    outcomes = []

    def one() -> None:
        folder = new_export_folder(exports, "hf")
        outcomes.append((folder.name, export(log, folder, "hf").count, zip_export(folder).name))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [(name, 4, f"{name}.zip") for name in
                                ["20261207-190923-hf", "20261207-190923-hf-2", "20261207-190923-hf-4", "20261207-190923-hf-5"]]  # fmt: skip
    assert (exports / "20261207-190923-hf-3.zip").read_bytes().startswith(b"an older export")  # never overwritten
    with pytest.raises(ExportError, match="unknown export format 'csv'"):
        new_export_folder(exports, "csv")
