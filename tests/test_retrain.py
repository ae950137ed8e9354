"""Retraining as a background job (what the admin page drives), and exporting approved rows."""

import json
import os
import time

import pytest

from captioner import registry, retrain
from captioner.feedback import FeedbackLog
from captioner.settings import Settings
from conftest import needs, run_cli
from test_finetune import log_rows


def wait(run, timeout=600):
    deadline = time.time() + timeout
    while run.running and time.time() < deadline:
        time.sleep(0.5)
    assert not run.running, "the retrain did not finish in time"
    return run.outcome


@pytest.fixture
def tiny_home(home, monkeypatch, tiny_blip_dir):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", str(tiny_blip_dir))
    log_rows(home, n=12)
    return home


def test_a_retrain_runs_in_the_background_reports_progress_and_publishes(tiny_home):
    settings = Settings.from_env()
    run = retrain.start(settings, ["--epochs", "2", "--min-rows", "5", "--heldout-fraction", "0"])
    with pytest.raises(RuntimeError, match="already running"):
        retrain.start(settings, [])
    outcome = wait(run)
    assert outcome["status"] == "published" and outcome["version"] == "v0001", run.log_tail()
    steps = [p for p in run.progress if p.get("phase") == "train"]
    assert steps and steps[-1]["step"] == steps[-1]["steps"] == 2
    phases = [p["phase"] for p in run.progress]  # each stretch is said, not only the training steps
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == [
        "load", "prepare", "judge", "train", "save", "judge", "save", "activate", "done"]  # fmt: skip
    decoded = [p for p in run.progress if p.get("said", "").startswith("Decoding images")][-1]
    assert decoded["done"] == decoded["total"] > 0 and decoded["said"] == f"Decoding images: {decoded['total']} of {decoded['total']}"
    assert "finetune: Saving the trained adapter" in run.log_tail()
    assert "published models/v0001" in run.log_tail()
    assert retrain.latest(settings).id == run.id and registry.active_version(settings.models_dir) == "v0001"


def test_cancel_stops_the_run_and_publishes_nothing(tiny_home):
    settings = Settings.from_env()
    run = retrain.start(settings, ["--epochs", "500", "--min-rows", "5", "--heldout-fraction", "0"])
    deadline = time.time() + 300
    while not [p for p in run.progress if p.get("phase") == "train"] and time.time() < deadline:
        time.sleep(0.2)
    started_with = dict(item.split("=", 1) for item in open(f"/proc/{run.pid}/environ").read().split("\0") if "=" in item)
    assert started_with["OMP_WAIT_POLICY"] == "PASSIVE" and int(started_with["OMP_NUM_THREADS"]) >= 1
    retrain.cancel(run)
    outcome = wait(run, timeout=120)
    assert outcome["status"] == "cancelled"
    assert registry.list_versions(settings.models_dir) == [] and registry.active_version(settings.models_dir) is None


def test_a_cancel_in_the_first_second_ends_as_cancelled_not_as_a_run_without_a_result(tiny_home):
    settings = Settings.from_env()
    run = retrain.start(settings, ["--epochs", "500", "--min-rows", "5"])
    retrain.cancel(run)  # at once: the child is still importing, before it can catch SIGTERM and say so itself
    outcome = wait(run, timeout=120)
    assert (outcome["status"], outcome["message"]) == ("cancelled", "cancelled; nothing was published")
    assert registry.list_versions(settings.models_dir) == [] and registry.active_version(settings.models_dir) is None


