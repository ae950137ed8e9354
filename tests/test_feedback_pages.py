"""What the caption page says when the feedback log cannot take a correction: one clear line, no traceback."""

import pytest

import images_zoo as zoo
from conftest import start_app


@pytest.fixture
def app(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    app = start_app()
    app.file_uploader[0].set_value([("circle.png", zoo.encode(zoo.demo("circle", "red"), "PNG"), "image/png")])
    app.run()
    assert app.text_area[0].value == "a red circle"
    return app


def save(app, text):
    app.text_area[0].set_value(text)
    [b for b in app.button if b.label == "Save correction"][0].click()
    app.run()
    assert not app.exception, app.exception
    return [e.value for e in app.error]


def test_a_log_locked_too_long_is_one_message_on_the_caption_page(app, home, monkeypatch):
    from filelock import FileLock

    import captioner.feedback as feedback

    monkeypatch.setattr(feedback, "LOCK_TIMEOUT_S", 0.2)
    (home / "data").mkdir(exist_ok=True)
    with FileLock(str(home / "data" / "feedback.csv.lock"), thread_local=False):
        errors = save(app, "a crimson circle")
    assert len(errors) == 1 and "the feedback log is busy" in errors[0] and "try again" in errors[0]
    assert not (home / "data" / "feedback.csv").exists()
