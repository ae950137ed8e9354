"""The admin page and hot-swapping in AppTest: password, review edits, statistics, export, versions."""

import json
import shutil

import pytest

import images_zoo as zoo
from captioner import registry
from captioner.demo import demo_model_dir
from captioner.demo.quality import demo_inputs
from captioner.feedback import FIELDS, FeedbackLog
from conftest import needs, start_app
from page_text import shown as shown_text


@pytest.fixture(autouse=True)
def fresh_login_brake(monkeypatch):
    """Each test starts with no failed logins on record (the guard lives as long as the server process)."""
    needs("streamlit")
    from pages.admin_tabs import login as login_tab
    from captioner.login import LoginGuard

    monkeypatch.setattr(login_tab, "GUARD", LoginGuard())


@pytest.fixture
def admin(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_ADMIN_PASSWORD", "correct horse")
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    log = FeedbackLog(home / "data")
    inputs, samples = demo_inputs(4, seed=5)
    for item, truth in zip(inputs, samples):
        log.record(item.data, "png", task="caption", model_output="a blob", correction=truth.caption, model_version="demo-x")
    log.record(inputs[0].data, "png", task="qa", prompt="what color is the shape?", model_output="red", correction="red")
    return start_app("pages/admin.py")


def login(app, password="correct horse"):
    app.text_input[0].set_value(password)
    app.button[0].click().run()
    assert not app.exception, app.exception
    return app


def click(app, prefix):
    [b for b in app.button if b.label.startswith(prefix)][0].click().run()
    assert not app.exception, app.exception


def edit(app, changes):
    """Seed the review table's edits ({position: {column: value}}) as a browser would, then rerun."""
    app.session_state[app.data_editor[0].key] = {"edited_rows": changes, "added_rows": [], "deleted_rows": []}
    app.run()
    assert not app.exception, app.exception


def shown(elements):
    """What the user reads in these Markdown elements (backslash escapes removed)."""
    return [shown_text(element.value) for element in elements]


def rows(home):
    found, problems = FeedbackLog(home / "data").read()
    assert problems == []
    return found


def test_a_wrong_password_gets_no_access_and_no_hint(admin):
    login(admin, "correct horse!")
    assert [e.value for e in admin.error] == ["Wrong password."]
    assert not admin.tabs and not admin.data_editor


def test_approve_one_and_bulk_reject_through_the_table(admin, home):
    login(admin)
    table = admin.data_editor[0].value
    assert len(table) == 5 and set(table["status"]) == {"pending"}
    edit(admin, {0: {"select": True}})
    click(admin, "Approve selected (1)")
    approved = [r for r in rows(home) if r.status == "approved"]
    assert len(approved) == 1 and approved[0].reviewer == "admin" and approved[0].reviewed_at
    edit(admin, {0: {"select": True}, 1: {"select": True}})
    click(admin, "Reject selected (2)")
    assert sorted(r.status for r in rows(home)) == ["approved", "pending", "pending", "rejected", "rejected"]


def test_edit_a_correction_and_delete_a_row(admin, home):
    login(admin)
    first_id = admin.data_editor[0].value["id"][0]
    edit(admin, {0: {"correction": "a scarlet circle"}})
    click(admin, "Save edits (1)")
    assert {r.id: r.correction for r in rows(home)}[first_id] == "a scarlet circle"
    edit(admin, {0: {"select": True}})
    click(admin, "Delete selected (1)")
    assert first_id not in {r.id for r in rows(home)} and len(rows(home)) == 4


def test_a_correction_typed_in_a_ticked_row_goes_with_its_approval_and_one_in_another_row_stays_pending(admin, home):
    login(admin)
    ids = list(admin.data_editor[0].value["id"])
    edit(admin, {0: {"select": True, "correction": "a scarlet  circle "}, 1: {"correction": "a cobalt square"}})
    click(admin, "Approve selected (1)")
    assert any("Approved 1 row(s), with 1 edited correction(s)." in s for s in shown(admin.success))
    logged = {r.id: r for r in rows(home)}
    assert (logged[ids[0]].status, logged[ids[0]].correction) == ("approved", "a scarlet circle")  # approved as typed
    assert logged[ids[1]].status == "pending" and logged[ids[1]].correction != "a cobalt square"  # not acted on yet
    assert [b.label for b in admin.button if b.label.startswith("Save edits")] == ["Save edits (1)"]  # still pending
    assert not admin.session_state["review_selection"].ids  # nothing stays ticked
    click(admin, "Save edits (1)")
    assert {r.id: r.correction for r in rows(home)}[ids[1]] == "a cobalt square"


def test_statistics_and_filters(admin, home):
    login(admin)
    assert [m.value for m in admin.metric] == ["5", "0", "0"]
    admin.multiselect[1].set_value(["qa"]).run()
    assert list(admin.data_editor[0].value["task"]) == ["qa"]
    admin.text_input[1].set_value("blob").run()  # text filter on top of the task filter
    assert len(admin.data_editor[0].value) == 0


def finish_export(app, timeout=120):
    """Rerun the page (as its progress fragment does) until the export's thread is done."""
    import time

    deadline = time.time() + timeout
    while app.session_state["export_jobs"][-1].thread.is_alive() and time.time() < deadline:
        time.sleep(0.1)
    app.run()
    assert not app.exception, app.exception


def test_an_export_goes_on_when_the_page_reruns_meanwhile(admin, home, monkeypatch):
    import threading

    from captioner import export as export_module
    from captioner.review import set_status

    set_status(FeedbackLog(home / "data"), {r.id for r in rows(home)}, "approved", "test")
    gate, copy = threading.Event(), export_module.shutil.copyfile
    monkeypatch.setattr(export_module.shutil, "copyfile", lambda *args: (gate.wait(60), copy(*args))[1])
    login(admin)
    click(admin, "Export approved rows")
    assert [p.text for p in admin.get("progress")] == ["Reading the approved rows…"]
    [t for t in admin.text_input if t.label == "Text contains"][0].set_value("circle").run()  # the admin goes on
    assert not admin.exception, admin.exception  # reviewing while it exports: the page's script is rerun
    assert [b for b in admin.button if b.label == "Export approved rows"][0].disabled  # one at a time
    gate.set()
    finish_export(admin)
    assert any("Exported 5 approved rows" in s.value for s in admin.success)
    exported = next((home / "data" / "exports").glob("*-hf"))
    assert len(list(exported.rglob("*.png"))) == 5 and exported.with_name(exported.name + ".zip").is_file()


def test_an_export_that_fails_unexpectedly_in_its_thread_says_so_on_the_page(admin, home, monkeypatch):
    from captioner import export as export_module
    from captioner.review import set_status

    set_status(FeedbackLog(home / "data"), {r.id for r in rows(home)}, "approved", "test")

    def broken(*args, **kwargs):
        raise ValueError("a column pyarrow cannot type")

    monkeypatch.setattr(export_module.pq, "write_table", broken)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the server log's traceback, not this test's
    click(login(admin), "Export approved rows")
    finish_export(admin)
    assert "The export failed: ValueError: a column pyarrow cannot type" in shown(admin.error)
    assert list((home / "data" / "exports").iterdir()) == []  # neither its staging folder nor the one made for it


def test_two_exports_in_the_same_second_from_two_sessions_both_succeed(admin, home, monkeypatch):
    import time

    from captioner.review import set_status

    monkeypatch.setattr(time, "strftime", lambda *_: "20261207-190923")  # both presses in the same second

    set_status(FeedbackLog(home / "data"), {r.id for r in rows(home)}, "approved", "test")
    other = login(start_app("pages/admin.py"))  # a second admin
    click(login(admin), "Export approved rows")
    click(other, "Export approved rows")
    finish_export(admin)
    finish_export(other)
    for app in (admin, other):
        assert any("Exported 5 approved rows" in s.value for s in app.success), shown(app.error)
    folders = sorted(p for p in (home / "data" / "exports").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(len(list(f.rglob("*.png"))) == 5 and f.with_name(f.name + ".zip").is_file() for f in folders)


def test_export_approved_rows_from_the_page(admin, home, tmp_path):
    from captioner.review import set_status

    log = FeedbackLog(home / "data")
    good = rows(home)
    (home / "outside.png").write_bytes((home / "data" / good[0].image_path).read_bytes())
    (log.images_dir / "link.png").symlink_to(home / "outside.png")
    log.append([good[0]._replace(id="leads-outside", image_path="images/link.png", correction="**bold** [x](https:evil.example)")])
    set_status(log, {r.id for r in rows(home)}, "approved", "test")
    login(admin)
    admin.radio[0].set_value("hf").run()
    click(admin, "Export approved rows")
    finish_export(admin)
    assert any("Exported 5 approved rows" in s.value for s in admin.success)
    assert [w.value for w in admin.warning] == ["1 approved row(s) were left out:"]
    assert any("leads-outside" in c.value and "outside" in c.value for c in admin.code)
    exported = next((home / "data" / "exports").glob("*-hf"))
    from datasets import load_dataset

    captions = load_dataset(str(exported), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(captions) == 4 and set(captions["task"]) == {"caption"}
    assert load_dataset(str(exported), "qa", split="train", cache_dir=str(tmp_path / "cache"))["text"] == ["red"]


def make_version(home, name):
    """A published version: here, a copy of the demo captioner's checkpoint."""
    shutil.copytree(demo_model_dir("caption"), home / "models" / name)
    (home / "models" / name / "train_args.json").write_text(json.dumps({"created": "2026-11-22", "base": "demo", "rows_used": 3}))


def caption_version(app):
    app.file_uploader[0].set_value(("c.png", zoo.encode(zoo.demo("circle", "red"), "PNG"), "image/png")).run()
    line = [c.value for c in app.caption if " · version " in c.value][0]
    return line.split(" · version ")[1]


def test_hot_swap_changes_the_next_captions_version_and_a_broken_one_is_refused(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    make_version(home, "v0001")
    make_version(home, "v0002")
    registry.activate(home / "models", "v0001")
    app = start_app()
    assert caption_version(app) == "v0001"
    registry.activate(home / "models", "v0002")
    app.run()
    assert caption_version(app) == "v0002" and app.text_area[0].value == "a red circle"
    assert "**Captioning:** `v0002 (fine-tuned, from models/)`" in [m.value for m in app.sidebar.markdown]
    make_version(home, "v0003")
    (home / "models" / "v0003" / "model.safetensors").write_bytes(b"not a model")
    registry.activate(home / "models", "v0003")
    app.run()
    warnings = [shown_text(w.value) for w in app.sidebar.warning]
    assert any("v0003" in w and "Still captioning with active (v0002)" in w for w in warnings), warnings
    assert caption_version(app) == "v0002"


def test_versions_tab_activates_and_rolls_back(admin, home):
    make_version(home, "v0001")
    make_version(home, "v0002")
    figures = {"heldout_before": {"exact_match": 0.5, "count": 8}, "heldout_after": {"exact_match": 0.75, "count": 8},
               "new_concepts": {"before": 0.0, "after": 1.0, "count": 2}, "old_knowledge": {"before": 1.0, "after": 1.0, "count": 6}}
    (home / "models" / "v0002" / "metrics.json").write_text(json.dumps(figures))  # fmt: skip
    login(admin)
    assert "default model" in [c.value for c in admin.caption if c.value.startswith("Live:")][0]
    table = admin.dataframe[-1].value.set_index("version")
    shown_figures = ["held-out images", "exact before", "exact after", "new concepts images", "new concepts after", "old knowledge images"]
    assert list(table.loc["v0002", shown_figures]) == [8, 0.5, 0.75, 2, 1.0, 6]
    for name in ("v0001", "v0002"):
        [s for s in admin.selectbox if s.label == "Version"][0].set_value(name).run()
        click(admin, f"Activate {name}")
        assert registry.active_version(home / "models") == name
    click(admin, "Roll back to v0001")  # the button says where it goes
    assert registry.active_version(home / "models") == "v0001"
    click(admin, "Roll back to the default model")  # v0001 went live over the default model: back to that
    assert registry.active_version(home / "models") is None


def test_a_press_made_on_what_another_admin_changed_meanwhile_says_so(admin, home):
    for name in ("v0001", "v0002", "v0003"):
        make_version(home, name)
        registry.activate(home / "models", name)
    login(admin)
    registry.activate(home / "models", "v0001")  # another admin, while this page shows "Roll back to v0002"
    click(admin, "Roll back to v0002")  # it did nothing and said nothing: the button's label had changed
    assert registry.active_version(home / "models") == "v0001"  # theirs is not undone by a press made over v0003
    assert "v0001 went live after this page showed v0003" in shown(admin.error)[0]
    [s for s in admin.selectbox if s.label == "Version"][0].set_value("v0002").run()
    registry.activate(home / "models", "v0003")  # and again, before this admin presses Activate v0002
    click(admin, "Activate v0002")
    assert registry.active_version(home / "models") == "v0002" and "v0002 is live" in shown(admin.success)[0]


def test_versions_tab_with_the_live_folder_gone_or_a_corrupt_pointer(admin, home, tmp_path):
    make_version(home, "v0001")
    make_version(home, "v0002")
    registry.activate(home / "models", "v0001")
    registry.activate(home / "models", "v0002")
    (home / "models" / "v0002").rename(tmp_path / "v0002")  # someone moved the live version away
    login(admin)
    click(admin, "Roll back")
    assert registry.active_version(home / "models") == "v0001" and "v0001 is live" in shown(admin.success)[0]
    (home / "models" / "active.json").write_text('{"version": "v00')
    admin.run()
    errors = shown(admin.error)
    assert any("active.json is corrupt" in e and "keeps serving" in e for e in errors), errors
    assert not [c for c in admin.caption if c.value.startswith("Live:")]  # not guessed as the default model
    click(admin, "Activate v0001")  # activating a version by name repairs it
    assert registry.active_state(home / "models") == registry.ActiveState("v0001")


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


@pytest.fixture
def many(home, monkeypatch, demo_png):
    """A log of 60 pending rows: more than one page (25 a page by default), scores falling row by row."""
    monkeypatch.setenv("CAPTIONER_ADMIN_PASSWORD", "correct horse")
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    log = FeedbackLog(home / "data")
    first, _ = log.record(demo_png(), "png", task="caption", model_output="a blob", correction="row 00", score=0.0)
    log.append([first._replace(id=f"row-{i:02d}", correction=f"row {i:02d}", score=f"{-i / 10:.4f}",
                               created_at=f"2026-01-01T00:00:{i:02d}+00:00") for i in range(1, 60)])  # fmt: skip
    return login(start_app("pages/admin.py"))


def shown_ids(app):
    return list(app.data_editor[0].value["id"])


def button(app, prefix):
    return [b for b in app.button if b.label.startswith(prefix)][0]


def test_an_action_touches_the_ticked_row_only_and_leaves_nothing_ticked(many, home):
    before = shown_ids(many)
    assert len(before) == 25 and "60 matching" in [c.value for c in many.caption if "matching" in c.value][0]
    edit(many, {1: {"select": True}})
    click(many, "Approve selected (1)")
    approved = [r.id for r in rows(home) if r.status == "approved"]
    assert approved == [before[1]]
    after = shown_ids(many)
    assert after[1] != before[1] and not any(many.data_editor[0].value["select"])
    assert button(many, "Approve selected").label == "Approve selected (0)" and button(many, "Approve selected").disabled
    many.run()  # a rerun must not bring the tick back onto the row now in its place
    assert button(many, "Approve selected").disabled and [r.id for r in rows(home) if r.status == "approved"] == approved


def test_a_rerun_asked_for_while_an_action_writes_neither_drops_its_note_nor_leaves_its_rows_ticked(many, home, monkeypatch):
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData

    from pages.admin_tabs import review

    real = review.set_status

    def slow_write(*args, **kwargs):  # as a 100,000-row log: the table's late message asks for a rerun meanwhile
        written = real(*args, **kwargs)
        get_script_run_ctx().script_requests.request_rerun(RerunData())
        return written

    monkeypatch.setattr(review, "set_status", slow_write)
    first = shown_ids(many)[0]
    edit(many, {0: {"select": True}})
    click(many, "Approve selected (1)")
    assert "Approved 1 row(s)." in shown(many.success)
    assert button(many, "Approve selected").label == "Approve selected (0)"  # nothing left ticked for the next press
    edit(many, {0: {"select": True}})
    click(many, "Reject selected (1)")
    assert [r.id for r in rows(home) if r.status == "approved"] == [first]  # the next action touched its own row only
    assert len([r for r in rows(home) if r.status == "rejected"]) == 1


def test_a_row_another_session_reviewed_since_you_saw_it_is_left_as_they_made_it(many, home):
    other = login(start_app("pages/admin.py"))  # a second admin, on the same log
    target = shown_ids(many)[0]
    edit(many, {0: {"select": True}})
    edit(other, {0: {"select": True}, 1: {"select": True}})
    click(many, "Approve selected (1)")
    click(other, "Reject selected (2)")
    status = {r.id: r.status for r in rows(home)}
    assert status[target] == "approved"  # the first admin's approval stands; the second's reject took only the other row
    assert sorted(status.values()).count("rejected") == 1
    [note] = shown(other.success)
    assert note.startswith("Rejected 1 row(s).") and "1 row(s) changed in another session since you saw them" in note
    assert "now approved, changed by admin" in note


def test_ticks_on_several_pages_add_up_by_id(many, home):
    page_one = shown_ids(many)
    edit(many, {0: {"select": True}})
    click(many, "Next page")
    page_two = shown_ids(many)
    assert not set(page_one) & set(page_two)
    edit(many, {2: {"select": True}})
    assert "2 selected (1 not on this page)" in [c.value for c in many.caption if "selected" in c.value][0]
    click(many, "Reject selected (2)")
    assert sorted(r.id for r in rows(home) if r.status == "rejected") == sorted([page_one[0], page_two[2]])


def test_ticks_and_typing_on_a_table_that_moved_under_them_land_on_the_rows_shown(many, home, demo_png):
    """A user logs a correction while the admin works: the page's rows shift, the admin's edits stay on theirs."""
    shown = shown_ids(many)
    edit(many, {1: {"select": True}})
    FeedbackLog(home / "data").record(demo_png(), "png", task="caption", model_output="a blob", correction="just in")
    edit(many, {1: {"select": False}, 3: {"select": True}, 4: {"correction": "typed by the admin"}})  # on the old table
    assert shown_ids(many)[1:4] == shown[0:3]  # the new correction came first: the rows moved down
    assert "1 selected · 1 correction(s) edited" in [c.value for c in many.caption if "selected" in c.value][0]
    click(many, "Approve selected (1)")
    assert [r.id for r in rows(home) if r.status == "approved"] == [shown[3]]  # not shown[1], not the new row
    edit(many, {0: {"correction": "typed again"}})  # the first typing (a row not ticked) is still pending beside it
    FeedbackLog(home / "data").record(demo_png(), "png", task="caption", model_output="a blob", correction="later")
    many.run()
    click(many, "Save edits (2)")
    corrections = {r.id: r.correction for r in rows(home)}
    assert corrections[shown_ids(many)[1]] == "typed again" and list(corrections.values()).count("typed again") == 1
    assert corrections[shown[4]] == "typed by the admin" and list(corrections.values()).count("typed by the admin") == 1


def test_every_row_is_reachable_and_the_least_confident_come_first(many, home):
    seen = []
    for _ in range(3):
        seen += shown_ids(many)
        if not button(many, "Next page").disabled:
            click(many, "Next page")
    assert sorted(seen) == sorted(r.id for r in rows(home)) and len(seen) == 60
    [s for s in many.selectbox if s.label == "Order"][0].set_value("least_confident").run()
    scores = list(many.data_editor[0].value["score"])
    assert scores == sorted(scores) and scores[0] == -5.9
    assert "page 1 of 3" in [c.value for c in many.caption if "matching" in c.value][0]  # a new order starts on page 1


def test_broken_records_are_shown_as_plain_text_and_can_be_moved_aside(admin, home):
    log = FeedbackLog(home / "data")
    with open(log.csv_path, "ab") as handle:
        handle.write("**BOLD** [click](https:evil.example),x\r\n".encode())
    login(admin)
    assert [w.value for w in admin.warning] == ["feedback.csv has 1 broken record(s), left as they are: no action touches them."]
    assert any(f"line 7: expected {len(FIELDS)} fields, found 2" in c.value for c in admin.code)
    click(admin, "Move the broken records aside")
    assert not admin.warning and any("Moved 1 broken record(s)" in text for text in shown(admin.success))
    assert (home / "data" / "feedback-broken.csv").read_bytes().endswith(b"**BOLD** [click](https:evil.example),x\r\n")
    assert rows(home) and FeedbackLog(home / "data").read()[1] == []


def test_a_note_built_from_data_is_escaped_not_rendered():
    from pages.ui.text import plain

    assert plain("**BOLD** [click](https:evil.example) `x` <b>") == (
        "\\*\\*BOLD\\*\\* \\[click\\]\\(https\\:evil\\.example\\) \\`x\\` \\<b\\>"
    )


def test_repeated_wrong_passwords_are_braked_even_for_the_right_one(admin):
    for _ in range(3):
        login(admin, "wrong")
    assert "Wait 2 s" in admin.error[0].value
    login(admin)  # the right password, too soon: not even checked
    assert "not checked" in admin.error[0].value and not admin.tabs


def test_a_log_locked_too_long_is_one_message_on_the_page(admin, home, monkeypatch):
    from filelock import FileLock

    import captioner.feedback as feedback

    monkeypatch.setattr(feedback, "LOCK_TIMEOUT_S", 0.2)
    with FileLock(str(home / "data" / "feedback.csv.lock"), thread_local=False):
        login(admin)
    assert len(admin.error) == 1 and "the feedback log is busy" in admin.error[0].value and not admin.exception


def test_a_full_disk_during_an_action_is_one_message_and_the_log_is_untouched(admin, home, monkeypatch):
    import errno

    import captioner.feedback as feedback

    login(admin)
    before = (home / "data" / "feedback.csv").read_bytes()

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(feedback, "write_atomic", full)
    edit(admin, {0: {"select": True}})
    click(admin, "Approve selected (1)")
    assert len(admin.error) == 1 and "No space left on device" in admin.error[0].value and not admin.exception
    assert not admin.success and (home / "data" / "feedback.csv").read_bytes() == before


def selected_caption(app):
    return [c.value for c in app.caption if "selected" in c.value][0]


def test_tick_all_on_this_page_ticks_exactly_the_rows_shown_even_when_the_log_moved_before_the_press(many, home, demo_png):
    shown = shown_ids(many)
    edit(many, {3: {"correction": "typed first"}})  # typing on the table before the press is kept
    FeedbackLog(home / "data").record(demo_png(), "png", task="caption", model_output="a blob", correction="just in")
    click(many, "Tick all 25 on this page")  # the press was made on the table without the new row
    assert selected_caption(many).startswith("25 selected") and "1 correction(s) edited" in selected_caption(many)
    assert shown_ids(many)[1:] == shown[:24] and list(many.data_editor[0].value["select"]) == [False] + [True] * 24
    many.run()  # a rerun keeps them
    edit(many, {1: {"select": False}})  # untick one by hand: the rest stay
    assert selected_caption(many).startswith("24 selected (1 not on this page)")
    click(many, "Approve selected (24)")
    status = {r.id: r.status for r in rows(home)}
    assert sorted(i for i, s in status.items() if s == "approved") == sorted(shown[1:])
    assert [r.correction for r in rows(home) if r.id == shown[3]] == ["typed first"]
    assert selected_caption(many).startswith("0 selected") and not any(many.data_editor[0].value["select"])


def test_tick_all_matching_reaches_rows_on_every_page_and_only_those(many, home):
    [s for s in many.multiselect if s.label == "Status"][0].set_value(["pending"]).run()
    [t for t in many.text_input if t.label == "Text contains"][0].set_value("row 1").run()  # row 01 and row 10-19
    assert not [b for b in many.button if b.label.startswith("Tick all") and "matching" in b.label]  # all on one page
    [t for t in many.text_input if t.label == "Text contains"][0].set_value("").run()
    click(many, "Next page")
    click(many, "Tick all 60 matching")
    assert selected_caption(many).startswith("60 selected (35 not on this page)")
    assert button(many, "Tick all 25 on this page").disabled
    click(many, "Reject selected (60)")
    assert {r.status for r in rows(home)} == {"rejected"} and len(rows(home)) == 60
    assert "Rejected 60 row(s)." in shown(many.success) and selected_caption(many).startswith("0 selected")


def test_unticking_all_keeps_the_corrections_typed_and_discarding_them_is_its_own_button(many, home):
    edit(many, {0: {"correction": "typed, not ticked"}, 1: {"select": True}, 2: {"select": True}})
    assert selected_caption(many).startswith("2 selected · 1 correction(s) edited")
    click(many, "Untick all (2)")  # "Clear selection" dropped the typed correction with the ticks
    assert selected_caption(many).startswith("0 selected · 1 correction(s) edited")
    assert list(many.data_editor[0].value["correction"])[0] == "typed, not ticked" and not any(many.data_editor[0].value["select"])
    edit(many, {3: {"select": True}})
    click(many, "Discard edits (1)")
    assert selected_caption(many).startswith("1 selected · 0 correction(s) edited")
    assert list(many.data_editor[0].value["correction"])[0] == "row 00"  # the log's own text again
    assert [r.correction for r in rows(home)].count("typed, not ticked") == 0


def test_an_approval_without_a_reviewer_name_is_refused_and_nothing_is_lost(many, home):
    [t for t in many.text_input if t.label.startswith("Your name")][0].set_value("  ").run()
    edit(many, {0: {"select": True}})
    click(many, "Approve selected (1)")
    assert shown(many.error) == ["Not saved: the reviewer name is empty"]  # it was approved with no reviewer at all
    assert {r.status for r in rows(home)} == {"pending"} and selected_caption(many).startswith("1 selected")


def test_an_approval_made_by_mistake_can_be_reopened_as_pending(many, home):
    click(many, "Tick all 25 on this page")
    click(many, "Approve selected (25)")
    assert sum(r.status == "approved" for r in rows(home)) == 25
    [s for s in many.multiselect if s.label == "Status"][0].set_value(["approved"]).run()
    click(many, "Tick all 25 on this page")
    click(many, "Reopen selected (25)")  # only Reject was there: a wrong approval could not go back to pending
    assert {r.status for r in rows(home)} == {"pending"} and "Reopened 25 row(s) as pending." in shown(many.success)
