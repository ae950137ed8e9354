"""The Versions tab in a real headless Chromium: the admin sees the version being checked while it is."""

from __future__ import annotations

import pytest

from admin_app import make_version
from conftest import needs
from test_browser import CHROMIUM, admin_page, browser, settle, streamlit_app  # noqa: F401 (browser: a fixture)

pytestmark = pytest.mark.browser


def test_activate_shows_the_check_running_then_its_outcome_in_chromium(tmp_path, browser):  # noqa: F811
    import os

    from playwright.sync_api import expect

    needs("streamlit")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (`make test` installs it with apt-get)")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    make_version(home, "v0001")
    with streamlit_app(home) as url:
        page = admin_page(browser, url, home)
        page.get_by_role("tab", name="Versions").click()
        page.get_by_role("button", name="Activate v0001").click()
        expect(page.get_by_text("Checking v0001: loading it and captioning the check set…")).to_be_visible()
        expect(page.get_by_text("v0001 passed its check")).to_be_visible()
        expect(page.get_by_text("v0001 is live; every session's next caption uses it.")).to_be_visible()
        settle(page)
        page.close()
