"""`caption`'s progress on stderr: redrawn in place on a terminal, plain lines with --progress in a log, else nothing."""

import io
import json
import os
import pty
import re
import subprocess
import sys
import time

import images_zoo as zoo
from conftest import ROOT, child_env
from test_cli import write

ERASE = "\r\x1b[K"


def folder_of(tmp_path, count: int, broken: bool = True):
    """A folder of count small demo pictures, and a file that is not a picture unless broken is False."""
    folder = tmp_path / "shoot"
    folder.mkdir()
    picture = zoo.encode(zoo.demo("circle", "red"), "PNG")
    for i in range(count):
        write(folder, f"{i:04d}.png", picture)
    if broken:
        write(folder, "0005b.png", b"not a picture")
    return folder


def test_on_a_terminal_progress_is_redrawn_in_place_and_the_rows_keep_their_own_lines(home, tmp_path):
    """A curator captioning a big folder saw nothing for minutes. On a terminal (stdout and stderr both on it, as
    a plain run is) a line counts the files done, the rate and the time left, redrawn a few times a second; the
    rows start a line of their own, and the last line sums the run up."""
    folder = folder_of(tmp_path, 300, broken=False)
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "captioner", "caption", str(folder), "--model", "demo", "--batch-size", "1"]
    # (one image a model call: a run long enough for a rate, whatever the machine)
    child = subprocess.Popen(command, stdout=follower, stderr=follower, env=child_env(), cwd=ROOT)
    os.close(follower)
    seen, started = [], None
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        started = started or time.monotonic()
        seen.append(data)
    wall = time.monotonic() - started
    assert child.wait(timeout=300) == 0
    os.close(leader)
    text = b"".join(seen).decode()
    shown = [line.rsplit(ERASE, 1)[-1] for line in text.split("\r\n")]  # what each terminal line ends up showing
    rows = [json.loads(line) for line in shown if line.startswith("{")]
    assert len(rows) == 300 and all(line.startswith(("{", "captioner: ")) for line in shown if line), shown
    assert "captioner: 300 files in " in shown[-2]
    draws = re.findall(r"captioner: (\d+)/300 files \((\d+)%\)(, [\d.]+ files/s, (\d+:)?\d+:\d\d left)?", text)
    counts = [int(done) for done, *_ in draws]
    assert counts == sorted(counts) and counts[0] < 300 and len(draws) <= 4 * wall + 4, (len(draws), wall)
    assert any(rate for *_, rate, _ in draws), draws  # a rate and the time left once the run has settled


def test_elsewhere_nothing_extra_unless_asked_then_whole_lines_every_few_seconds(home, tmp_path):
    """stderr to a file or a pipe (cron, a CI log): no progress unless --progress, and then plain lines."""
    folder = folder_of(tmp_path, 3)
    command = [sys.executable, "-m", "captioner", "caption", str(folder), "--model", "demo", "--num-beams", "1"]
    quiet = subprocess.run(command, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=300)
    assert quiet.stderr.splitlines() == [f"captioner: {folder / '0005b.png'}: {json.loads(quiet.stdout.splitlines()[3])['error']}"]
    told = subprocess.run([*command, "--progress"], capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=300)
    said = told.stderr.splitlines()
    assert said[0] == "captioner: 0/4 files (0%)" and re.fullmatch(r"captioner: 4 files in 0:\d\d \([\d.]+ files/s\)", said[-1])
    assert "\r" not in told.stderr and "\x1b" not in told.stderr and told.stdout.count("\n") == 4


def test_progress_is_shown_at_most_every_interval_and_counts_every_part():
    """Set many times a second from the chunks under way, a log line comes once per interval, with the parts summed."""
    from captioner.cli.progress import Progress

    now = [0.0]
    stream = io.StringIO()
    with Progress(1000, stream, live=False, every=5.0, clock=lambda: now[0]) as progress:
        for step in range(1, 121):  # 12 s of updates, ten a second, two chunks counting at once
            now[0] = step / 10
            progress.set("first", min(step * 5, 512))
            progress.set("second", max(0, step * 5 - 512))
    lines = stream.getvalue().splitlines()
    assert lines == ["captioner: 5/1000 files (0%)", "captioner: 255/1000 files (25%), 50 files/s, 0:15 left",
                     "captioner: 505/1000 files (50%), 50 files/s, 0:10 left", "captioner: 1000 files in 0:12 (83 files/s)"]


def test_a_message_on_the_terminal_clears_the_progress_line_first():
    """A bad file's message written while the progress line was on the terminal would have followed its text."""
    from captioner.cli.common import say
    from captioner.cli.progress import Progress

    now, stream, real_stderr = [0.0], io.StringIO(), sys.stderr
    sys.stderr = stream
    try:
        with Progress(10, stream, live=True, every=0.25, clock=lambda: now[0]) as progress:
            progress.set("chunk", 3)
            say("bad.png: not an image")
            progress.set("chunk", 4)  # drawn again at once, not a quarter second later
    finally:
        sys.stderr = real_stderr
    assert stream.getvalue() == (f"{ERASE}captioner: 3/10 files (30%){ERASE}captioner: bad.png: not an image\n"
                                 f"{ERASE}captioner: 4/10 files (40%){ERASE}captioner: 10 files in 0:00 (0.0 files/s)\n")
