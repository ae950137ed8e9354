"""Shared fixtures and helpers of the admin page's AppTest files (tests/test_admin_*.py): a logged-in page over a
small or a long log, clicks, table edits, finished exports, published versions."""

import json
import shutil

import pytest

import images_zoo as zoo
from captioner.demo import demo_model_dir
from captioner.demo.quality import demo_inputs
from captioner.feedback import FeedbackLog
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


def selected_caption(app):
    return [c.value for c in app.caption if "selected" in c.value][0]


def finish_export(app, timeout=120):
    """Rerun the page (as its progress fragment does) until the export's thread is done."""
    import time

    deadline = time.time() + timeout
    while app.session_state["export_jobs"][-1].thread.is_alive() and time.time() < deadline:
        time.sleep(0.1)
    app.run()
    assert not app.exception, app.exception


def make_version(home, name):
    """A published version: here, a copy of the demo captioner's checkpoint."""
    shutil.copytree(demo_model_dir("caption"), home / "models" / name)
    (home / "models" / name / "train_args.json").write_text(json.dumps({"created": "2026-11-22", "base": "demo", "rows_used": 3}))


def caption_version(app):
    app.file_uploader[0].set_value(("c.png", zoo.encode(zoo.demo("circle", "red"), "PNG"), "image/png")).run()
    line = [c.value for c in app.caption if " · version " in c.value][0]
    return line.split(" · version ")[1]