def test_a_run_whose_job_file_cannot_be_written_is_stopped_and_the_next_one_starts(tiny_home, monkeypatch):
    import errno

    settings = Settings.from_env()

    def disk_full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(retrain, "write_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        retrain.start(settings, ["--epochs", "500", "--min-rows", "5"])
    assert retrain.latest(settings) is None  # nobody could have followed or cancelled it
    assert all(child.poll() is not None for child in retrain._CHILDREN.values())  # so it is not left running
    monkeypatch.undo()
    run = retrain.start(settings, ["--epochs", "2", "--min-rows", "5", "--heldout-fraction", "0"])
    assert wait(run)["status"] == "published", run.log_tail()  # no orphan holds the retrain lock


def test_a_models_folder_that_cannot_be_written_is_one_clear_refusal(tiny_home, monkeypatch, capsys):
    import errno

    from filelock import FileLock

    from finetune import FinetuneConfig, FinetuneError, main

    def read_only(self, *args, **kwargs):  # as a read-only mount answers (root ignores permission bits, not EROFS)
        raise OSError(errno.EROFS, "Read-only file system")

    (tiny_home / "models").mkdir(exist_ok=True)
    monkeypatch.setattr(FileLock, "acquire", read_only)
    with pytest.raises(FinetuneError, match=r"cannot write into .*models: Read-only file system; nothing was trained"):
        main(FinetuneConfig(home=str(tiny_home), min_rows=5, epochs=1))
    monkeypatch.setattr("captioner.registry.write_atomic", lambda *args: read_only(None))
    with pytest.raises(registry.RegistryError, match=r"cannot write .*active.json: Read-only file system"):
        registry.activate(tiny_home / "models", None)


def test_roll_back_goes_to_the_version_live_before_not_the_next_lower_number(tmp_path):
    models = tmp_path / "models"
    for name in ("v0001", "v0002", "v0003", "v0004"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    registry.activate(models, "v0002")
    registry.activate(models, "v0004")  # v0003: a candidate published with --no-activate, never live
    assert registry.previous_version(models) == "v0002"
    registry.activate(models, "v0002", rollback=True)
    assert registry.previous_version(models) is None  # before v0002, the default model was live
    registry.activate(models, None, rollback=True)
    assert registry.active_state(models) == registry.ActiveState(None, None, ())
    (models / registry.ACTIVE_FILE).write_text('{"version": "v0004"}')  # written before the history was kept
    assert registry.previous_version(models) == "v0003"


def test_roll_back_from_a_live_version_whose_folder_is_gone_or_a_corrupt_pointer(tmp_path):
    models = tmp_path / "models"
    for name in ("v0001", "v0002", "v0003"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    for name in ("v0001", "v0002", "v0003"):
        registry.activate(models, name)
    (models / "v0003").rename(tmp_path / "moved-away")  # the live folder went missing
    assert registry.previous_version(models) == "v0002"
    (models / "v0001").rename(tmp_path / "also-gone")
    (models / "v0002").rename(tmp_path / "gone-too")
    assert registry.previous_version(models) is None  # nothing older left: the default model
    (models / registry.ACTIVE_FILE).write_text('{"version": "v00')
    with pytest.raises(registry.RegistryError, match="corrupt.*activate a version by name"):
        registry.previous_version(models)


def test_a_refused_or_failed_run_says_why(home, monkeypatch, tiny_blip_dir):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", str(tiny_blip_dir))
    run = retrain.start(Settings.from_env(), [])
    outcome = wait(run)
    assert outcome["status"] == "failed" and "only 0 approved caption row" in outcome["message"]


def test_the_outcome_tells_refused_from_failed_by_the_exception(home, monkeypatch, tmp_path):
    import finetune.cli
    from finetune import FinetuneError, Refused

    progress = tmp_path / "progress.jsonl"
    for error, status in ((Refused("not published: it forgot"), "refused"), (FinetuneError("no rows, not published"), "failed")):
        def fail(cfg, error=error):
            raise error

        monkeypatch.setattr(finetune.cli, "main", fail)
        assert finetune.cli.cli(["--progress-file", str(progress)]) == 1
        assert json.loads(progress.read_text().splitlines()[-1])["status"] == status


def test_a_progress_file_that_cannot_be_written_is_one_line_not_a_traceback(home, tmp_path, capsys):
    import finetune.cli

    (tmp_path / "a-file").write_text("")
    for where in (tmp_path / "no-such-folder" / "p.jsonl", tmp_path / "a-file" / "p.jsonl"):
        assert finetune.cli.cli(["--progress-file", str(where)]) == 1
        said = capsys.readouterr().err.strip().splitlines()
        assert len(said) == 1 and said[0].startswith(f"finetune: cannot write the progress file {where}")


def test_export_cli_writes_jsonl_and_an_imagefolder_dataset(home, tmp_path):
    done = run_cli("feedback", "export", "--format", "jsonl", "--out", tmp_path / "nothing")
    assert done.returncode == 2 and "no approved rows" in done.stderr
    log_rows(home, n=3)
    FeedbackLog(home / "data").record(b"\x89PNG fake", "png", task="qa", prompt="what?", model_output="x", correction="y")
    done = run_cli("feedback", "export", "--format", "jsonl", "--out", tmp_path / "jsonl")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "jsonl" / "approved.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all((tmp_path / "jsonl" / line["image"]).is_file() for line in lines)
    done = run_cli("feedback", "export", "--format", "hf", "--out", tmp_path / "hf")
    assert done.returncode == 0, done.stderr
    needs("datasets")
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(tmp_path / "hf"), split="train")
    assert sorted(dataset["text"]) == sorted(line["correction"] for line in lines)
    assert dataset[0]["image"].size[0] >= 64
    again = run_cli("feedback", "export", "--format", "hf", "--out", tmp_path / "hf")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_cli_captions_with_the_default_when_the_live_version_is_corrupt(home, monkeypatch, tmp_path, tiny_blip_dir):
    import shutil

    from images_zoo import demo, encode

    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    shutil.copytree(tiny_blip_dir, home / "models" / "v0001")
    (home / "models" / "v0001" / "model.safetensors").write_bytes(b"broken")
    registry.activate(home / "models", "v0001")
    picture = tmp_path / "p.png"
    picture.write_bytes(encode(demo("square", "blue"), "PNG"))
    done = run_cli("caption", picture)
    assert done.returncode == 0 and json.loads(done.stdout)["caption"] == "a blue square"
    assert "could not load active (v0001)" in done.stderr and "captioning with the default model demo instead" in done.stderr


def staged(models_dir, tmp_path):
    """A staging folder holding a whole version (the demo captioner's files), as finetune writes it."""
    import shutil

    from captioner.demo import demo_model_dir

    folder = registry.staging_dir(models_dir)
    for path in demo_model_dir("caption").iterdir():
        shutil.copy(path, folder / path.name)
    return folder


def test_a_version_being_published_is_never_taken_for_a_stale_staging_folder(tmp_path):
    """Another finetune starting meanwhile waits for the publish (its clean-up would empty the folder being renamed)."""
    import threading

    from filelock import FileLock

    from captioner.files import publish_folder

    models = tmp_path / "models"
    folder = staged(models, tmp_path)
    with FileLock(str(models / registry.LOCK_FILE)):  # publish() under way: the owner file goes, then the rename
        (folder / registry.OWNER_FILE).unlink()
        cleaner = threading.Thread(target=registry.remove_stale_staging, args=(models,))
        cleaner.start()
        cleaner.join(0.5)
        assert cleaner.is_alive(), "the clean-up did not wait for the registry lock"
        publish_folder(folder, models / "v0001")
    cleaner.join(10)
    assert registry.version_problem(models / "v0001") is None


def test_stale_staging_folders_go_and_live_or_young_ones_stay(tmp_path):
    import os
    import subprocess
    import sys

    models = tmp_path / "models"
    mine, dead, ownerless, old = (staged(models, tmp_path) for _ in range(4))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (dead / registry.OWNER_FILE).write_text(str(gone.pid))  # a killed run's
    (ownerless / registry.OWNER_FILE).unlink()  # a moment from its rename (a crash there leaves it, then it ages)
    (old / registry.OWNER_FILE).unlink()
    os.utime(old, (time.time() - 2 * registry.STALE_STAGING_S,) * 2)
    assert registry.remove_stale_staging(models) == sorted([dead.name, old.name])  # finetune names them in its log
    assert sorted(p.name for p in models.glob(".staging-*")) == sorted([mine.name, ownerless.name])


def test_two_sessions_pressing_retrain_at_once_start_one_run(home, monkeypatch):
    """The check for a running retrain and the start are one step: the second press is told a run is going."""
    import subprocess
    import sys
    import threading

    real = subprocess.Popen
    started = []

    def slow_start(args, **kwargs):  # a real process that runs long enough, standing in for a retrain's start-up
        started.append(args)
        time.sleep(0.3)
        return real([sys.executable, "-c", "import time; time.sleep(20)"], **kwargs)

    monkeypatch.setattr(retrain.subprocess, "Popen", slow_start)
    settings, outcomes = Settings.from_env(), []

    def press():
        try:
            outcomes.append(retrain.start(settings, []))
        except RuntimeError as exc:
            outcomes.append(exc)

    presses = [threading.Thread(target=press) for _ in range(2)]
    for thread in presses:
        thread.start()
    for thread in presses:
        thread.join()
    runs = [o for o in outcomes if isinstance(o, retrain.Run)]
    assert len(started) == 1 and len(runs) == 1 and "already running" in str([o for o in outcomes if o not in runs][0])
    assert runs[0].running
    retrain.cancel(runs[0])


def test_a_later_process_given_a_finished_runs_id_is_neither_running_nor_cancelled(home, tmp_path):
    """Process ids are reused: a run's folder names its process by id and start time, and only that one counts."""
    import os
    import subprocess
    import sys

    settings = Settings.from_env()
    folder = retrain.runs_dir(settings) / "20260101-000000-abcdef"
    folder.mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # took the finished run's id
    try:
        job = {"pid": stranger.pid, "pid_started": time.time() - 3600, "started": time.time() - 3600, "args": []}
        (folder / "job.json").write_text(json.dumps(job))
        run = retrain.latest(settings)
        assert run.id == folder.name and not run.running
        retrain.cancel(run)
        time.sleep(0.2)
        assert stranger.poll() is None, "cancel signalled a process that is not the run"
        models = tmp_path / "models"
        reused = staged(models, tmp_path)
        (reused / registry.OWNER_FILE).write_text(f"{os.getpid()} {time.time() - 3600}")  # a dead run's, id since reused
        mine = staged(models, tmp_path)
        registry.remove_stale_staging(models)
        assert [p.name for p in models.glob(".staging-*")] == [mine.name]
    finally:
        stranger.kill()
        stranger.wait()


def quick(home, **options):
    from finetune import FinetuneConfig

    return FinetuneConfig(home=str(home), min_rows=5, epochs=1, heldout_fraction=0.0, **options)


def test_a_rollback_made_while_a_retrain_trains_stands_and_the_run_says_its_version_is_not_live(tiny_home, monkeypatch, tmp_path):
    import finetune.cli
    from finetune import main, run

    models = tiny_home / "models"
    first = main(quick(tiny_home)).name  # v0001 live
    judge = run.judge_trained

    def admin_rolls_back(*args, **kwargs):  # while the second run trains, the admin goes back to the default model
        registry.activate(models, None, rollback=True)
        return judge(*args, **kwargs)

    monkeypatch.setattr(run, "judge_trained", admin_rolls_back)
    progress = tmp_path / "progress.jsonl"
    assert finetune.cli.cli(["--home", str(tiny_home), "--min-rows", "5", "--epochs", "1", "--heldout-fraction", "0",
                             "--progress-file", str(progress)]) == 1  # fmt: skip
    outcome = json.loads(progress.read_text().splitlines()[-1])
    assert (outcome["status"], outcome["version"]) == ("not live", "v0002")
    assert f"the live model changed meanwhile ({first} -> the default model)" in outcome["message"]
    assert registry.active_version(models) is None and (models / "v0002" / "config.json").is_file()


def test_one_retrain_at_a_time_per_models_folder_and_a_refused_one_writes_nothing(tiny_home, tmp_path):
    from filelock import FileLock

    from finetune import FinetuneError, main
    from finetune.run import RUN_LOCK

    empty = tmp_path / "empty-home"
    empty.mkdir()
    with pytest.raises(FinetuneError, match="only 0 approved caption row"):
        main(quick(empty))
    assert not (empty / "models").exists()
    (tiny_home / "models").mkdir()
    with FileLock(str(tiny_home / "models" / RUN_LOCK)):  # a run started elsewhere (CLI, another app) holds it
        held = rf"another retrain is running on .*models \(process {os.getpid()} \(.*\)\); nothing was trained"  # who holds it
        with pytest.raises(FinetuneError, match=held):
            main(quick(tiny_home))
    assert registry.list_versions(tiny_home / "models") == []


def test_a_disk_that_fills_while_the_version_is_written_is_one_clear_error(tiny_home, monkeypatch):
    import errno

    from finetune import FinetuneError, main, run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "write_version", full)
    with pytest.raises(FinetuneError, match="cannot write the new version into .*: No space left on device; nothing was published"):
        main(quick(tiny_home))
    assert list((tiny_home / "models").glob("v*")) == [] and list((tiny_home / "models").glob(".staging-*")) == []


def test_a_base_named_relative_to_captioner_home_is_found_from_any_folder(tiny_home, monkeypatch, tmp_path):
    from finetune import main

    first = main(quick(tiny_home, activate=False))
    monkeypatch.chdir(tmp_path)  # as the admin page's child runs, from the project's folder
    second = main(quick(tiny_home, base=f"models/{first.name}", activate=False))
    assert json.loads((second / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "models/v0001"
