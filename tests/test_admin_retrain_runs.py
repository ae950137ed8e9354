"""The admin page's Retrain tab following a run in AppTest: a real retrain to the end, torn progress files."""

import json

from conftest import start_app
from admin_app import admin, fresh_login_brake  # noqa: F401 (fixtures; the login brake is autouse)
from admin_app import login, shown


def test_start_a_retrain_from_the_page_and_follow_it_to_the_end(home, monkeypatch, tiny_blip_dir):
    import time

    from captioner import retrain
    from captioner.settings import Settings
    from test_finetune import log_rows

    monkeypatch.setenv("CAPTIONER_ADMIN_PASSWORD", "pw")
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", str(tiny_blip_dir))
    log_rows(home, n=12)
    app = login(start_app("pages/admin.py"), "pw")
    assert "No retrain has run yet." in [i.value for i in app.info]
    app.number_input[0].set_value(5)
    app.number_input[1].set_value(2)
    [b for b in app.button if b.label == "Start retrain"][0].click().run()
    run = retrain.latest(Settings.from_env())
    assert run is not None and "--epochs" in run.args
    assert [b for b in app.button if b.label == "Start retrain"][0].disabled  # one run at a time, even here
    deadline = time.time() + 600
    while run.running and time.time() < deadline:
        time.sleep(0.5)
    app.run()
    outcome = run.outcome
    assert f"Last retrain: {outcome['message']}" in shown(app.success) + shown(app.error)
    assert any("finetune:" in c.value for c in app.code)
    assert outcome["status"] == "published", run.log_tail()
    assert any(c.value == "Live: v0001" for c in app.caption)  # the whole page followed: the versions tab shows it


def test_a_torn_progress_line_or_an_empty_job_file_leaves_the_page_showing_the_rest(admin, home):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = home / "models" / ".runs" / "20261201-120000-abcdef"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"pid": int(gone.stdout), "started": 0, "args": []}))
    steps = [{"phase": "train", "step": n, "steps": 10, "loss": 1.0 / n, "epoch": 0} for n in (1, 2, 3)]
    (folder / "progress.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps) + '{"phase": "train", "st')
    (home / "models" / ".runs" / "20261201-130000-fedcba").mkdir()
    (home / "models" / ".runs" / "20261201-130000-fedcba" / "job.json").write_text("")  # the disk filled up as it was written
    login(admin)  # a run killed mid-line (or a line read while it was appended)
    assert [p.text for p in admin.get("progress")] == ["step 3 of 10 · loss 0.3333"]
    assert "The last retrain ended without a result; see its log." in shown(admin.error)
    assert any(c.value == "Live: the default model (demo)" for c in admin.caption)  # the tabs after it are drawn too
