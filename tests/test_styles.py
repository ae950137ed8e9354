"""Caption styles: choosing one, the demo rewriter on fresh demo images, streaming, the CLI's "styled" output,
and the caption page's styled caption with its own correction (task style, never BLIP's training data)."""

import json

import pytest

import images_zoo as zoo
from captioner.__main__ import main
from captioner.demo.style_quality import keeps_words, style_accuracy
from captioner.feedback import FeedbackLog
from captioner.loading import serve
from captioner.models import ModelError, load_captioner, load_chat_model, load_style_model
from captioner.restyle import detail_facts, restyle, restyle_batch
from captioner.review import set_status
from captioner.settings import Settings
from captioner.styles import INSTRUCTIONS, StyleError, rewrite_messages, style_for
from conftest import at_a_real_pace, needs, run_cli, start_app
from finetune.data import approved_examples
from torch_threads import one_torch_thread  # noqa: F401 (autouse: one torch thread here)


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("home"), device="cpu")
    return (load_captioner("demo", settings), load_chat_model("demo", settings),
            load_style_model("demo", settings))  # fmt: skip


def test_a_style_is_a_known_name_or_an_instruction_of_ones_own():
    assert style_for("social").instruction == INSTRUCTIONS["social"] and style_for().plain
    assert style_for(instruction="  Write it   as a haiku ").label == "Write it as a haiku"
    for bad, message in [(dict(name="grumpy"), "unknown style 'grumpy'"), (dict(instruction="  "), "instruction is empty"),
                         (dict(name="poetic", instruction="x"), "not both"), (dict(instruction="x" * 501), "over the 500")]:
        with pytest.raises(StyleError, match=message):
            style_for(**bad)


def test_the_demo_rewriter_keeps_the_colour_and_shape_of_fresh_images(demo_models):
    accuracy, misses = style_accuracy(*demo_models, n=50, seed=5151)
    assert accuracy >= 0.95, misses[:10]


def test_a_styled_caption_streams_and_says_what_the_batch_says(demo_models, monkeypatch):
    _, _, rewriter = demo_models
    at_a_real_pace(monkeypatch, rewriter.model)
    for name in INSTRUCTIONS:
        stream = restyle(rewriter, "a purple heart", style_for(name))
        chunks = list(stream)
        assert len(chunks) > 3 and keeps_words(stream.text, "purple", "heart"), stream.text
        assert stream.text.strip() == restyle_batch(rewriter, ["a purple heart", "a red circle"], style_for(name))[0]
    assert restyle(rewriter, "a red circle", style_for("plain")).read() == "a red circle"


def test_detailed_sends_the_qa_models_answers_with_the_caption(demo_models):
    _, qa, rewriter = demo_models
    facts = detail_facts(qa, [zoo.demo("triangle", "yellow")])[0]
    assert facts == [("what color is the shape?", "yellow"), ("what shape is it?", "triangle")]
    request = rewrite_messages("a yellow triangle", style_for("detailed"), facts)
    assert request[1]["content"] == "Caption: a yellow triangle\nFacts:\n- what color is the shape? yellow\n- what shape is it? triangle"
    assert keeps_words(restyle(rewriter, "a yellow triangle", style_for("detailed"), facts).read(), "yellow", "triangle")


def test_the_default_rewriter_falls_back_to_the_demo_offline_and_a_captioner_is_refused(settings, tiny_blip_dir):
    served = serve("style", settings)
    assert served.model.name == "demo" and "SmolLM2" in served.fallback_reason and "caption rewriter" in served.fallback_reason
    with pytest.raises(ModelError, match="needs a text chat model"):
        load_style_model(str(tiny_blip_dir), settings)


