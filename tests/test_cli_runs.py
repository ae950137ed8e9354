"""`caption` runs as scripts drive them: paths listed on stdin, and an --out file kept whole when a run stops."""

import csv
import io
import json
import os
import subprocess
import sys

import images_zoo as zoo
from conftest import ROOT, child_env, run_cli, write_non_utf8_name
from test_cli import write


def caption_listed(listed: bytes, *args):
    """`caption - ARGS...` with listed on its standard input."""
    command = [sys.executable, "-m", "captioner", "caption", "-", "--model", "demo", *map(str, args)]
    return subprocess.run(command, input=listed, capture_output=True, env=child_env(), cwd=ROOT, timeout=300)


def test_paths_listed_on_stdin_are_captioned_in_order_folders_walked(home, tmp_path):
    """`find ... | captioner caption -` said "-: no such file"; a `-` now reads the paths, one a line, or NUL-separated
    (`find -print0`, for names holding a line break), names that are not UTF-8 kept as their bytes."""
    folder = tmp_path / "shoot"
    folder.mkdir()
    write(folder, "b.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    write(folder, "a.png", zoo.encode(zoo.demo("square", "blue"), "PNG"))
    loose = write(tmp_path, "loose one.png", zoo.encode(zoo.demo("triangle", "green"), "PNG"))
    latin = write_non_utf8_name(tmp_path, b"caf\xe9.png", zoo.encode(zoo.demo("circle", "yellow"), "PNG"))
    listed = b"%s\r\n%s\n\n%s\n%s\n" % (bytes(folder), bytes(loose), os.path.join(bytes(tmp_path), latin), b"/no/such.png")
    done = caption_listed(listed)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [os.fsencode(row["path"]) for row in rows] == [
        bytes(folder / "a.png"), bytes(folder / "b.png"), bytes(loose), os.path.join(bytes(tmp_path), latin), b"/no/such.png"]
    assert [row["caption"] for row in rows] == ["a blue square", "a red circle", "a green triangle", "a yellow circle", None]
    assert done.returncode == 1 and b"/no/such.png: no such file" in done.stderr

    odd = write(tmp_path, "two\nlines.png", zoo.encode(zoo.demo("square", "red"), "PNG"))
    done = caption_listed(b"%s\0%s\0" % (bytes(odd), bytes(loose)), "--format", "csv")
    table = list(csv.DictReader(io.StringIO(done.stdout.decode(), newline="")))
    assert [(row["path"], row["caption"]) for row in table] == [(str(odd), "a red square"), (str(loose), "a green triangle")]
    assert done.returncode == 0
    empty = caption_listed(b"")
    assert empty.returncode == 3 and empty.stdout == b"" and empty.stderr.decode().splitlines() == [
        "captioner: -: standard input named no paths", "captioner: nothing to caption: the inputs hold no image files"]


def test_nothing_to_caption_exits_3_loads_no_model_and_leaves_the_out_file_as_it_was(home, tmp_path):
    """An empty folder (a drive not mounted) exited 0 like a run that captioned everything, after loading the model,
    and replaced --out's results with an empty file; now it exits 3 (0 success, 1 a failed input, 2 usage), before
    any model is loaded (this spec names none), and --out keeps the results of the run before."""

    empty = tmp_path / "mount"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a picture")
    out = tmp_path / "results.csv"
    out.write_bytes(b"the run before\r\n")
    done = run_cli("caption", empty, "--model", "no-such/captioner", "--format", "csv", "--out", out)
    assert done.returncode == 3 and done.stdout == "" and out.read_bytes() == b"the run before\r\n"
    assert done.stderr.splitlines()[-1] == f"captioner: nothing to caption: the inputs hold no image files; --out {out} is left as it was"
    assert not (tmp_path / "results.csv.partial").exists()

    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    done = run_cli("caption", empty, picture, "--model", "demo")  # an empty folder among others: the rest is done
    assert done.returncode == 0 and json.loads(done.stdout)["caption"] == "a red circle"
    assert f"captioner: {empty}: folder holds no image files" in done.stderr.splitlines()


def test_a_run_stopped_midway_leaves_the_results_of_the_run_before_and_its_own_rows_beside(home, tmp_path, monkeypatch, capsys):
    """`caption --out results.jsonl` again on the same file, stopped by Ctrl-C: the first run's results were emptied
    at the start. The file before stays as it was; the stopped run's rows are in results.jsonl.partial."""
    import pytest

    from captioner.cli import captions
    from captioner.cli.parser import build_parser
    from captioner.settings import Settings

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(8):
        write(folder, f"{i}.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    out = tmp_path / "results.jsonl"

    def args():
        return build_parser().parse_args(["caption", str(folder), "--model", "demo", "--num-beams", "1", "--out", str(out)])

    assert captions.cmd_caption(args(), Settings.from_env()) == 0
    first = out.read_bytes()
    assert first.count(b"\n") == 8 and not (tmp_path / "results.jsonl.partial").exists()

    real_read = captions.read_file

    def stopped_at_the_seventh(path):
        if path.name == "6.png":
            raise KeyboardInterrupt  # Ctrl-C while the last chunk is read
        return real_read(path)

    monkeypatch.setattr(captions, "CHUNK_FILES", 2)
    monkeypatch.setattr(captions, "read_file", stopped_at_the_seventh)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        captions.cmd_caption(args(), Settings.from_env())
    assert out.read_bytes() == first  # the results of the run before, whole
    partial = tmp_path / "results.jsonl.partial"
    done = [json.loads(line) for line in partial.read_text().splitlines()]
    assert 2 <= len(done) < 8 and [row["path"] for row in done] == [str(folder / f"{i}.png") for i in range(len(done))]
    said = f"--out {out}: the run did not finish; the file before is unchanged, and the rows done are in {partial}"
    assert said in capsys.readouterr().err

    monkeypatch.setattr(captions, "read_file", real_read)
    out.chmod(0o640)
    write(folder, "8.png", zoo.encode(zoo.demo("square", "blue"), "PNG"))
    assert captions.cmd_caption(args(), Settings.from_env()) == 0  # a finished run replaces the file, as a whole
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9 and rows[-1]["caption"] == "a blue square" and not partial.exists()
    assert out.stat().st_mode & 0o777 == 0o640  # and keeps its permissions


def test_a_second_run_writing_the_same_out_while_one_is_under_way_is_refused(home, tmp_path):
    """Two runs with one --out (a cron job overlapping the one before) wrote their rows into one file, interleaved."""
    import fcntl

    import pytest

    from captioner.cli import captions
    from captioner.cli.common import UserError
    from captioner.cli.parser import build_parser
    from captioner.settings import Settings

    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    out = tmp_path / "results.jsonl"
    out.write_text("the run before\n")
    args = build_parser().parse_args(["caption", str(picture), "--model", "demo", "--out", str(out)])
    with open(tmp_path / "results.jsonl.partial", "a") as under_way:  # as the run under way holds it
        fcntl.flock(under_way.fileno(), fcntl.LOCK_EX)
        under_way.write('{"path": "half a row')
        under_way.flush()
        with pytest.raises(UserError, match=r"results.jsonl: another run is writing it now \(.*results.jsonl.partial\)"):
            captions.cmd_caption(args, Settings.from_env())
        assert (tmp_path / "results.jsonl.partial").read_text() == '{"path": "half a row' and out.read_text() == "the run before\n"
    assert captions.cmd_caption(args, Settings.from_env()) == 0  # that run gone (its lock with it): this one runs
    assert json.loads(out.read_text())["caption"] == "a red circle"


def test_an_out_in_a_missing_folder_is_said_before_any_model_is_loaded(home, tmp_path):
    """--out in a folder with a typo was said only once the model had loaded (minutes for a hub model): here the
    model spec does not exist either, and the --out error comes first, as the only line."""

    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    for out, why in ((tmp_path / "no-such-folder" / "out.jsonl", "No such file or directory"), (tmp_path, "Is a directory")):
        done = run_cli("caption", picture, "--model", "no-such/captioner", "--out", out)
        assert done.returncode == 2 and done.stderr.splitlines() == [f"captioner: --out {out}: cannot be written ({why})"]


def test_each_row_names_the_model_and_version_that_made_it_across_a_retrain(home, tmp_path):
    """The rows did not say which model version captioned them: a curator comparing a run before a retrain with one
    after could not tell them apart. JSONL and CSV rows now carry model and model_version (the other fields as
    they were), an unreadable file's row naming the run's model too."""
    import shutil

    from captioner.models import demo_model_dir

    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    models = home / "models"
    for version in ("v0001", "v0002"):  # two published versions (the demo captioner's files stand in for both)
        shutil.copytree(demo_model_dir("caption"), models / version)
    seen = {}
    for version in ("v0001", "v0002"):
        (models / "active.json").write_text(json.dumps({"version": version}))
        done = run_cli("caption", picture, tmp_path / "gone.png", "--num-beams", "1")  # the live version captions
        first, gone = [json.loads(line) for line in done.stdout.splitlines()]
        assert list(first) == ["path", "caption", "score", "model", "model_version"] and first["caption"] == "a red circle"
        assert (first["model"], first["model_version"]) == (gone["model"], gone["model_version"]) == ("active", version)
        assert gone["error"] == "no such file" and done.returncode == 1
        done = run_cli("caption", picture, "--num-beams", "1", "--format", "csv")
        table = list(csv.DictReader(io.StringIO(done.stdout, newline="")))
        assert list(table[0]) == ["path", "caption", "error", "score", "model", "model_version"]
        seen[version] = (table[0]["model"], table[0]["model_version"])
    assert seen == {"v0001": ("active", "v0001"), "v0002": ("active", "v0002")}


def test_ctrl_c_twice_stops_at_once_without_a_traceback_and_keeps_the_rows_done(home, tmp_path):
    """A second Ctrl-C while a stopped run waited for the model's threads printed a KeyboardInterrupt traceback from
    an exit handler and aborted ('terminate called without an active exception'); it now exits 130 at once, quietly,
    with the rows of the chunks done whole in the .partial file (or, landing after the exit handlers, ends it by
    SIGINT, which a shell reports as 130 too)."""
    import signal
    import time

    folder = tmp_path / "shoot"
    folder.mkdir()
    picture = zoo.encode(zoo.demo("circle", "red"), "PNG")
    for i in range(2000):
        write(folder, f"{i:04d}.png", picture)
    out, partial = tmp_path / "results.jsonl", tmp_path / "results.jsonl.partial"
    command = [sys.executable, "-m", "captioner", "caption", str(folder), "--model", "demo", "--out", str(out)]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    deadline = time.monotonic() + 240
    while not (partial.exists() and partial.stat().st_size) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    said = child.communicate(timeout=60)[1]
    assert child.returncode in (130, -signal.SIGINT) and "Traceback" not in said and "terminate called" not in said, said
    assert said.splitlines()[-1] in ("captioner: interrupted again: stopped at once", "captioner: interrupted")
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    assert rows and len(rows) % 512 == 0 and not out.exists()


def test_a_standard_output_full_from_the_first_row_does_not_claim_rows_were_written(home, tmp_path):
    """stdout on a full disk from the start said 'the rows before were written' when none had been."""
    picture = write(tmp_path, "p.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    command = [sys.executable, "-m", "captioner", "caption", str(picture), "--model", "demo", "--num-beams", "1"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["captioner: standard output: cannot be written (No space left on device); no row was written"]
