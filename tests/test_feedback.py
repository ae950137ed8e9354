"""The feedback log: concurrent appends, crashes, hostile text, broken rows, images stored once."""

import csv
import io
import os
import signal
import subprocess
import sys
import time

import pytest

from captioner.feedback import FIELDS, FeedbackError, FeedbackLog, FeedbackRow, format_rows, parse_csv
from conftest import ROOT, child_env

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
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=child_env())


def test_schema_header_and_lock_file_beside_the_csv(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "a blue circle")
    raw = log.csv_path.read_bytes()
    assert raw.startswith((",".join(FIELDS) + "\r\n").encode())
    assert (tmp_path / "feedback.csv.lock").exists()
    row = log.read()[0][0]
    assert row.status == "pending" and row.image_path == f"images/{row.image_sha256}.png"
    assert row.created_at.endswith("+00:00") and len(row.id) == 36


def test_a_log_saved_by_a_spreadsheet_with_semicolons_says_so(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "a blue circle")
    record(log, "a red square", data=b"img-2")
    with open(log.csv_path, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    with open(log.csv_path, "w", newline="", encoding="utf-8") as handle:  # as a spreadsheet in a ';' locale saves it
        csv.writer(handle, delimiter=";").writerows(table)
    rows, problems = log.read()
    assert rows == [] and [(p.line, p.last_line) for p in problems] == [(1, 3)]  # one bad run: header and rows
    assert all("look separated by semicolons: the log is comma-separated; save it as CSV with commas" in p.reason
               for p in problems), [p.reason for p in problems]  # fmt: skip


def test_hostile_text_round_trips_byte_for_byte(tmp_path):
    log = FeedbackLog(tmp_path)
    for i, text in enumerate(HOSTILE):
        record(log, text, data=b"img-%d" % i, prompt=text, notes=text)
    rows, problems = log.read()
    assert problems == []
    assert [row.correction for row in rows] == [" ".join(text.split()) for text in HOSTILE]  # a caption's words
    assert [row.prompt for row in rows] == HOSTILE and [row.notes for row in rows] == HOSTILE
    # Any RFC 4180 reader sees the same cells.
    with open(log.csv_path, newline="", encoding="utf-8") as handle:
        assert [r["prompt"] for r in csv.DictReader(handle)] == HOSTILE


def test_stray_whitespace_never_turns_a_confirmation_into_a_correction(tmp_path):
    from captioner.review import edit_corrections

    log = FeedbackLog(tmp_path)
    confirmed, _ = record(log, "a red square\n", model_output="a red square")
    assert confirmed.is_confirmation and confirmed.correction == "a red square"
    fixed, _ = record(log, "  a red   box ", data=b"other", model_output="a red square")
    assert fixed.correction == "a red box" and not fixed.is_confirmation
    answer, _ = record(log, "an isosceles triangle ", data=b"qa", task="qa", prompt="what shape?", model_output="a triangle")
    assert answer.correction == "an isosceles triangle"
    poem = "red circle\n  round  and bright \n\n\n\nwhite all around"
    styled, _ = record(log, f"\n{poem}\n\n", data=b"style", task="style", prompt="poetic", model_output="a red circle")
    assert styled.correction == "red circle\nround and bright\n\nwhite all around"  # its line breaks kept, one blank
    same, _ = record(log, "A red  circle, round. \n", data=b"style2", task="style", prompt="social", model_output="A red circle, round.")
    assert same.is_confirmation  # a stray space in a styled caption is no correction either
    assert edit_corrections(log, {fixed.id: "a red square \t"}, "admin") == 1  # an admin's edit is tidied alike
    assert {row.id: row.correction for row in log.read()[0]}[fixed.id] == "a red square"
    assert edit_corrections(log, {fixed.id: " a red square"}, "admin") == 0  # the same text: nothing changes


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


def test_rows_written_after_a_record_torn_anywhere_are_read_by_pandas_and_csv_too(tmp_path):
    import csv
    import io
    import pandas as pd

    log = FeedbackLog(tmp_path / "model")
    torn_row = record(log, 'what, "shape"\nis it?, said she')[0]._replace(id="torn")
    line = format_rows([torn_row]).encode()
    for cut in range(1, len(line), 3):  # killed after any byte of the row (every third, for time)
        log = FeedbackLog(tmp_path / f"cut{cut}")
        record(log, "before")
        with open(log.csv_path, "ab") as handle:
            handle.write(line[:cut])
        after = [record(log, f"after {i}")[0].id for i in range(2)]
        assert len(log.read()[1]) <= 1
        frame = pd.read_csv(log.csv_path, keep_default_na=False, dtype=str)
        assert set(after) <= set(frame["id"]), f"cut after byte {cut}: {line[:cut]!r}"
        with open(log.csv_path, newline="", encoding="utf-8") as handle:
            ids = {record_[0] for record_ in csv.reader(io.StringIO(handle.read(), newline=""))}
        assert set(after) <= ids


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



def test_a_column_added_in_a_spreadsheet_is_kept_aside_before_the_next_write_drops_it(tmp_path):
    log = FeedbackLog(tmp_path)
    first, _ = record(log, "a blue circle")
    second, _ = record(log, "a red square", data=b"other")
    lines = list(csv.reader(io.StringIO(log.csv_path.read_text(encoding="utf-8"), newline="")))
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows([lines[0] + ["checked_by"], lines[1] + ["ann"], lines[2] + ["bob"]])
    edited = out.getvalue()
    log.csv_path.write_text(edited, encoding="utf-8", newline="")
    assert [r.id for r in log.read()[0]] == [first.id, second.id]
    third, created = record(log, "a green star", data=b"third")  # the append rewrites the log in today's columns
    rows, problems = log.read()
    assert created and problems == [] and [r.id for r in rows] == [first.id, second.id, third.id]
    assert "checked_by" not in log.csv_path.read_text(encoding="utf-8").splitlines()[0]
    kept = list(tmp_path.glob("feedback-columns-*.csv"))
    assert len(kept) == 1 and kept[0].read_bytes() == edited.encode()  # ann's and bob's checks are not lost
    record(log, "a green star", data=b"fourth")
    assert len(list(tmp_path.glob("feedback-columns-*.csv"))) == 1  # once: the log has today's columns now


def test_a_linked_row_names_its_original_and_a_log_from_before_the_link_column_still_reads(tmp_path):
    log = FeedbackLog(tmp_path)
    original, _ = record(log, "a red star")
    legacy = [name for name in FIELDS if name != "linked_to"]
    values = next(csv.reader(log.csv_path.read_text(encoding="utf-8").splitlines()[1:]))
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows([legacy, values[: len(legacy)]])
    log.csv_path.write_text(out.getvalue(), encoding="utf-8", newline="")
    linked, created = record(log, "a red star", data=b"look-alike", linked_to=original.id)
    rows, problems = log.read()
    assert created and problems == [] and [(r.id, r.linked_to) for r in rows] == [(original.id, ""), (linked.id, original.id)]
    with pytest.raises(FeedbackError, match="linked_to"):
        record(log, "a red star", data=b"third", linked_to="../escape")
    assert len(log.read()[0]) == 2 and len(list(log.images_dir.iterdir())) == 2  # nothing stored for the refused one

# --- text that cannot be stored --------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["bad \udcff byte", "lone \ud800 surrogate"])
def test_text_that_is_not_utf8_is_refused_with_one_message_and_nothing_is_written(tmp_path, text):
    log = FeedbackLog(tmp_path)
    with pytest.raises(FeedbackError, match=r"the correction is not valid text: character \d+ .* UTF-8"):
        record(log, text)
    with pytest.raises(FeedbackError, match="the notes is not valid text"):
        record(log, "fine", notes=text)
    with pytest.raises(FeedbackError, match="not valid text"):
        log.append([record(log, "ok")[0]._replace(id="other", correction=text)])
    log.csv_path.read_bytes().decode("utf-8")  # still strictly valid UTF-8
    assert [r.correction for r in log.read()[0]] == ["ok"]


def test_the_cli_refuses_undecodable_bytes_in_an_argument(tmp_path, demo_png):
    from conftest import run_cli

    picture = tmp_path / "p.png"
    picture.write_bytes(demo_png())
    done = run_cli("feedback", "add", picture, "--correction", os.fsdecode(b"bad \xff"), env={"CAPTIONER_HOME": str(tmp_path)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the correction is not valid text" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "feedback.csv").exists()


# --- duplicates without re-reading the log ------------------------------------------------------------------------
def test_duplicates_are_refused_through_the_key_index_and_after_it_is_lost_or_stale(tmp_path):
    log = FeedbackLog(tmp_path)
    first, _ = record(log, "a green square")
    assert log.keys_path.exists()
    log.keys_path.unlink()  # lost: rebuilt from the CSV
    again, created = record(log, "a green square")
    assert not created and again == first
    with open(log.csv_path, "ab") as handle:  # appended by another tool: only the tail is read to catch up
        handle.write(format_rows([first._replace(id="by-hand", correction="a hand-added row")]).encode())
    _, created = record(log, "a hand-added row")
    assert not created
    log.rewrite(lambda rows: [r._replace(status="approved") if r.id == first.id else r for r in rows])
    _, created = record(log, "a green square")  # the approved event differs from a new pending one
    assert created and len(log.read()[0]) == 3


def test_a_bulk_append_skips_events_already_logged_and_repeats_within_itself(tmp_path):
    log = FeedbackLog(tmp_path)
    first, _ = record(log, "one")
    second = first._replace(id="second-id", correction="two")
    written = log.append([first._replace(id="copy-of-first"), second, second._replace(id="copy-of-second")] + [
        first._replace(id=f"bulk-{i}", correction=f"bulk {i}") for i in range(40)
    ])  # fmt: skip
    assert [r.id for r in written] == ["second-id"] + [f"bulk-{i}" for i in range(40)]
    assert len(log.read()[0]) == 42


DUPLICATOR = """
import sys
from captioner.feedback import FeedbackLog
log = FeedbackLog(sys.argv[1])
for i in range(40):
    log.record(b"shared image", "png", task="caption", model_output="a circle", correction=f"event {i}")
"""


def test_eight_processes_logging_the_same_events_log_each_once(tmp_path):
    workers = [spawn(DUPLICATOR, tmp_path) for _ in range(8)]
    assert all(worker.wait(timeout=300) == 0 for worker in workers)
    rows, problems = FeedbackLog(tmp_path).read()
    assert problems == [] and sorted(r.correction for r in rows) == sorted(f"event {i}" for i in range(40))


# --- reading: cached, incremental, equal to a full parse -------------------------------------------------------
def test_reads_after_appends_and_edits_equal_a_fresh_parse(tmp_path):
    log = FeedbackLog(tmp_path)
    for i, text in enumerate(HOSTILE[:6]):
        record(log, text, data=b"i%d" % i)
        assert log.read() == (parse_fresh(log), [])
    with open(log.csv_path, "ab") as handle:
        handle.write(b"broken,row\r\n")
    record(log, "after the broken row")
    log.rewrite(lambda rows: [r._replace(status="rejected") for r in rows[:2]] + rows[2:])
    record(log, "after the rewrite")
    rows, problems = log.read()
    assert rows == parse_fresh(log) and problems == parse_fresh(log, problems=True)
    lines = io.StringIO(log.csv_path.read_bytes().decode(), newline="").readlines()
    assert [lines[p.line - 1] for p in problems] == ["broken,row\r\n"]


def parse_fresh(log, problems=False):
    return [e for e in parse_csv(log.csv_path.read_bytes().decode()) if hasattr(e, "line") == problems]


def test_a_second_row_with_an_id_already_used_is_reported_not_acted_on(tmp_path):
    log = FeedbackLog(tmp_path)
    row, _ = record(log, "original")
    with open(log.csv_path, "ab") as handle:
        handle.write(format_rows([row._replace(correction="pasted copy")]).encode())
    rows, problems = log.read()
    assert [r.correction for r in rows] == ["original"]
    assert len(problems) == 1 and "already used" in problems[0].reason


def fresh_parse(log):
    """(rows, problems) of the file as it is on disk, parsed anew (no cache of this process)."""
    entries = parse_csv(log.csv_path.read_bytes().decode("utf-8"))
    return [e for e in entries if isinstance(e, FeedbackRow)], [e for e in entries if not isinstance(e, FeedbackRow)]


def test_deleting_the_row_a_pasted_copy_shares_its_id_with_is_refused_until_the_copy_is_moved_aside(tmp_path):
    from captioner.review import delete_rows

    log = FeedbackLog(tmp_path)
    row, _ = record(log, "original")
    with open(log.csv_path, "ab") as handle:  # an approved copy nobody reviewed: it must never become a row
        handle.write(format_rows([row._replace(correction="pasted copy", status="approved")]).encode())
    before = log.csv_path.read_bytes()
    with pytest.raises(FeedbackError, match=f"turn broken record.*{row.id}.*move the broken records aside"):
        delete_rows(log, {row.id})
    assert log.csv_path.read_bytes() == before
    assert log.repair()[0] == 1 and delete_rows(log, {row.id}) == 1
    assert log.read() == ([], []) and fresh_parse(log) == ([], [])


def test_after_every_kind_of_rewrite_the_log_reads_as_a_fresh_parse_of_the_file(tmp_path):
    from captioner.review import delete_rows, edit_corrections, set_status

    log = FeedbackLog(tmp_path)
    rows = [record(log, f"row {i}")[0] for i in range(6)]
    with open(log.csv_path, "ab") as handle:
        handle.write(b'torn,"half a record\r\n')
    record(log, "after the tear")
    set_status(log, {rows[1].id}, "approved", "admin")
    edit_corrections(log, {rows[2].id: "edited"}, "admin")
    delete_rows(log, {rows[3].id, rows[0].id})
    cached, fresh = log.read(), fresh_parse(log)
    assert cached[0] == fresh[0] and [p.reason for p in cached[1]] == [p.reason for p in fresh[1]]
    assert [r.correction for r in cached[0]] == ["row 1", "edited", "row 4", "row 5", "after the tear"]


# --- leftovers, torn records, repair ------------------------------------------------------------------------------
def test_a_torn_bulk_append_is_one_problem_and_repair_moves_it_aside_verbatim(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "before")
    bulk = format_rows([record(log, f"x{i}")[0]._replace(id=f"torn-{i}", correction=HOSTILE[1] * 3) for i in range(3)])
    torn = bulk[: bulk.index("fourth", bulk.index("torn-1"))].encode()  # killed inside torn-1's multi-line field
    with open(log.csv_path, "ab") as handle:
        handle.write(torn)
    record(log, "after")
    rows, problems = log.read()
    assert len(problems) == 1, [str(p) for p in problems]
    assert problems[0].last_line > problems[0].line  # "lines N-M"
    assert [r.correction for r in rows][:1] == ["before"] and rows[-1].correction == "after"
    moved, kept = log.repair(note="test")
    assert moved == 1 and kept == log.broken_path
    assert torn[torn.index(b"torn-1") :] in kept.read_bytes()  # the torn record, kept as it was
    assert "torn-0" in [r.id for r in rows]  # the bulk append's complete records before the tear are rows
    after, problems = log.read()
    assert problems == [] and after == rows
    assert log.repair() == (0, None)
    import pandas as pd

    assert len(pd.read_csv(log.csv_path, keep_default_na=False, dtype=str)) == len(rows)


def test_stale_temp_files_of_killed_rewrites_are_removed_by_the_next_write(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "one")
    stale = [tmp_path / ".feedback.csv.abc123.tmp", tmp_path / ".feedback.csv.keys.def456.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    record(log, "two")
    assert not any(path.exists() for path in stale)
    image_temps = [log.images_dir / ".abc.png.x1.tmp", log.images_dir / ".def.png.x2.tmp"]
    for path in image_temps:
        path.write_bytes(b"half an image")
    os.utime(image_temps[0], (time.time() - 7200,) * 2)  # a killed write; the other may be a write in progress
    log.repair()
    assert [path.exists() for path in image_temps] == [False, True]


def test_a_lock_held_too_long_is_one_clear_error_in_the_library_and_the_cli(tmp_path, monkeypatch, capsys, demo_png):
    from filelock import FileLock

    import captioner.feedback as feedback
    from captioner.__main__ import main

    monkeypatch.setattr(feedback, "LOCK_TIMEOUT_S", 0.2)
    monkeypatch.setenv("CAPTIONER_HOME", str(tmp_path))
    log = FeedbackLog(tmp_path / "data")
    record(log, "first")
    picture = tmp_path / "p.png"
    picture.write_bytes(demo_png())
    holder = FileLock(str(log.csv_path) + ".lock", thread_local=False)
    with holder:
        thread_result = []
        import threading

        worker = threading.Thread(target=lambda: thread_result.append(catch(lambda: record(FeedbackLog(tmp_path / "data"), "x"))))
        worker.start()
        worker.join()
        assert "the feedback log is busy" in str(thread_result[0]) and "try again" in str(thread_result[0])
        assert main(["feedback", "add", str(picture), "--correction", "blocked"]) == 2
    err = capsys.readouterr().err
    assert "the feedback log is busy" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("holding", flush=True)
time.sleep(60)
"""


def test_a_writer_stuck_with_the_lock_is_named_by_its_process(tmp_path, monkeypatch):
    import captioner.feedback as feedback

    monkeypatch.setattr(feedback, "LOCK_TIMEOUT_S", 0.5)
    log = FeedbackLog(tmp_path)
    record(log, "first")
    script = tmp_path / "stuck_writer.py"
    script.write_text(HOLDER)
    stuck = subprocess.Popen([sys.executable, script, str(log.csv_path) + ".lock"], cwd=ROOT, env=child_env(),
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert stuck.stdout.readline().strip() == "holding"  # as a `feedback add` stopped with Ctrl-Z, or hung on a disk
        with pytest.raises(FeedbackError) as caught:
            record(log, "second", data=b"other")
    finally:
        stuck.kill()
        stuck.wait()
    message = str(caught.value)
    assert f"the feedback log is busy: process {stuck.pid} (" in message and "stuck_writer.py" in message
    assert record(log, "second", data=b"other")[1]  # killed, its lock is gone with it: the next write goes through


def test_a_read_only_data_folder_is_read_and_a_write_is_one_clear_error(tmp_path, monkeypatch, capsys, demo_png):
    import errno
    import json

    from filelock import FileLock

    from captioner.__main__ import main
    from captioner.review import set_status

    monkeypatch.setenv("CAPTIONER_HOME", str(tmp_path))
    log = FeedbackLog(tmp_path / "data")
    first, _ = record(log, "a blue square")
    picture = tmp_path / "p.png"
    picture.write_bytes(demo_png())

    def read_only(self, *args, **kwargs):  # as a read-only mount answers (root ignores permission bits, not EROFS)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(FileLock, "acquire", read_only)
    assert [row.id for row in FeedbackLog(tmp_path / "data").read()[0]] == [first.id]  # the admin page can still look
    assert main(["feedback", "list"]) == 0 and json.loads(capsys.readouterr().out)["id"] == first.id
    with pytest.raises(FeedbackError, match="cannot be written here: .*feedback.csv.lock: Read-only file system"):
        set_status(FeedbackLog(tmp_path / "data"), {first.id}, "approved", "admin")
    assert main(["feedback", "add", str(picture), "--correction", "a cube"]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr("captioner.feedback.write_atomic", lambda *args: read_only(None))  # the image folder, too
    with pytest.raises(FeedbackError, match="the image cannot be stored in .*images: Read-only file system"):
        record(FeedbackLog(tmp_path / "data"), "a cube", data=b"a picture never stored")


def catch(action):
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc
    return None


# --- one file-mode policy -----------------------------------------------------------------------------------------
MODES = """
import os, sys
from pathlib import Path
from captioner.feedback import FeedbackLog
from captioner.export import export
from captioner.review import set_status
home = Path(sys.argv[1])
log = FeedbackLog(home)
row, _ = log.record(b"\\x89PNG fake", "png", task="caption", model_output="a", correction="b")
set_status(log, {row.id}, "approved", "t")
export(log, home / "out", "jsonl")
log.record(b"other", "png", task="caption", model_output="a", correction="c")
"""


def test_every_file_the_log_writes_gets_the_umask_mode(tmp_path):
    done = subprocess.run([sys.executable, "-c", MODES, str(tmp_path)], cwd=ROOT, preexec_fn=lambda: os.umask(0o027),
                          env=child_env(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"feedback.csv", "feedback.csv.keys", "feedback.csv.lock", "approved.jsonl"}
    assert {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == {
        p.relative_to(tmp_path).as_posix(): "0o640" for p in files
    }


def test_a_rewrite_keeps_the_mode_the_log_had(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "one")
    log.csv_path.chmod(0o600)
    log.rewrite(lambda rows: rows)
    assert log.csv_path.stat().st_mode & 0o777 == 0o600


def test_a_log_deleted_by_hand_starts_again_in_the_same_process(tmp_path):
    log = FeedbackLog(tmp_path)
    record(log, "one")
    log.csv_path.unlink()
    row, created = record(log, "one")
    assert created and log.read() == ([row], [])


def test_the_key_index_stays_exact_across_merges_of_its_tail(tmp_path, monkeypatch):
    import captioner.feedback_keys as feedback_keys

    monkeypatch.setattr(feedback_keys, "TAIL_MAX", 3)  # merge the unsorted tail into the sorted part every few appends
    log = FeedbackLog(tmp_path)
    logged = [record(log, f"event {i}", data=b"img %d" % (i % 4))[0] for i in range(20)]
    assert all(record(log, f"event {i}", data=b"img %d" % (i % 4)) == (logged[i], False) for i in range(20))
    assert log.append([row._replace(id=f"again-{i}") for i, row in enumerate(logged)]) == []
    with open(log.csv_path, "ab") as handle:  # the same event twice in the file (an older log, a hand edit)
        handle.write(format_rows([logged[3]._replace(id="hand-copy")]).encode())
    log.keys_path.unlink()
    assert record(log, "event 3", data=b"img 3")[1] is False and len(log.read()[0]) == 21
