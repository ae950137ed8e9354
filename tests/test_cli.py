"""The command line as a script would use it: output formats, order, exit codes, one-line errors."""

import csv
import io
import json
import subprocess
import sys
import time

import images_zoo as zoo
from captioner.feedback import FIELDS
from conftest import ROOT, run_cli
from test_feedback import HOSTILE


def write(folder, name, data):
    path = folder / name
    path.write_bytes(data)
    return path


def test_caption_jsonl_in_input_order_with_bad_inputs_reported(home, tmp_path):
    good1 = write(tmp_path, "b-red-circle.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    bad = write(tmp_path, "notes.jpg", b"plain text")
    good2 = write(tmp_path, "a-green-square.jpg", zoo.encode(zoo.demo("square", "green"), "JPEG", quality=95))
    missing = tmp_path / "missing.png"
    done = run_cli("caption", good1, bad, missing, good2, "--model", "demo", "--num-beams", "2")
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(good1), str(bad), str(missing), str(good2)]
    assert [line["caption"] for line in lines] == ["a red circle", None, None, "a green square"]
    assert [line["score"] is None for line in lines] == [False, True, True, False]
    assert all(-5 < line["score"] <= 0 and round(line["score"], 4) == line["score"] for line in (lines[0], lines[3]))
    assert lines[1]["error"].startswith("not an image") and lines[2]["error"] == "no such file"
    errors = done.stderr.strip().splitlines()
    assert errors == [f"captioner: {bad}: {lines[1]['error']}", f"captioner: {missing}: no such file"]
    assert "Traceback" not in done.stderr


def test_caption_a_folder_to_csv_and_txt_files(home, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    write(folder, "1.png", zoo.encode(zoo.demo("triangle", "yellow"), "PNG"))
    write(folder, "2.png", zoo.encode(zoo.demo("circle", "blue"), "PNG"))
    out = tmp_path / "captions.csv"
    done = run_cli("caption", folder, "--model", "demo", "--format", "csv", "--out", out, "--batch-size", "1")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
    assert [(r["path"].rsplit("/", 1)[1], r["caption"]) for r in rows] == [("1.png", "a yellow triangle"), ("2.png", "a blue circle")]
    done = run_cli("caption", folder, "--model", "demo", "--format", "txt", "--out", "-", cwd=tmp_path)  # - is stdout
    # (run in tmp_path, to see no file named - is made)
    assert done.stdout.splitlines()[1].endswith("2.png\ta blue circle") and not (tmp_path / "-").exists()


def test_a_folder_is_walked_as_the_index_walks_it_and_odd_names_come_out_whole(home, tmp_path):
    import os

    from conftest import write_non_utf8_name

    folder, elsewhere = tmp_path / "shoot", tmp_path / "elsewhere"
    (folder / "day1").mkdir(parents=True)
    elsewhere.mkdir()
    write(folder / "day1", "a.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    write(elsewhere, "b.png", zoo.encode(zoo.demo("square", "blue"), "PNG"))
    os.symlink(elsewhere, folder / "day2")  # a card's second folder, linked in: followed
    os.symlink(folder / "day1", folder / "alias")  # the same folder twice: once
    write(folder, "._a.png", b"\x00\x05\x16\x07 AppleDouble")  # a Mac's resource fork: hidden, passed over
    write(folder, "notes.heic", b"not read")
    write(folder, "tab\tname.png", zoo.encode(zoo.demo("triangle", "green"), "PNG"))
    write_non_utf8_name(folder, b"caf\xe9.png", zoo.encode(zoo.demo("circle", "yellow"), "PNG"))
    out = tmp_path / "o.jsonl"
    done = run_cli("caption", folder, "--model", "demo", "--out", out)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]  # valid UTF-8 JSON
    assert [os.fsencode(line["path"])[len(os.fsencode(folder)) + 1 :] for line in lines] == [
        b"caf\xe9.png", b"day1/a.png", b"day2/b.png", b"tab\tname.png"]  # fmt: skip
    assert [line["caption"] for line in lines] == ["a yellow circle", "a red circle", "a blue square", "a green triangle"]
    assert "note: " in done.stderr and "2 file(s) left out, such as notes.heic (not an image file type)" in done.stderr  # and the alias
    run_cli("caption", folder, "--model", "demo", "--format", "txt", "--out", tmp_path / "o.txt")
    lines = (tmp_path / "o.txt").read_bytes().splitlines()  # a name as its own bytes; a tab in it written as \t
    assert [line.split(b"\t")[0].rsplit(b"/", 1)[1] for line in lines] == [b"caf\xe9.png", b"a.png", b"b.png", b"tab\\tname.png"]


def test_output_that_cannot_be_written_is_one_line_and_a_closed_pipe_is_quiet(home, tmp_path):
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("square", "yellow"), "PNG"))
    done = run_cli("caption", picture, picture, "--model", "demo", "--out", "/dev/full")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "/dev/full: cannot be written (No space left on device)" in done.stderr
    command = [sys.executable, "-m", "captioner", "caption", *[str(picture)] * 600, "--model", "demo"]  # 2 chunks
    reader = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writer = subprocess.run(command, stdout=reader.stdin, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300)
    reader.stdin.close()
    assert json.loads(reader.stdout.read())["caption"] == "a yellow square"
    assert writer.returncode == 1 and "Traceback" not in writer.stderr and "BrokenPipe" not in writer.stderr