def test_caption_cli_gives_styled_beside_caption(home, tmp_path, demo_png, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "a.png").write_bytes(demo_png("circle", "red"))
    (folder / "b.png").write_bytes(demo_png("square", "blue"))
    (folder / "c.png").write_bytes(b"\x89PNG broken")
    one_thread = {"OMP_NUM_THREADS": "1"}
    done = run_cli("caption", folder, "--model", "demo", "--style", "social", "--style-model", "demo", env=one_thread)
    assert done.returncode == 1 and "c.png" in done.stderr  # the broken file, and only it
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [list(line)[:3] for line in lines[:2]] == [["path", "caption", "styled"]] * 2
    assert lines[0]["caption"] == "a red circle" and keeps_words(lines[0]["styled"], "red", "circle")
    assert keeps_words(lines[1]["styled"], "blue", "square") and "#" in lines[1]["styled"]
    assert lines[2]["styled"] is None and lines[2]["error"]
    assert main(["caption", str(folder / "a.png"), "--model", "demo", "--style-instruction", "Make it a haiku",
                 "--style-model", "demo", "--format", "csv"]) == 0  # in-process: one more interpreter start saved
    out, err = capsys.readouterr()
    assert "demo rewriter knows only the built-in styles" in err
    assert out.splitlines()[0] == "path,caption,styled,error,score,model,model_version"
    both = run_cli("caption", folder / "a.png", "--style", "poetic", "--style-instruction", "x", env=one_thread)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_the_caption_page_streams_a_styled_caption_and_logs_its_correction_as_a_style_row(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_STYLE_MODEL", "demo")
    app = start_app()
    app.selectbox(key="caption_style").set_value("alt-text").run()
    app.file_uploader[0].set_value([("pic.png", zoo.encode(zoo.demo("circle", "green"), "PNG"), "image/png")]).run()
    assert not app.exception, app.exception
    plain, styled = app.text_area[0], app.text_area[1]
    assert plain.value == "a green circle" and keeps_words(styled.value, "green", "circle")
    assert any("Rewriting with `demo`" in c.value for c in app.caption)
    styled.set_value("A green circle on white paper.")
    [b for b in app.button if b.label == "Save styled correction"][0].click().run()
    rows, problems = FeedbackLog(home / "data").read()
    assert problems == [] and len(rows) == 1
    row = rows[0]
    assert (row.task, row.prompt, row.correction, row.model) == ("style", "alt-text", "A green circle on white paper.", "demo")
    assert json.loads(row.settings)["caption"] == "a green circle"
    assert "Styled correction saved." in [s.value for s in app.success]
    log = FeedbackLog(home / "data")
    assert set_status(log, {row.id}, "approved", "admin") == 1
    assert approved_examples(log)[0] == []  # an approved styled caption never becomes BLIP training data


def test_detailed_asks_the_qa_model_picked_on_the_chat_page(home, monkeypatch, tiny_vqa_dir):
    """The facts come from the Q&A model this session chats with, not the default one loaded in its place (which
    would also push the picked model out of the shared cache, to be loaded again on the chat page)."""
    needs("streamlit")  # before the page module's import, which imports it (the GPU device image has none)
    import pages.ui.styles as page_styles

    for name, value in {"CAPTIONER_CAPTION_MODEL": "demo", "CAPTIONER_STYLE_MODEL": "demo", "CAPTIONER_QA_MODEL": "demo",
                        "CAPTIONER_CHAT_MODELS": str(tiny_vqa_dir)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    asked, facts = [], page_styles.detail_facts
    monkeypatch.setattr(page_styles, "detail_facts", lambda qa, images: asked.append(qa.name) or facts(qa, images))
    app = start_app("pages/chat.py")
    app.sidebar.selectbox[0].set_value(str(tiny_vqa_dir)).run()
    assert any(str(tiny_vqa_dir) in c.value for c in app.sidebar.caption)
    app.switch_page("pages/caption.py").run()
    app.selectbox(key="caption_style").set_value("detailed").run()
    app.file_uploader[0].set_value([("pic.png", zoo.encode(zoo.demo("circle", "green"), "PNG"), "image/png")]).run()
    assert not app.exception, app.exception
    assert asked == [str(tiny_vqa_dir)]


# Gemma's (and Mistral's) templates refuse a system turn: the instruction must then travel in the user's turn.
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_rewriter_whose_template_refuses_a_system_turn_still_gets_the_instruction(settings, tmp_path, monkeypatch):
    import shutil

    from captioner.demo import demo_model_dir

    folder = shutil.copytree(demo_model_dir("style"), tmp_path / "no-system-rewriter")
    (folder / "chat_template.jinja").write_text(NO_SYSTEM_TEMPLATE)
    rewriter = load_style_model(str(folder), settings)
    seen, generate = [], rewriter.model.generate

    def recording(*args, **kwargs):
        seen.append(rewriter.processor.decode(kwargs["input_ids"][-1], skip_special_tokens=True))
        return generate(*args, **kwargs)

    monkeypatch.setattr(rewriter.model, "generate", recording)
    streamed = restyle(rewriter, "a red circle", style_for("social")).read()
    batched = restyle_batch(rewriter, ["a blue square", "a red circle"], style_for("social"))
    assert streamed == batched[1]
    assert len(seen) == 2 and all(INSTRUCTIONS["social"] in prompt and "Caption: a red circle" in prompt for prompt in seen)


def test_the_cli_loads_its_rewriter_before_captioning_and_detailed_goes_on_without_a_qa_model(home, tmp_path):
    picture = tmp_path / "p.png"
    picture.write_bytes(zoo.encode(zoo.demo("circle", "blue"), "PNG"))
    env = {"CAPTIONER_STYLE_MODEL": "demo", "CAPTIONER_QA_MODEL": "./no/such/qa-model"}
    done = run_cli("caption", picture, "--model", "demo", "--style", "detailed", env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    [line] = [json.loads(line) for line in done.stdout.splitlines()]
    assert line["caption"] == "a blue circle" and line["styled"]  # restyled, without the Q&A model's answers
    assert "the Q&A model that 'detailed' asks cannot be loaded" in done.stderr
    gone = run_cli("caption", picture, "--model", "demo", "--style", "poetic", "--style-model", "./no/such/rewriter")
    assert gone.returncode == 2 and gone.stdout == "" and "no/such/rewriter" in gone.stderr  # before any captioning


def test_an_empty_caption_is_not_restyled_into_one_made_up(demo_models):
    _, _, rewriter = demo_models
    for empty in ("", "   "):
        with pytest.raises(StyleError, match="no caption to restyle"):
            restyle(rewriter, empty, style_for("social"))
        styled = restyle_batch(rewriter, ["a red circle", empty], style_for("social"))
        assert "red circle" in styled[0].lower() and styled[1] == ""  # nothing to restyle stays nothing
