"""What a person is told while another process holds a lock: the feedback log's read, the gallery index's update."""

import threading

from filelock import FileLock

from captioner.feedback import FeedbackLog


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
