"""The file layer where the OS differs: no pread/pwrite/fchmod (Windows), fsync that stops at the drive's cache (macOS)."""

import os

import pytest

from captioner import files
from captioner.feedback import FeedbackLog, format_rows, parse_csv


@pytest.fixture
def no_positional_io(monkeypatch):
    """What Windows's os module lacks (fchmod until Python 3.13)."""
    for name in ("pread", "pwrite", "fchmod"):
        monkeypatch.delattr(os, name, raising=False)


def record(log, text, data=b"img"):
    return log.record(data, "png", task="caption", model_output="a circle", correction=text)


def test_the_feedback_log_works_without_pread_pwrite_or_fchmod(tmp_path, no_positional_io):
    log = FeedbackLog(tmp_path)
    logged = [record(log, f"event {i}", data=b"img %d" % (i % 3))[0] for i in range(12)]
    assert all(record(log, f"event {i}", data=b"img %d" % (i % 3)) == (logged[i], False) for i in range(12))
    with open(log.csv_path, "ab") as handle:  # another tool appended: the log catches up from the file's tail
        handle.write(format_rows([logged[0]._replace(id="by-hand", correction="a hand-added row")]).encode())
    assert record(log, "a hand-added row", data=b"img 0")[1] is False
    log.csv_path.chmod(0o600)
    log.rewrite(lambda rows: [r._replace(status="approved") if r.id == logged[1].id else r for r in rows])
    assert log.csv_path.stat().st_mode & 0o777 == 0o600
    rows, problems = log.read()
    assert problems == [] and rows == parse_csv(log.csv_path.read_bytes().decode()) and len(rows) == 13
    assert b"\r\r\n" not in log.csv_path.read_bytes()


def test_positional_writes_land_where_asked_without_pwrite(tmp_path, no_positional_io):
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR | files.BINARY)
    try:
        files.write_at(fd, b"ab", 8)
        files.write_at(fd, b"XYZ", 2)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"01XYZ567ab"
    with open(path, "rb") as handle:
        assert files.read_at(handle, 3, 7) == b"7ab" and files.read_at(handle, 5, 9) == b"b"


def test_on_macos_every_flush_asks_the_drive_to_empty_its_cache(tmp_path, monkeypatch):
    import fcntl
    import sys

    asked = []
    real_fcntl = fcntl.fcntl

    def fcntl_seen(fd, command, *args):
        asked.append(command)
        return real_fcntl(fd, command, *args)  # Linux refuses macOS's command: the flush falls back to fsync

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(fcntl, "fcntl", fcntl_seen)
    files.append_durably(tmp_path / "log", b"one line\n")
    files.write_atomic(tmp_path / "state.json", b"{}")
    assert asked == [getattr(fcntl, "F_FULLFSYNC", 51)] * 2
    assert (tmp_path / "log").read_bytes() == b"one line\n" and (tmp_path / "state.json").read_bytes() == b"{}"


def test_a_replace_refused_while_a_reader_has_the_file_open_is_retried_until_it_closes(tmp_path, monkeypatch):
    """Windows refuses os.replace over a file another handle holds; the reader closes within moments."""
    real_replace, refusals = os.replace, []

    def replace_after_the_reader_closes(source, target):
        if len(refusals) < 3:
            refusals.append(target)
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        real_replace(source, target)

    target = tmp_path / "feedback.csv"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", replace_after_the_reader_closes)
    monkeypatch.setattr(files, "REPLACE_TRIES", 50)
    files.write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and len(refusals) == 3 and list(tmp_path.iterdir()) == [target]
    refusals.clear()
    monkeypatch.setattr(files, "REPLACE_TRIES", 2)  # a reader that never lets go: the error, and no temp file left
    with pytest.raises(PermissionError):
        files.write_atomic(target, b"newer")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_a_published_folder_gets_the_umask_modes_whatever_wrote_its_files(tmp_path):
    import tempfile

    staging = files.staging_folder(tmp_path / "v0001")
    (staging / "adapter").mkdir(mode=0o700)
    fd, name = tempfile.mkstemp(dir=staging / "adapter")  # 0600, as safetensors' save through a temp file leaves it
    os.close(fd)
    os.replace(name, staging / "adapter" / "adapter_model.safetensors")
    (staging / "config.json").write_text("{}")
    files.publish_folder(staging, tmp_path / "v0001")
    published = tmp_path / "v0001"
    for path in published.rglob("*"):
        expected = 0o666 & ~files.UMASK if path.is_file() else 0o777 & ~files.UMASK
        assert path.stat().st_mode & 0o777 == expected, path
    assert published.stat().st_mode & 0o777 == 0o777 & ~files.UMASK


def test_publishing_a_folder_of_many_files_flushes_them_to_disk_several_at_a_time(tmp_path, monkeypatch):
    import threading
    import time

    staging = files.staging_folder(tmp_path / "export")
    (staging / "captions" / "train").mkdir(parents=True)
    written = {staging / "captions" / "train" / f"row-{i:03d}.png" for i in range(40)}
    for path in written:
        path.write_bytes(b"picture")
    real, flushed, at_once, guard = files.fsync_path, set(), [0, 0], threading.Lock()

    def fsync_a_slow_disk(path):  # each flush waits on the disk as a busy one does (3 ms measured here; 50 ms now)
        with guard:
            at_once[0] += 1
            at_once[1] = max(at_once)
        time.sleep(0.05)
        real(path)
        with guard:
            at_once[0] -= 1
            flushed.add(path)

    monkeypatch.setattr(files, "fsync_path", fsync_a_slow_disk)
    started = time.perf_counter()
    files.publish_folder(staging, tmp_path / "export")
    assert {p.relative_to(staging) for p in flushed} == {p.relative_to(staging) for p in written}  # every file, before the rename
    assert at_once[1] > 1 and time.perf_counter() - started < 1.5  # one at a time: 40 x 50 ms = 2 s
    assert sorted(p.name for p in (tmp_path / "export" / "captions" / "train").iterdir()) == sorted(p.name for p in written)
