"""The feedback log: concurrent appends, crashes, hostile text, broken rows, images stored once."""

import csv
import io
import os
import signal
import subprocess
import sys
import time

import pytest

from captioner.feedback import FIELDS, FeedbackError, FeedbackLog, parse_csv
from conftest import ROOT

HOSTILE = [
    'she said "hello", then left',
    "first line\nsecond line\r\nthird line\rfourth",
    "emoji 😀🐈‍⬛ and accents: café, naïve, Ærøskøbing",
    "=HYPERLINK(\"http://evil\",\"click\")",
    "+1+2", "-cmd", "@SUM(A1)",
    "<script>alert('x')</script><b>bold</b>",
    "x" * 5000,
    "  leading and trailing spaces  ",
    "tab\there, comma, semicolon; pipe |",
    "back\\slash and 'single' quotes",
]  # fmt: skip

APPENDER = """
import sys
from captioner.feedback import FeedbackLog
log = FeedbackLog(sys.argv[1])
worker, count = int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    log.record(b"image-of-worker-%d" % worker, "png", task="caption", model_output="a red circle",
               correction=f"worker {worker} row {i}, with \\"quotes\\" and\\nnewline " + "z" * (i % 7) * 100)
"""


def record(log, correction, data=b"img", **kwargs):
    kwargs.setdefault("task", "caption")
    kwargs.setdefault("model_output", "a red circle")
    return log.record(data, "png", correction=correction, **kwargs)


