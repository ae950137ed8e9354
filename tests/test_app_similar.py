"""The caption page's fix-similar in AppTest, and data shown as plain text on the caption and search pages."""

import json
import html
import re

import pytest
from markdown_it import MarkdownIt

from captioner.feedback import FeedbackLog
from conftest import start_app
from test_similar import CORRECTED, LOOK_ALIKE, REAL_TRIANGLE, RIGHT, WRONG, shape_png

HOSTILE = "**BOLD** [click](https:evil.example).png"
MARKDOWN = MarkdownIt("commonmark").enable(["strikethrough", "table"])


def rendered(markdown: str) -> str:
    """The HTML a Markdown element becomes in the browser."""
    return MARKDOWN.render(markdown)


def shows_literally(markdown: str, text: str) -> bool:
    """True when the element shows text as typed: no bold, no link, the characters all there."""
    out = rendered(markdown)
    return "<strong>" not in out and "<a " not in out and text in html.unescape(re.sub(r"<[^>]+>", "", out))


@pytest.fixture
def app(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_SEARCH_MODEL", "demo")
    return start_app()


def click(app, label, index=0):
    [b for b in app.button if b.label == label][index].click()
    app.run()
    assert not app.exception, app.exception


def test_confirming_one_look_alike_on_the_caption_page_writes_exactly_one_linked_row(app, home, monkeypatch):
    files = [("corrected.png", shape_png(*CORRECTED)), ("look-alike.png", shape_png(*LOOK_ALIKE)),
             ("triangle.png", shape_png(*REAL_TRIANGLE))]  # fmt: skip
    app.file_uploader[0].set_value([(name, data, "image/png") for name, data in files]).run()
    assert [t.value for t in app.text_area] == [WRONG, WRONG, WRONG]
    app.text_area[0].set_value(RIGHT)
    click(app, "Save correction")
    assert len([b for b in app.button if b.label == "Apply the fix"]) == 1  # the real triangle is not offered
    assert any("look-alike.png" in t.value for t in app.text) and any(f"proposed: {RIGHT}" in t.value for t in app.text)
    assert f"look-alike.png: {WRONG}" in [i.alt for e in app.image for i in e.proto.imgs]  # said by a screen reader
    log = FeedbackLog(home / "data")
    [original] = log.read()[0]
    click(app, "Apply the fix")
    app.run()  # a rerun writes nothing more
    rows, problems = log.read()
    assert problems == [] and len(rows) == 2 and "Fix saved, linked to your correction." in [s.value for s in app.success]
    linked = rows[1]
    assert (linked.linked_to, linked.model_output, linked.correction) == (original.id, WRONG, RIGHT)
    assert (home / "data" / linked.image_path).read_bytes() == files[1][1]
    assert not [b for b in app.button if b.label == "Apply the fix"]  # confirmed: no second press to make
    assert [t.value for t in app.text_area][:2] == [RIGHT, RIGHT]  # the look-alike's own card shows its fix
    assert "Fixed like your correction of a look-alike (Apply the fix)." in [s.value for s in app.success]
    looks_right = [b for b in app.button if b.label == "Looks right"]
    assert looks_right[0].disabled and looks_right[1].disabled and not looks_right[2].disabled  # no confirming over it
    import captioner.caption

    offered = {}
    real = captioner.caption.format_captions
    monkeypatch.setattr(captioner.caption, "format_captions", lambda rows, fmt, **kw: offered.setdefault(fmt, real(rows, fmt, **kw)))
    app.run()  # what the page hands its download button now
    assert [json.loads(line)["correction"] for line in offered["jsonl"].splitlines()] == [RIGHT, RIGHT, None]


def test_a_markdown_file_name_shows_literally_on_the_caption_pages_error_line(app):
    app.file_uploader[0].set_value([(HOSTILE, b"not a picture", "image/png")]).run()
    assert not app.exception, app.exception
    [error] = app.error
    assert shows_literally(error.value, f"{HOSTILE}: not an image")


def test_a_markdown_file_name_shows_literally_in_a_search_result(home, monkeypatch, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / HOSTILE).write_bytes(shape_png(*CORRECTED))
    monkeypatch.setenv("CAPTIONER_GALLERY", str(gallery))
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_SEARCH_MODEL", "demo")
    search = start_app("pages/search.py")
    click(search, "Update index")
    search.text_input[0].set_value("a red star").run()
    assert not search.exception, search.exception
    assert any(t.value.endswith(f" · {HOSTILE}") for t in search.text)  # st.text: never Markdown
    markdown = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in getattr(search, kind)]
    assert [m for m in markdown if "BOLD" in m and not shows_literally(m, HOSTILE)] == []


def test_a_look_alike_whose_caption_was_already_confirmed_here_is_not_offered(app, home):
    files = [("corrected.png", shape_png(*CORRECTED)), ("look-alike.png", shape_png(*LOOK_ALIKE))]
    app.file_uploader[0].set_value([(name, data, "image/png") for name, data in files]).run()
    click(app, "Looks right", 1)  # the person says the look-alike's caption is right as it stands
    app.text_area[0].set_value(RIGHT)
    click(app, "Save correction")
    assert not [b for b in app.button if b.label == "Apply the fix"]
    assert any("No look-alike" in c.value for c in app.caption)


def test_applying_the_fix_to_a_look_alike_fixes_its_copy_under_another_name_too(app, home):
    look_alike = shape_png(*LOOK_ALIKE)
    files = [("corrected.png", shape_png(*CORRECTED)), ("look-alike.png", look_alike), ("look-alike copy.png", look_alike)]
    app.file_uploader[0].set_value([(name, data, "image/png") for name, data in files]).run()
    app.text_area[0].set_value(RIGHT)
    click(app, "Save correction")
    click(app, "Apply the fix")  # one offer: the log holds the picture once
    assert [t.value for t in app.text_area] == [RIGHT, RIGHT, RIGHT]
    assert [b.disabled for b in app.button if b.label == "Looks right"] == [True, True, True]
    assert len(FeedbackLog(home / "data").read()[0]) == 2
