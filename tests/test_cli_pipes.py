"""Commands whose output is piped into a reader that stops early (`| head`) end quietly."""

import os
import subprocess
import sys

import images_zoo as zoo
from conftest import ROOT, child_env


def test_a_listing_piped_into_a_reader_that_stopped_ends_without_a_traceback(home, tmp_path):
    picture = tmp_path / "p.png"
    picture.write_bytes(zoo.encode(zoo.demo(), "PNG"))
    env = child_env(CAPTIONER_HOME=str(home))
    added = subprocess.run([sys.executable, "-m", "captioner", "feedback", "add", picture, "--correction", "fine"],
                           capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip
    assert added.returncode == 0, added.stderr
    for command in (["feedback", "list"], ["models", "list", "--json"]):
        reader, writer = os.pipe()
        os.close(reader)  # `| head` that has already read all it wanted: every write fails with EPIPE
        done = subprocess.run([sys.executable, "-m", "captioner", *command], stdout=writer, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT)  # fmt: skip
        os.close(writer)
        assert "Traceback" not in done.stderr and done.returncode == 1, (command, done.stderr)
