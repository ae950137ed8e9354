"""What a person is told while another process holds a lock: the feedback log's read, the gallery index's update."""

import subprocess
import sys
import threading

from filelock import FileLock

from captioner.feedback import FeedbackLog
from conftest import ROOT, child_env


def test_a_read_stuck_behind_a_writer_says_the_log_was_not_read(home, monkeypatch, capsys, demo_png):
    import captioner.feedback as feedback
    from captioner.__main__ import main

    monkeypatch.setattr(feedback, "LOCK_TIMEOUT_S", 0.2)
    log = FeedbackLog(home / "data")
    log.record(demo_png(), "png", task="caption", model_output="a blob", correction="a red circle")
    with FileLock(str(log.csv_path) + ".lock", thread_local=False):  # a writer hung with the lock
        failed = []
        reader = threading.Thread(target=lambda: failed.append(main(["feedback", "list"])))
        reader.start()
        reader.join(60)
    err = capsys.readouterr().err
    assert failed == [2] and "the feedback log is busy" in err
    assert "the log was not read, try again" in err and "nothing was written" not in err
    assert main(["feedback", "list"]) == 0 and "a red circle" in capsys.readouterr().out  # let go: it reads


HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])  # kept: a lock object collected lets go
lock.acquire()
print("holding", flush=True)
time.sleep(120)
"""


def test_an_index_update_waiting_for_another_names_the_process_holding_it(home, settings, tiny_clip_dir, tmp_path):
    import images_zoo as zoo
    from captioner.embed import load_embedder
    from captioner.index import index_root, waiting_note

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "a.png").write_bytes(zoo.encode(zoo.demo("circle", "red"), "PNG"))
    clip = load_embedder(str(tiny_clip_dir), settings)
    root = index_root(settings.data_dir, gallery.resolve(), clip.name)
    root.mkdir(parents=True)
    script = tmp_path / "hung_indexer.py"
    script.write_text(HOLDER)
    other = subprocess.Popen([sys.executable, script, str(root / "update.lock")], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env=child_env())  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "holding"  # an update stopped or hung with the lock
        note = waiting_note(settings.data_dir, gallery, clip)  # what the Search page shows on its progress bar
        assert note.startswith("another update of this index is running: waiting for it to finish")
        assert f"(process {other.pid} (" in note and "hung_indexer.py" in note
        cli = subprocess.Popen([sys.executable, "-m", "captioner", "index", str(gallery), "--model", str(tiny_clip_dir)],
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())  # fmt: skip
        watchdog = threading.Timer(120, cli.kill)  # a CLI that never says so would wait an hour for the lock
        watchdog.start()
        line = ""
        while line is not None and "waiting" not in line:
            line = cli.stderr.readline() or None
    finally:
        other.kill()
        other.wait()
    watchdog.cancel()
    assert f"waiting for it to finish (process {other.pid} (" in line and "hung_indexer.py" in line
    assert cli.wait(120) == 0 and "1 images indexed" in cli.stderr.read()  # killed, its lock went with it
