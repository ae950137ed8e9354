"""The admin page's Retrain tab in AppTest: the options as a user types them, and what a run says while it works."""

import time

import pytest

from captioner import retrain
from captioner.settings import Settings

from conftest import needs, start_app
from test_admin_page import login


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
