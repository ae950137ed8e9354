"""The admin page's Retrain tab in AppTest: the options as a user types them, and what a run says while it works."""

import re
import time

import pytest

from captioner import retrain
from captioner.settings import Settings

from conftest import needs, start_app
from admin_app import login, shown

@pytest.fixture


def admin(home, monkeypatch):
    needs("streamlit")
    monkeypatch.setenv("CAPTIONER_ADMIN_PASSWORD", "correct horse")
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    return login(start_app("pages/admin.py"))


def field(app, label):
    return [n for n in app.number_input if n.label == label][0]


def test_the_learning_rate_reads_and_takes_small_rates_as_a_user_writes_them(admin):
    rate = field(admin, "Learning rate")
    assert rate.value == 2e-3 and rate.proto.format == "%e"  # the browser shows 2e-3 (sprintf.js), not 0.00200
    assert rate.step == 1e-4  # an arrow press moves 2e-3 to 2.1e-3, not to 0.012
    rate.set_value(5e-6)  # "%.5f" showed it as 0.00001
    [b for b in admin.button if b.label == "Start retrain"][0].click().run()
    run = retrain.latest(Settings.from_env())
    assert run.args[run.args.index("--lr") + 1] == "5e-06"
    finish(admin, run)  # nothing approved: refused at once


def finish(app, run, timeout=300):
    deadline = time.time() + timeout
    while run.running and time.time() < deadline:
        time.sleep(0.3)
    app.run()
    assert not run.running and not app.exception, app.exception


def test_a_run_that_is_decoding_images_or_saving_says_so_not_only_its_steps(admin, home):
    import json
    import subprocess

    from captioner.runtime import process_started

    child = subprocess.Popen(["sleep", "60"])  # the run's process: alive while the page looks
    try:
        folder = home / "models" / ".runs" / "20261207-120000-abcdef"
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps({"pid": child.pid, "pid_started": process_started(child.pid),
                                                     "started": time.time(), "args": []}))  # fmt: skip
        progress = folder / "progress.jsonl"
        said = {"time": time.time() - 12, "phase": "prepare", "said": "Decoding images: 64 of 300", "done": 64, "total": 300}
        progress.write_text(json.dumps(said) + "\n")
        admin.run()
        [bar] = [p.text for p in admin.get("progress")]
        assert re.fullmatch(r"Decoding images: 64 of 300 \(for 1[23] s\)", bar), bar  # and for how long, so it is alive
        steps = [{"time": time.time(), "phase": "train", "step": n, "steps": 40, "loss": 1.0 / n} for n in (20, 40)]
        saving = {"time": time.time() - 3, "phase": "save", "said": "Saving the trained adapter"}
        progress.write_text("".join(json.dumps(r) + "\n" for r in [said, *steps, saving]))
        admin.run()
        assert [p.text for p in admin.get("progress")] == []  # the steps' bar is not what it is doing now
        assert [c.value for c in admin.caption if re.fullmatch(r"Saving the trained adapter \(for [34] s\)", c.value)]
        progress.write_text("".join(json.dumps(r) + "\n" for r in [said, *steps]))
        admin.run()
        assert [p.text for p in admin.get("progress")] == ["step 40 of 40 · loss 0.0250"]
        retrain._CHILDREN[folder.name] = child  # started by this server: running until its process is reaped
        ended = {"time": time.time(), "phase": "done", "status": "published", "message": "published v0001", "version": "v0001"}
        progress.write_text("".join(json.dumps(r) + "\n" for r in [said, *steps, ended]))  # its last words, still exiting
        admin.run()
        assert not [c.value for c in admin.caption if c.value.startswith("done")]  # "done (for 0 s)" flashed here
    finally:
        retrain._CHILDREN.pop("20261207-120000-abcdef", None)
        child.kill()
        child.wait()


def test_a_rank_too_wide_for_the_model_is_refused_within_seconds_and_the_page_says_which_option(admin, home):
    from test_finetune import log_rows

    log_rows(home, n=24)  # approved: the run gets as far as loading the (demo) model, then stops
    field(admin, "LoRA rank").set_value(256)
    started = time.time()
    [b for b in admin.button if b.label == "Start retrain"][0].click().run()
    finish(admin, retrain.latest(Settings.from_env()))
    assert field(admin, "LoRA rank").help.startswith("--lora-r:")  # the option the refusal names is the field's
    assert time.time() - started < 120  # not the minutes of decoding and training it took before it ran out of memory
    assert ("Last retrain: --lora-r 256 is more than the width of the narrowest layer it adapts (128 in this model): "
            "a higher rank adds memory and no capacity; use at most --lora-r 128") in shown(admin.error)  # fmt: skip