def test_default_model_offline_falls_back_with_a_note(home, tmp_path):
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("square", "yellow"), "PNG"))
    done = run_cli("caption", picture, env={"CAPTIONER_CAPTION_MODEL": ""})
    assert done.returncode == 0
    assert json.loads(done.stdout)["caption"] == "a yellow square"
    assert "note: Salesforce/blip-image-captioning-base is not in the local Hugging Face cache" in done.stderr
    assert done.stderr.count("not in the local Hugging Face cache") == 1 and "instead;" not in done.stderr  # said once
    listed = run_cli("models", "list", env={"CAPTIONER_CAPTION_MODEL": ""}).stdout.splitlines()
    assert listed[-1].startswith("* the demo captioner (Salesforce/blip-image-captioning-base is not in the local")


def test_a_configured_model_that_names_nothing_is_an_error_naming_its_variable(home, tmp_path):
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("square", "yellow"), "PNG"))
    done = run_cli("caption", picture, env={"CAPTIONER_CAPTION_MODEL": "/no/such/folder"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "model folder '/no/such/folder' does not exist (CAPTIONER_CAPTION_MODEL=/no/such/folder)" in done.stderr
    done = run_cli("search", "--text", "a red circle", "--gallery", tmp_path, env={"CAPTIONER_SEARCH_MODEL": "ViT-B-3"})
    assert done.returncode == 2 and "'ViT-B-3' is not an open_clip model name" in done.stderr  # a typo: never the demo
    assert "(CAPTIONER_SEARCH_MODEL=ViT-B-3)" in done.stderr and done.stdout == ""


def test_user_errors_are_one_line_without_traceback(home, tmp_path):
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo(), "PNG"))
    for args, expected in [
        (("caption", picture, "--model", "./no/such/model"), "model folder './no/such/model' does not exist"),
        (("caption", picture, "--model", "demo", "--num-beams", "0"), "beams must be 1 to 10"),
        (("caption", picture, "--model", "demo", "--prompt", "a photo of a " * 11),
         "the prompt (44 tokens) plus min new tokens (0) do not fit this captioner's 32 text positions"),
        (("feedback", "add", picture, "--correction", " "), "the correction is empty"),
        (("feedback", "add", picture, "--correction", "red", "--task", "qa"), "a qa row needs its question as the prompt"),
        (("feedback", "add", picture, "--correction", "red", "--task", "style"), "a style row needs its style as the prompt"),
        (("caption", picture, "--model", "v0001"), "a fine-tuned version is `active`, or its folder: models/v0001"),
    ]:
        done = run_cli(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    done = run_cli("feedback", "add", tmp_path / "nope.png", "--correction", "x")  # a failed input: 1, as caption says
    assert done.returncode == 1 and done.stderr == f"captioner: {tmp_path / 'nope.png'}: no such file\n"
    forger = write(tmp_path, "bad\r\ncaptioner: ok.jpg: fine.jpg", b"")  # a name that would print a line of its own
    done = run_cli("caption", forger, "--model", "demo")
    assert done.returncode == 1 and done.stderr == f"captioner: {tmp_path}/bad\\r\\ncaptioner: ok.jpg: fine.jpg: empty file (0 bytes)\n"
    done = run_cli("ask", picture, "what?", "--model", "demo", env={"CAPTIONER_OPENAI_TIMEOUT": "inf"})
    assert done.returncode == 2 and "CAPTIONER_OPENAI_TIMEOUT=inf must be a number of seconds above 0" in done.stderr
    done = run_cli("caption", picture, env={"CAPTIONER_DEVICE": "gpu"})
    assert done.returncode == 2 and "CAPTIONER_DEVICE='gpu'" in done.stderr


def test_feedback_add_and_list_round_trip_hostile_text(home, tmp_path):
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo(), "PNG"))
    for text in HOSTILE[:4]:
        done = run_cli("feedback", "add", picture, "--correction", text, "--model-output", "a red circle")
        assert done.returncode == 0 and json.loads(done.stdout)["correction"] == " ".join(text.split())  # a caption's words
    again = run_cli("feedback", "add", picture, "--correction", HOSTILE[0], "--model-output", "a red circle")
    assert again.returncode == 0 and "already logged" in again.stderr
    run_cli("feedback", "add", picture, "--correction", "a red circle", "--model-output", "a red circle", "--status", "approved")
    listed = [json.loads(line) for line in run_cli("feedback", "list").stdout.splitlines()]
    assert [row["correction"] for row in listed] == [" ".join(text.split()) for text in HOSTILE[:4]] + ["a red circle"]
    approved = run_cli("feedback", "list", "--status", "approved", "--format", "csv").stdout
    assert list(csv.DictReader(io.StringIO(approved)))[0]["status"] == "approved"
    as_csv = list(csv.DictReader(io.StringIO(run_cli("feedback", "list", "--format", "csv").stdout)))
    assert as_csv[3]["correction"] == "'" + listed[3]["correction"]  # =HYPERLINK(...) shows as text in a spreadsheet
    assert [row["correction"] for row in as_csv[:3]] == [row["correction"] for row in listed[:3]]
    assert len(list((home / "data" / "images").iterdir())) == 1


