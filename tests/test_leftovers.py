"""What a killed writer leaves behind is removed at the next write of its kind, and only when its writer is gone."""

import subprocess
import sys

from captioner import registry
from conftest import ROOT, child_env


def test_a_killed_activations_temp_file_goes_at_the_next_activation(home, capsys):
    from captioner.__main__ import main

    models = home / "models"
    (models / "v0001").mkdir(parents=True)
    (models / "v0001" / "config.json").write_text("{}")
    registry.activate(models, "v0001")
    left = models / ".active.json.k9x2ab.tmp"  # `models activate` killed between writing its temp file and the rename
    left.write_text('{"version": "v0')
    assert main(["models", "rollback"]) == 0  # back to the default model: no version to check, no model loaded
    assert not left.exists() and sorted(p.name for p in models.iterdir()) == [".registry.lock", "active.json", "v0001"]
    assert registry.active_state(models).version is None and "live: the default model" in capsys.readouterr().err


EXPORTER = """
import sys, time
from pathlib import Path
from captioner.export import export, new_export_folder, zip_export
from captioner.feedback import FeedbackLog

data, stage = Path(sys.argv[1]), sys.argv[2]
target = new_export_folder(data / "exports", "hf")
def stop_at(here):
    def progress(done, total):
        if here == stage:
            print(target.name, flush=True)
            time.sleep(600)
    return progress

export(FeedbackLog(data), target, "hf", stop_at("copy"))
zip_export(target, stop_at("zip"))
"""


def exporting(home, stage):
    """An export of the admin page's kind stopped at stage ("copy" or "zip"), as a live process, and its folder."""
    script = home / "exporter.py"
    script.write_text(EXPORTER)
    running = subprocess.Popen([sys.executable, script, str(home / "data"), stage], stdout=subprocess.PIPE, text=True,
                               cwd=ROOT, env=child_env())  # fmt: skip
    folder = running.stdout.readline().strip()
    assert folder, "the export did not get there"
    return running, folder


def names(folder, of=""):
    """The names in folder, or only those of export `of` (its folder, staging folder, zip and their lock files)."""
    found = {path.name for path in folder.iterdir()}
    return {name for name in found if name.lstrip(".") == of or name.lstrip(".").startswith(of + ".")} if of else found


def test_an_export_killed_midway_leaves_nothing_after_the_next_and_one_still_running_is_left_alone(home, demo_png, capsys):
    from captioner.__main__ import main
    from captioner.feedback import FeedbackLog
    from captioner.review import set_status

    log = FeedbackLog(home / "data")
    for color in ("red", "blue"):
        log.record(demo_png("circle", color), "png", task="caption", model_output="a blob", correction=f"a {color} circle")
    set_status(log, {row.id for row in log.read()[0]}, "approved", "tester")
    exports = home / "data" / "exports"
    (zipping, zipped), (copying, copied), (running, alive) = (exporting(home, stage) for stage in ("zip", "copy", "copy"))
    for killed in (zipping, copying):  # the app killed (kill -9) while one export zipped and another copied
        killed.kill()
        killed.wait()
    assert names(exports, zipped) == {zipped, f"{zipped}.zip.partial", f"{zipped}.zip.partial.lock"}
    assert len(names(exports, copied)) == 3 and not any((exports / copied).iterdir())  # empty; staging and its lock
    assert len(names(exports, alive)) == 3
    try:
        left_running = names(exports, alive)
        assert main(["feedback", "export", "--format", "jsonl", "--out", str(exports / "next")]) == 0
        err = capsys.readouterr().err
        assert names(exports) == left_running | {zipped, "next"}  # the dead leftovers gone, the running export untouched
        assert (exports / zipped / "README.md").is_file()  # the finished export whose zip died is kept
        assert f"removed what an export stopped midway had left in {exports}: " in err
        assert f"{zipped}.zip.partial" in err and f", {copied}" in err
    finally:
        running.kill()
        running.wait()
    assert main(["feedback", "export", "--format", "jsonl", "--out", str(exports / "last")]) == 0  # now it is dead too
    assert names(exports) == {zipped, "next", "last"} and "removed what an export stopped" in capsys.readouterr().err
    assert main(["feedback", "export", "--format", "jsonl", "--out", str(exports / "quiet")]) == 0
    assert "removed" not in capsys.readouterr().err  # nothing left to remove: nothing said
