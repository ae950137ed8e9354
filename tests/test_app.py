"""The caption page in Streamlit's AppTest: upload, caption, correct, confirm, never a duplicate row."""

import json
import re

import pytest

import images_zoo as zoo
from captioner.feedback import FeedbackLog
from captioner.images import ImageInput
from conftest import start_app
from page_text import shown


@pytest.fixture
def app(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    return start_app()


def button(app, label, index=0):
    return [b for b in app.button if b.label == label][index]


def upload(app, *files):
    app.file_uploader[0].set_value([(name, data, "image/png") for name, data in files])
    app.run()
    assert not app.exception, app.exception


def rows(home):
    found, problems = FeedbackLog(home / "data").read()
    assert problems == []
    return found


def test_upload_caption_edit_and_save_a_correction(app, home):
    upload(app, ("circle.png", zoo.encode(zoo.demo("circle", "red"), "PNG")))
    assert app.text_area[0].value == "a red circle"
    assert [i.alt for e in app.image for i in e.proto.imgs] == ["circle.png: a red circle"]
    assert any("demo" in c.value and "version demo-" in c.value for c in app.caption)
    app.text_area[0].set_value("a crimson circle")
    button(app, "Save correction").click()
    app.run()
    saved = rows(home)
    assert len(saved) == 1
    assert (saved[0].model_output, saved[0].correction, saved[0].task) == ("a red circle", "a crimson circle", "caption")
    assert saved[0].model == "demo" and saved[0].model_version.startswith("demo-")
    assert (home / "data" / saved[0].image_path).exists()
    assert "Correction saved" in app.success[0].value
    app.run()  # the next run draws the card with what was saved
    assert [i.alt for e in app.image for i in e.proto.imgs] == ["circle.png: a crimson circle"]  # what a screen reader says


def test_the_page_captions_through_the_shared_engine_and_keeps_the_score(app, home):
    from captioner.engine import attach

    upload(app, ("circle.png", zoo.encode(zoo.demo("circle", "green"), "PNG")))
    engines = [e for e in attach._ENGINES.values() if e.model_name == "demo" and not e.closed]
    assert len(engines) == 1 and engines[0].images_run >= 1, "the page did not caption through the demo's engine"
    shown = next(c.value for c in app.caption if "confidence" in c.value)
    score = float(shown.split("confidence ")[1].split(" ")[0])
    assert -5 < score <= 0
    button(app, "Looks right").click()
    app.run()
    saved = rows(home)
    assert len(saved) == 1 and saved[0].score and abs(float(saved[0].score) - score) <= 0.005


def test_looks_right_logs_a_confirmation(app, home):
    upload(app, ("square.png", zoo.encode(zoo.demo("square", "green"), "PNG")))
    button(app, "Looks right").click()
    app.run()
    saved = rows(home)
    assert len(saved) == 1 and saved[0].correction == saved[0].model_output == "a green square"
    assert "Confirmation saved" in app.success[0].value


def test_pressing_save_twice_logs_one_row(app, home):
    upload(app, ("triangle.png", zoo.encode(zoo.demo("triangle", "blue"), "PNG")))
    app.text_area[0].set_value("a blue pyramid")
    button(app, "Save correction").click()
    app.run()
    button(app, "Save correction").click()
    app.run()
    app.run()  # a plain rerun writes nothing either
    assert len(rows(home)) == 1
    assert "already in the log" in app.success[0].value


def test_a_bad_file_gets_one_error_and_the_others_still_caption(app, home):
    upload(
        app,
        ("good.png", zoo.encode(zoo.demo("circle", "yellow"), "PNG")),
        ("notes.jpg", b"this is text, not a picture"),
        ("cut.png", zoo.truncated(zoo.encode(zoo.demo(side=300), "PNG"))),
        ("also-good.png", zoo.encode(zoo.demo("square", "red"), "PNG")),
    )
    errors = [re.sub(r"\\(.)", r"\1", e.value) for e in app.error]  # as shown: the escaped file names undone
    assert len(errors) == 2
    assert errors[0].startswith("notes.jpg: not an image") and errors[1].startswith("cut.png: truncated")
    assert [t.value for t in app.text_area] == ["a yellow circle", "a red square"]


def test_a_correction_shows_on_every_copy_of_the_picture_and_none_can_confirm_the_mistake_over_it(app, home, monkeypatch):
    """The same picture uploaded under two names is one image in the log: correcting either copy corrects both cards
    (their boxes, their Looks right, the downloads), so the other copy cannot log the wrong caption after the fix."""
    from captioner import caption

    offered = {}
    real = caption.format_captions
    monkeypatch.setattr(caption, "format_captions", lambda rows, fmt, **kw: offered.setdefault(fmt, real(rows, fmt, **kw)))
    circle = zoo.encode(zoo.demo("circle", "red"), "PNG")
    upload(app, ("IMG_0001.png", circle), ("square.png", zoo.encode(zoo.demo("square", "blue"), "PNG")), ("IMG_0001 (1).png", circle))
    app.text_area[2].set_value("a scarlet circle")
    button(app, "Save correction", 2).click().run()
    assert not app.exception, app.exception
    assert [t.value for t in app.text_area] == ["a scarlet circle", "a blue square", "a scarlet circle"]
    assert [b.disabled for b in app.button if b.label == "Looks right"] == [True, False, True]
    assert [s.value for s in app.success].count("Correction saved.") == 2
    assert not any("Edited since it was saved" in c.value for c in app.caption)
    assert [(r.model_output, r.correction) for r in rows(home)] == [("a red circle", "a scarlet circle")]
    offered.clear()
    app.run()
    assert [json.loads(line)["correction"] for line in offered["jsonl"].splitlines()] == ["a scarlet circle", None, "a scarlet circle"]


def test_demo_samples_button_and_generation_settings(app, home):
    button(app, "Make demo samples").click()
    app.run()
    assert len(app.text_area) == 4 and all(t.value.startswith("a ") for t in app.text_area)
    app.text_input[0].set_value("a")  # caption prefix
    app.slider[0].set_value(1)  # beams
    app.run()
    assert not app.exception and all(t.value.startswith("a ") for t in app.text_area)


def test_a_session_keeps_a_bounded_memory_of_results_with_one_thumbnail_per_image(app, home):
    from pages.ui.results import KEPT_PER_IMAGE

    circle, square = zoo.encode(zoo.demo("circle", "red"), "PNG"), zoo.encode(zoo.demo("square", "blue"), "PNG")
    upload(app, ("circle.png", circle), ("square.png", square))
    for beams in (1, 2, 4, 5, 3):  # five settings: each captions both images again
        app.slider[0].set_value(beams)
        app.run()
        assert [t.value for t in app.text_area] == ["a red circle", "a blue square"]
    kept = app.session_state["captions"]
    assert len(kept) == 2 * KEPT_PER_IMAGE
    thumbnails = {(key[1], id(result.thumbnail)) for key, result in kept.items()}
    assert {name for name, _ in thumbnails} == {"circle.png", "square.png"} and len(thumbnails) == 2
    app.slider[0].set_value(2)  # kept: back at once, with the same caption
    app.run()
    assert [t.value for t in app.text_area] == ["a red circle", "a blue square"]
    upload(app, ("square.png", square))  # the circle removed: its results and thumbnail go with it
    assert {key[1] for key in app.session_state["captions"]} == {"square.png"}
    assert list(app.session_state["thumbnails"]) == [(ImageInput("square.png", square).sha256, "square.png")]


def test_a_run_cut_short_while_captioning_keeps_the_captions_done(app, home, monkeypatch):
    """A file added, a click or Stop while many images caption ends that run: the captions it got are kept, and the
    next run captions only the rest (it began again from the first image)."""
    import streamlit as st

    from captioner import caption

    real, calls = caption.caption_stream, []

    def cut_after_two(loaded, inputs, options, **job):  # the person's click lands after two captions came
        calls.append([item.name for item in inputs])
        for n, result in enumerate(real(loaded, inputs, options, **job)):
            yield result
            if n == 1 and len(calls) == 1:
                st.stop()

    monkeypatch.setattr(caption, "caption_stream", cut_after_two)
    files = [(f"{color}.png", zoo.encode(zoo.demo("circle", color), "PNG")) for color in ("red", "green", "blue", "yellow")]
    app.file_uploader[0].set_value([(name, data, "image/png") for name, data in files]).run()
    assert not app.text_area  # cut short
    app.run()
    assert calls == [[name for name, _ in files], ["blue.png", "yellow.png"]]
    assert [t.value for t in app.text_area] == ["a red circle", "a green circle", "a blue circle", "a yellow circle"]
    assert len(app.session_state["thumbnails"]) == 4


def test_offline_default_falls_back_to_demo_and_the_sidebar_says_so(home, monkeypatch):
    monkeypatch.delenv("CAPTIONER_CAPTION_MODEL", raising=False)
    app = start_app()
    warnings = [shown(w.value) for w in app.sidebar.warning]
    assert any("Fallback to the demo captioner" in w and "Salesforce/blip-image-captioning-base" in w for w in warnings)
    upload(app, ("circle.png", zoo.encode(zoo.demo("circle", "blue"), "PNG")))
    assert app.text_area[0].value == "a blue circle"


def test_uploads_settings_and_saved_notices_are_there_after_a_visit_to_another_page(app, home):
    circle, square = zoo.encode(zoo.demo("circle", "red"), "PNG"), zoo.encode(zoo.demo("square", "blue"), "PNG")
    upload(app, ("circle.png", circle), ("square.png", square))
    app.slider(key="gen_beams").set_value(1).run()
    app.text_area[0].set_value("a scarlet circle")
    button(app, "Save correction").click().run()
    for page in ("pages/chat.py", "pages/search.py", "pages/caption.py"):  # Streamlit empties the uploader meanwhile
        app.switch_page(page).run()
        assert not app.exception, app.exception
    assert [t.value for t in app.text_area] == ["a scarlet circle", "a blue square"]
    assert app.slider(key="gen_beams").value == 1 and "Correction saved." in app.success[0].value
    assert any("2 image(s) uploaded earlier" in c.value for c in app.caption)
    upload(app, ("triangle.png", zoo.encode(zoo.demo("triangle", "green"), "PNG")))  # added to the kept ones
    assert [t.value for t in app.text_area] == ["a scarlet circle", "a blue square", "a green triangle"]
    upload(app)  # the person removes the triangle with the uploader's x: only it goes
    assert [t.value for t in app.text_area] == ["a scarlet circle", "a blue square"]
    button(app, "Clear uploads").click().run()
    assert not app.text_area and "Upload images" in app.info[0].value


def test_the_downloads_carry_the_saved_corrections_and_a_changed_text_is_not_called_saved(app, home, monkeypatch):
    import csv
    import io
    import json

    from captioner import caption

    offered = {}

    def recorded(rows, fmt, **kwargs):  # what the page hands its download buttons
        offered[fmt] = real(rows, fmt, **kwargs)
        return offered[fmt]

    real = caption.format_captions
    monkeypatch.setattr(caption, "format_captions", recorded)
    upload(app, ("circle.png", zoo.encode(zoo.demo("circle", "red"), "PNG")), ("sq.png", zoo.encode(zoo.demo("square", "blue"), "PNG")))
    app.text_area[0].set_value("a cobalt blue  disc\n")
    button(app, "Save correction").click().run()
    button(app, "Looks right", 1).click().run()
    assert [row.correction for row in rows(home)] == ["a cobalt blue disc", "a blue square"]  # tidied as logged
    table = list(csv.DictReader(io.StringIO(offered["csv"])))
    assert [(r["caption"], r["correction"]) for r in table] == [("a red circle", "a cobalt blue disc"), ("a blue square", "a blue square")]
    lines = [json.loads(line) for line in offered["jsonl"].splitlines()]
    assert [line["correction"] for line in lines] == ["a cobalt blue disc", "a blue square"]
    app.text_area[0].set_value("a cobalt disc").run()  # typed after the save: not what was logged
    assert "Correction saved." not in [s.value for s in app.success]
    assert any("Edited since it was saved" in c.value for c in app.caption)
    confidence = next(c.value for c in app.caption if "confidence" in c.value)
    assert "-0.00" not in confidence


def test_text_typed_and_not_saved_stays_when_a_setting_changes_the_caption_or_another_page_is_visited(app, home):
    """A person types a correction, then tries fewer max tokens before saving: the box went back to the new caption and
    the typing was lost. It stays, per picture; a box left as it was follows the caption of the new settings."""
    upload(app, ("circle.png", zoo.encode(zoo.demo("circle", "red"), "PNG")), ("sq.png", zoo.encode(zoo.demo("square", "blue"), "PNG")))
    app.text_area[0].set_value("a crimson circle")
    app.slider(key="gen_max_new_tokens").set_value(1).run()  # the captions become "a"
    assert [t.value for t in app.text_area] == ["a crimson circle", "a"]
    app.slider(key="gen_max_new_tokens").set_value(30).run()
    assert [t.value for t in app.text_area] == ["a crimson circle", "a blue square"]
    for page in ("pages/chat.py", "pages/caption.py"):
        app.switch_page(page).run()
        assert not app.exception, app.exception
    assert [t.value for t in app.text_area] == ["a crimson circle", "a blue square"]
    button(app, "Save correction").click().run()
    assert [(row.model_output, row.correction) for row in rows(home)] == [("a red circle", "a crimson circle")]
    assert [t.value for t in app.text_area] == ["a crimson circle", "a blue square"] and "Correction saved." in app.success[0].value


def test_text_typed_for_an_image_then_removed_is_gone_when_it_is_uploaded_again(app, home):
    """Removing the last image kept its box's unsaved typing, which came back when the picture was uploaded again."""
    circle = ("circle.png", zoo.encode(zoo.demo("circle", "red"), "PNG"))
    upload(app, circle)
    app.text_area[0].set_value("typed, then thrown away").run()
    upload(app)  # the uploader's x: no image left
    assert not app.text_area
    upload(app, circle)
    assert [t.value for t in app.text_area] == ["a red circle"]


def test_the_progress_counts_files_that_could_not_be_read_apart_from_the_captioned(home):
    """A folder with broken files: the progress said "Captioned 3 of 3" while only 2 cards came; it counts them apart."""
    from collections import Counter

    from captioner.caption import caption_images
    from captioner.models import load_captioner
    from captioner.settings import Settings
    from pages.ui.results import outcome, progress_text

    inputs = [ImageInput("a.png", zoo.encode(zoo.demo("circle", "red"), "PNG")), ImageInput("broken.png", b"\x89PNG\r\n\x1a\n"),
              ImageInput("b.png", zoo.encode(zoo.demo("square", "blue"), "PNG")), ImageInput("notes.jpg", b"plain text")]
    results = caption_images(load_captioner("demo", Settings.from_env()), inputs)
    outcomes = Counter()
    said = []
    for result in results:
        outcomes[outcome(result)] += 1
        said.append(progress_text(outcomes, len(inputs)))
    assert said == ["1 of 4 captioned", "1 of 4 captioned, 1 could not be read", "2 of 4 captioned, 1 could not be read",
                    "2 of 4 captioned, 2 could not be read"]


def test_the_downloads_say_which_model_version_wrote_each_caption_and_follow_a_hot_swap(home, monkeypatch):
    """The cards said "version v0001", but a downloaded CSV or JSONL did not: two downloads around a hot-swap could not
    be told apart. Each row now carries model and model_version, as its card shows them."""
    import csv
    import io
    import shutil

    from captioner import caption, registry
    from captioner.models import demo_model_dir
    from conftest import start_app

    for version in ("v0001", "v0002"):
        shutil.copytree(demo_model_dir("caption"), home / "models" / version)
    registry.activate(home / "models", "v0001")
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "active")
    offered = {}
    real = caption.format_captions
    monkeypatch.setattr(caption, "format_captions", lambda rows, fmt, **kw: offered.__setitem__(fmt, real(rows, fmt, **kw)) or offered[fmt])
    app = start_app()
    upload(app, ("circle.png", zoo.encode(zoo.demo("circle", "red"), "PNG")), ("bad.png", b"not a picture"))
    for live in ("v0001", "v0002"):
        assert any(f"version {live}" in c.value for c in app.caption)
        table = list(csv.DictReader(io.StringIO(offered["csv"])))
        assert [(r["path"], r["model"], r["model_version"]) for r in table] == [("circle.png", "active", live), ("bad.png", "active", live)]
        lines = [json.loads(line) for line in offered["jsonl"].splitlines()]
        assert [(line["model"], line["model_version"]) for line in lines] == [("active", live)] * 2
        registry.activate(home / "models", "v0002")  # a new version goes live (as finetune publishes one)
        app.run()