def test_feedback_list_reports_broken_rows_by_line(home, tmp_path):
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo(), "PNG"))
    run_cli("feedback", "add", picture, "--correction", "fine")
    with open(home / "data" / "feedback.csv", "a", encoding="utf-8") as handle:
        handle.write("garbage,row\r\n")
    done = run_cli("feedback", "list")
    assert done.returncode == 1 and len(done.stdout.splitlines()) == 1
    assert f"feedback.csv: line 3: expected {len(FIELDS)} fields, found 2" in done.stderr


def test_feedback_and_models_list_do_not_import_torch_and_answer_fast(home):
    for command in (["feedback", "list"], ["models", "list"]):
        probe = (
            f"import sys, time; t = time.time(); from captioner.__main__ import main; main({command!r}); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print(time.time() - t)"
        )
        started = time.time()
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert float(done.stdout.strip().splitlines()[-1]) < 1.0 and time.time() - started < 5


def test_demo_images_writes_pictures_and_captions(tmp_path):
    done = run_cli("demo", "images", tmp_path / "stars", "--n", "5", "--shapes", "star", "--format", "jpg")
    assert done.returncode == 0
    records = [json.loads(line) for line in (tmp_path / "stars" / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(r["caption"].endswith(" star") for r in records)
    assert all((tmp_path / "stars" / r["file"]).stat().st_size > 0 for r in records)
    bad = run_cli("demo", "images", tmp_path / "x", "--shapes", "blob")
    assert bad.returncode == 2 and "blob" in bad.stderr
    (tmp_path / "a-file").write_text("not a folder")
    for outdir, why in ((tmp_path / "a-file", "File exists"), (tmp_path / "a-file" / "below", "Not a directory")):
        done = run_cli("demo", "images", outdir, "--n", "2")
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip() == f"captioner: {outdir}: cannot write the images there ({why})"
    assert run_cli("demo", "images", tmp_path / "y", "--n", "0").stderr.strip() == "captioner: --n must be at least 1, not 0"


def test_a_folder_bigger_than_memory_is_read_a_chunk_ahead_and_written_as_it_goes(home, tmp_path, monkeypatch):
    """A curator's folder of any size: files are read at most a chunk ahead of the two chunks being captioned, and
    the rows of each finished chunk are in --out's .partial file before more is read (an interrupted run keeps them)."""
    from captioner.cli import captions
    from captioner.cli.parser import build_parser
    from captioner.settings import Settings

    folder = tmp_path / "pics"
    folder.mkdir()
    pictures = [("circle", "red"), ("square", "green"), ("triangle", "blue"), ("circle", "yellow"), ("square", "red")]
    for i, (shape, colour) in enumerate(pictures * 2):
        write(folder, f"{i:02d}.png", zoo.encode(zoo.demo(shape, colour), "PNG"))
    write(folder, "03.png", b"not a picture")  # unreadable as an image: its row says so, in place
    out, partial = tmp_path / "captions.jsonl", tmp_path / "captions.jsonl.partial"
    read, seen = [], []
    real_read, real_caption = captions.read_file, captions.caption_images

    def counted_read(path):
        read.append(partial.read_text().count("\n"))  # the rows written when this file is read
        return real_read(path)

    def caption_seen(loaded, inputs, *args, **kwargs):
        seen.append((len(read), partial.read_text().count("\n")))
        return real_caption(loaded, inputs, *args, **kwargs)

    monkeypatch.setattr(captions, "CHUNK_FILES", 3)
    monkeypatch.setattr(captions, "read_file", counted_read)
    monkeypatch.setattr(captions, "caption_images", caption_seen)
    args = build_parser().parse_args(["caption", str(folder), "--model", "demo", "--out", str(out)])
    assert captions.cmd_caption(args, Settings.from_env()) == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [f"a {colour} {shape}" for shape, colour in pictures * 2]
    expected[3] = None
    assert [line["caption"] for line in lines] == expected and [line["path"][-6:] for line in lines] == [f"{i:02d}.png" for i in range(10)]
    assert "error" in lines[3] and "error" not in lines[4]
    assert len(seen) == 4 and all(rows >= 3 * (chunk - 1) for chunk, (_, rows) in enumerate(seen))  # a chunk's rows
    # are written before the chunk two after it is captioned; whatever the threads' timing, no file is read while
    # three chunks are read and not yet written (the two being captioned and the one read ahead)
    assert len(read) == 10 and max(n - rows for n, rows in enumerate(read, 1)) <= 3 * 3


def test_an_out_file_that_cannot_be_written_is_one_error_before_any_image_is_captioned(home, tmp_path):
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("square", "yellow"), "PNG"))
    out = tmp_path / "no-such-folder" / "out.jsonl"
    done = run_cli("caption", picture, "--model", "demo", "--out", out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"captioner: --out {out}: cannot be written (No such file or directory)"]
    command = [sys.executable, "-m", "captioner", "caption", str(picture), "--model", "demo"]
    closed = subprocess.run(command, stdout=None, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300,
                            preexec_fn=lambda: __import__("os").close(1))  # started as `>&-` starts it
    assert closed.returncode == 2 and closed.stderr == "captioner: standard output is closed; give --out FILE\n"