def spawn(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_schema_header_and_lock_file_beside_the_csv(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "a blue circle")
    raw = log.csv_path.read_bytes()
    assert raw.startswith((",".join(FIELDS) + "\r\n").encode())
    assert (tmp_path / "feedback.csv.lock").exists()
    row = log.read()[0][0]
    assert row.status == "pending" and row.image_path == f"images/{row.image_sha256}.png"
    assert row.created_at.endswith("+00:00") and len(row.id) == 36


def test_hostile_text_round_trips_byte_for_byte(tmp_path):
    log = FeedbackLog(tmp_path)
    for i, text in enumerate(HOSTILE):
        record(log, text, data=b"img-%d" % i, prompt=text, notes=text)
    rows, problems = log.read()
    assert problems == []
    assert [row.correction for row in rows] == HOSTILE
    assert [row.prompt for row in rows] == HOSTILE and [row.notes for row in rows] == HOSTILE
    # Any RFC 4180 reader sees the same cells.
    with open(log.csv_path, newline="", encoding="utf-8") as handle:
        assert [r["correction"] for r in csv.DictReader(handle)] == HOSTILE


def test_unloggable_text_gets_a_clear_error(tmp_path):
    log = FeedbackLog(tmp_path)
    with pytest.raises(FeedbackError, match="correction is empty"):
        record(log, "   ")
    with pytest.raises(FeedbackError, match="NUL"):
        record(log, "a\x00b")
    with pytest.raises(FeedbackError, match="over the"):
        record(log, "x" * 50_000)
    assert not log.csv_path.exists()


def test_the_same_event_twice_is_logged_once(tmp_path):
    log = FeedbackLog(tmp_path)
    first, created = record(log, "a green square")
    again, created_again = record(log, "a green square")
    assert created and not created_again and again.id == first.id
    _, created_other = record(log, "a green triangle")
    assert created_other and len(log.read()[0]) == 2


def test_images_are_stored_once_by_content_hash(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "one", data=b"same bytes")
    record(log, "two", data=b"same bytes")
    record(log, "three", data=b"other bytes")
    stored = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len(stored) == 2 and all(name.endswith(".png") for name in stored)
    row = log.read()[0][0]
    assert (tmp_path / row.image_path).read_bytes() == b"same bytes"


def test_eight_processes_appending_at_once_lose_nothing(tmp_path):
    workers = [spawn(APPENDER, tmp_path, worker, 100) for worker in range(8)]
    assert all(worker.wait(timeout=300) == 0 for worker in workers)
    rows, problems = FeedbackLog(tmp_path).read()
    assert problems == []
    assert len(rows) == 800 and len({row.id for row in rows}) == 800
    for worker in range(8):
        mine = [row.correction for row in rows if row.correction.startswith(f"worker {worker} row ")]
        assert len(mine) == 100


def test_a_writer_killed_mid_run_leaves_a_csv_that_parses(tmp_path):
    writer = spawn(APPENDER, tmp_path, 1, 100_000)
    log = FeedbackLog(tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.csv_path.exists() or log.csv_path.stat().st_size < 20_000):
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    rows, problems = log.read()
    assert problems == [] and len(rows) > 5
    record(log, "written after the crash")
    after, problems = log.read()
    assert problems == [] and after[-1].correction == "written after the crash"


def test_a_torn_last_line_is_reported_and_later_rows_survive(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "good one")
    with open(log.csv_path, "ab") as handle:
        handle.write(b'1234,2026-01-01T00:00:00+00:00,abc,images/abc.png,caption,"unfinished quote')
    record(log, "good two")
    rows, problems = log.read()
    assert [row.correction for row in rows] == ["good one", "good two"]
    assert len(problems) == 1 and problems[0].line == 3


def test_broken_rows_are_reported_by_line_and_kept_by_a_rewrite(tmp_path):
    log = FeedbackLog(tmp_path)
    for text in ("one", "two", "three"):
        record(log, text)
    lines = log.csv_path.read_bytes().decode("utf-8").split("\r\n")
    lines.insert(2, "not,a,valid,row")
    lines.insert(4, lines[3].replace(",pending,", ",maybe,"))
    log.csv_path.write_bytes("\r\n".join(lines).encode("utf-8"))
    rows, problems = log.read()
    assert [row.correction for row in rows] == ["one", "two", "three"]
    assert [(p.line, p.reason.split(" ")[0]) for p in problems] == [(3, "expected"), (5, "status")]
    assert f"line 3: expected {len(FIELDS)} fields, found 4" == str(problems[0])

    log.rewrite(lambda rows: [r._replace(status="approved") for r in rows if r.correction != "two"])
    rows, problems_after = log.read()
    assert [(row.correction, row.status) for row in rows] == [("one", "approved"), ("three", "approved")]
    assert [p.raw for p in problems_after] == [p.raw for p in problems]


def test_rewrite_is_atomic_through_a_temp_file(tmp_path, monkeypatch):
    log = FeedbackLog(tmp_path)
    record(log, "keep me")
    before = log.csv_path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        log.rewrite(lambda rows: [])
    assert log.csv_path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_parse_never_raises_on_garbage():
    garbage = 'id,created_at\r\n"\x00\x00,,,\r\n\r\n' + "\udcff" + ',"""\n'
    entries = parse_csv(garbage)
    assert entries and all(hasattr(e, "line") for e in entries)


def test_csv_written_is_rfc4180(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, 'quote " and, comma')
    raw = log.csv_path.read_bytes().decode()
    assert raw.count("\r\n") == 2
    assert '"quote "" and, comma"' in raw
    assert list(csv.reader(io.StringIO(raw, newline="")))[1][FIELDS.index("correction")] == 'quote " and, comma'


def test_the_model_score_is_kept_with_the_correction(tmp_path):
    log = FeedbackLog(tmp_path)
    row, _ = record(log, "a blue star", score=-0.4213567)
    assert log.read()[0] == [row] and row.score == "-0.4214"
    with pytest.raises(FeedbackError, match="score"):
        record(log, "a red star", score=float("nan"))


def test_a_log_from_before_the_score_column_reads_and_is_upgraded_on_the_next_write(tmp_path):
    log = FeedbackLog(tmp_path)
    old, _ = record(log, "a blue circle")
    legacy = [name for name in FIELDS if name != "score"]
    lines = log.csv_path.read_text(encoding="utf-8").splitlines()
    values = next(csv.reader(lines[1:]))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(legacy)
    writer.writerow(values[: len(legacy)])
    log.csv_path.write_text(out.getvalue(), encoding="utf-8", newline="")
    rows, problems = log.read()
    assert problems == [] and [r.id for r in rows] == [old.id] and rows[0].score == ""
    new, created = record(log, "a green square", data=b"other", score=-1.5)
    rows, problems = log.read()
    assert created and problems == [] and [r.id for r in rows] == [old.id, new.id] and rows[1].score == "-1.5000"
    assert log.csv_path.read_bytes().startswith((",".join(FIELDS) + "\r\n").encode())