def test_a_caption_run_stopped_after_its_first_chunk_starts_no_more(home, tmp_path, monkeypatch):
    """Ctrl-C or a failed write: the chunks under way are abandoned, and nothing further is read or captioned."""
    from captioner.caption import GenerationOptions
    from captioner.cli import captions
    from captioner.models import load_captioner
    from captioner.settings import Settings

    paths = [write(tmp_path, f"{i}.png", zoo.encode(zoo.demo("circle", "red"), "PNG")) for i in range(12)]
    calls, real_caption = [], captions.caption_images
    monkeypatch.setattr(captions, "CHUNK_FILES", 2)
    monkeypatch.setattr(captions, "caption_images", lambda *a, **k: calls.append(1) or real_caption(*a, **k))
    loaded = load_captioner("demo", Settings.from_env())
    chunks = captions.captioned_chunks(loaded, paths, GenerationOptions(), None)
    chunk, results = next(chunks)
    assert [r.caption for r in results] == ["a red circle"] * 2
    started = time.monotonic()
    chunks.close()
    assert time.monotonic() - started < 5 and len(calls) <= 3


def test_an_out_file_that_is_one_of_the_inputs_is_refused_and_the_image_kept(home, tmp_path):
    folder = tmp_path / "shoot"
    folder.mkdir()
    picture = write(folder, "p.jpg", zoo.encode(zoo.demo("square", "yellow"), "JPEG", quality=95))
    other = write(tmp_path, "q.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    before = picture.read_bytes()
    (tmp_path / "alias.jpg").symlink_to(picture)
    for out in (picture, tmp_path / "alias.jpg"):  # the file itself, or a link to it
        done = run_cli("caption", other, folder, "--model", "demo", "--out", out)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"captioner: --out {out}: is the input {picture}; writing there would destroy it"
        assert picture.read_bytes() == before


def test_the_next_chunk_goes_to_the_engine_only_near_the_end_of_the_one_before(home, tmp_path, monkeypatch):
    """Two whole chunks at once would share every batch and finish together, twice as late: an interrupted run would
    keep half as much, and the first rows would come twice as late. The next starts when NEXT_CHUNK_AT files are left."""
    from captioner.caption import GenerationOptions
    from captioner.cli import captions
    from captioner.engine import engine_for
    from captioner.models import load_captioner
    from captioner.settings import Settings

    shapes = [(shape, colour) for shape in ("circle", "square", "triangle") for colour in ("red", "green", "blue", "yellow")]
    paths = [write(tmp_path, f"{i:02d}.png", zoo.encode(zoo.demo(*shapes[i % 12]), "PNG")) for i in range(48)]
    loaded = load_captioner("demo", Settings.from_env())
    engine, captioned_before, real_caption = engine_for(loaded), [], captions.caption_images
    already = engine.images_run  # (an engine an earlier test in this process used)
    monkeypatch.setattr(captions, "CHUNK_FILES", 16)
    monkeypatch.setattr(captions, "NEXT_CHUNK_AT", 4)
    monkeypatch.setattr(captions, "caption_images",
                        lambda *a, **k: captioned_before.append(engine.images_run - already) or real_caption(*a, **k))
    chunks = list(captions.captioned_chunks(loaded, paths, GenerationOptions(num_beams=1), 2))
    assert [r.caption for _, results in chunks for r in results] == [f"a {colour} {shape}" for shape, colour in shapes] * 4
    assert captioned_before[0] == 0 and captioned_before[1] >= 16 - 4 and captioned_before[2] >= 32 - 4, captioned_before


def test_a_quoted_pattern_is_expanded_as_a_shell_would(home, tmp_path):
    """`caption 'shoot/*.png'` from a script or a Windows shell, where nothing expands the pattern first."""
    folder = tmp_path / "shoot"
    (folder / "day2").mkdir(parents=True)
    write(folder, "b.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    write(folder, "a.png", zoo.encode(zoo.demo("square", "blue"), "PNG"))
    write(folder, "c.jpg", zoo.encode(zoo.demo("triangle", "green"), "JPEG", quality=95))
    write(folder / "day2", "d.png", zoo.encode(zoo.demo("circle", "yellow"), "PNG"))
    write(folder, "odd[1].png", zoo.encode(zoo.demo("square", "red"), "PNG"))  # a real name with pattern characters
    done = run_cli("caption", f"{folder}/*.png", f"{folder}/**/d.png", folder / "odd[1].png", f"{folder}/*.gif", "--model", "demo")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"][len(str(folder)) + 1 :] for line in lines] == ["a.png", "b.png", "odd[1].png", "day2/d.png", "odd[1].png", "*.gif"]
    assert [line["caption"] for line in lines] == ["a blue square", "a red circle", "a red square", "a yellow circle", "a red square", None]
    assert lines[-1]["error"] == "no such file" and done.returncode == 1


def test_a_version_folder_named_as_under_captioner_home_is_found_from_any_folder(home, tmp_path):
    import shutil

    from captioner.models import demo_model_dir

    shutil.copytree(demo_model_dir("caption"), home / "models" / "v0001")
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wrong = run_cli("caption", picture, "--model", "v0001", cwd=elsewhere)
    assert wrong.returncode == 2 and "(a fine-tuned version is `active`, or its folder: models/v0001)" in wrong.stderr
    done = run_cli("caption", picture, "--model", "models/v0001", cwd=elsewhere)  # as the hint says
    assert done.returncode == 0 and json.loads(done.stdout)["caption"] == "a red circle", done.stderr


def test_a_home_with_no_log_says_where_it_looked_instead_of_an_empty_answer(home, tmp_path):
    typo = tmp_path / "captioner-hmoe"  # CAPTIONER_HOME mistyped: an empty list looked like a log with no rows
    for command in (["feedback", "list"], ["feedback", "export", "--format", "jsonl", "--out", tmp_path / "out"]):
        done = run_cli(*command, env={"CAPTIONER_HOME": str(typo)})
        assert f"note: {typo / 'data' / 'feedback.csv'} does not exist: nothing is logged under CAPTIONER_HOME={typo}" in done.stderr
    run_cli("feedback", "add", write(tmp_path, "p.png", zoo.encode(zoo.demo(), "PNG")), "--correction", "fine")
    done = run_cli("feedback", "list")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1 and "note" not in done.stderr
