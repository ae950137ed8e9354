"""The OpenAI-compatible chat backend against a real `transformers serve` (the tiny LLaVA as its model), and
the ways a server fails: down, refusing the key, never answering, lacking the model."""

from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image

import images_zoo as zoo
from captioner import endpoint
from captioner.chat import ChatError, Turn, answer
from captioner.demo import demo_model_dir
from captioner.demo.style_quality import keeps_words
from captioner.models import ModelError, load_chat_model, load_style_model
from captioner.restyle import restyle, restyle_batch
from captioner.styles import style_for
from captioner.settings import Settings
from chat_servers import (broken_stream_server, closed_port_url, key_refusing_server, serving, silent_server, slow_echo_server,
                          strict_server, transformers_serve)  # fmt: skip
from conftest import needs, run_cli, start_app
from page_text import shown
from test_chat_page import ask, conversation, with_image
from torch_threads import one_torch_thread  # noqa: F401 (autouse: one torch thread here)

PICTURE = Image.new("RGB", (60, 40), (220, 30, 30))
needs("openai")  # the backend's client: without it (the GPU device image) this whole module is skipped


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llava_dir):
    """One server for the module: starting one costs seconds, so every test here shares it."""
    needs("fastapi")  # transformers serve's extras
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(log, preload=str(tiny_llava_dir)) as base_url:
        yield base_url


@pytest.fixture
def on_server(server, monkeypatch, home, tiny_llava_dir):
    """Settings pointing at the server, and the spec of the tiny LLaVA served there."""
    monkeypatch.setenv("OPENAI_BASE_URL", server)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return Settings.from_env(), f"openai:{tiny_llava_dir}"


def test_the_conversation_goes_as_messages_with_the_image_as_a_data_url():
    messages = endpoint.conversation(PICTURE, [("what is it?", "a dog"), ("where?", "on grass")], "what color?")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    image, text = messages[0]["content"]
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,") and text["text"] == "what is it?"
    assert [m["content"] for m in messages[1:]] == ["a dog", "where?", "on grass", "what color?"]


def test_an_image_goes_at_most_768_pixels_long_and_never_thinner_than_one_fiftieth_of_that(on_server):
    import base64
    import io

    settings, spec = on_server
    loaded = load_chat_model(spec, settings)
    for size, sent in [((3000, 1), (768, 16)), ((1, 40), (1, 40)), ((2, 200), (4, 200)), ((5000, 4000), (768, 614))]:
        picture = Image.new("RGB", size, (40, 70, 220))
        url = endpoint.conversation(picture, [], "what is it?")[0]["content"][0]["image_url"]["url"]
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == sent
        assert answer(loaded, picture, [], "what is it?", max_new_tokens=3).read()  # the server takes it


def test_an_answer_streams_from_the_server_and_can_be_left_early(on_server):
    settings, spec = on_server
    loaded = load_chat_model(spec, settings)
    assert loaded.family == "openai" and loaded.version == settings.openai_base_url.split("/")[2]
    stream = answer(loaded, PICTURE, [Turn("what is it?", "a red circle")], "is it round?", max_new_tokens=12)
    chunks = list(stream)
    assert len(chunks) > 1 and stream.text == "".join(chunks) and stream.text.strip()
    before = answer(loaded, PICTURE, [], "and now?", max_new_tokens=6).read()
    early = answer(loaded, PICTURE, [], "tell me everything", max_new_tokens=200)
    next(iter(early))
    early.close()  # the request ends; the server goes on serving
    assert answer(loaded, PICTURE, [], "and now?", max_new_tokens=6).read() == before


def test_regenerate_draws_a_new_answer_from_transformers_serve(on_server):
    """transformers serve takes do_sample from the model's generation config (the tiny LLaVA's, as most, does not
    sample) and ignores a temperature above 0 unless the request asks for sampling as it understands it."""
    settings, spec = on_server
    loaded = load_chat_model(spec, settings)
    likeliest = {answer(loaded, PICTURE, [], "what is it?", max_new_tokens=12).read() for _ in range(2)}
    assert len(likeliest) == 1  # a first answer is the likeliest one, every time
    drawn = [answer(loaded, PICTURE, [], "what is it?", max_new_tokens=12, sample=True).read() for _ in range(3)]
    assert len(set(drawn)) == 3 and not likeliest & set(drawn), (likeliest, drawn)  # random weights: any draw differs
    assert loaded.model.takes_sample_fields


def test_a_server_that_refuses_the_sampling_field_answers_a_redraw_without_it_from_then_on(home, monkeypatch):
    bodies = []
    with strict_server(bodies) as url:
        loaded = load_chat_model("openai:m", settings_for(monkeypatch, url))
        bodies.clear()
        assert answer(loaded, PICTURE, [], "what is it?").read() == "likeliest answer"
        assert "generation_config" not in bodies[-1] and bodies[-1]["temperature"] == 0
        assert answer(loaded, PICTURE, [], "what is it?", sample=True).read() == "drawn answer"
        assert ["generation_config" in body for body in bodies[1:]] == [True, False]  # refused once, then sent without
        assert answer(loaded, PICTURE, [], "what is it?", sample=True).read() == "drawn answer"
        assert len(bodies) == 4 and "generation_config" not in bodies[-1] and bodies[-1]["temperature"] == 0.7


def test_the_answers_length_cap_goes_as_max_tokens_or_as_the_server_asks(home, monkeypatch, tmp_path):
    """Ollama reads max_tokens and ignores max_completion_tokens (an answer would run on); OpenAI's reasoning models
    refuse max_tokens and ask for max_completion_tokens."""
    bodies = []
    with strict_server(bodies, reads="max_tokens", more=40) as url:  # Ollama's way
        loaded = load_chat_model("openai:m", settings_for(monkeypatch, url))
        assert answer(loaded, PICTURE, [], "what is it?", max_new_tokens=5).read() == "likeliest answer w0 w1 w2"
        assert bodies[-1]["max_tokens"] == 5 and "max_completion_tokens" not in bodies[-1]
        rewriter = load_style_model("openai:m", settings_for(monkeypatch, url))
        assert len(restyle(rewriter, "a red circle", style_for("social")).read().split()) == 42  # under the cap of 96
    bodies = []
    with strict_server(bodies, refused={"max_tokens"}, more=40) as url:  # an OpenAI reasoning model's way
        loaded = load_chat_model("openai:m", settings_for(monkeypatch, url))  # listed: nothing asked yet
        assert answer(loaded, PICTURE, [], "what is it?", max_new_tokens=5).read() == "likeliest answer w0 w1 w2"
        assert answer(loaded, PICTURE, [], "and?", max_new_tokens=5, sample=True).read() == "drawn answer w0 w1 w2"
        assert answer(loaded, PICTURE, [], "and?", max_new_tokens=5, sample=True).read() == "drawn answer w0 w1 w2"
        assert [sorted(set(b) & {"max_tokens", "max_completion_tokens", "generation_config"}) for b in bodies] == [
            ["max_tokens"], ["max_completion_tokens"],  # refused once, by name
            ["generation_config", "max_completion_tokens"], ["max_completion_tokens"],  # refused once: unknown
            ["max_completion_tokens"]]  # fmt: skip


def test_regenerate_on_the_chat_page_draws_a_new_answer_from_the_server(on_server, monkeypatch):
    settings, spec = on_server
    monkeypatch.setenv("CAPTIONER_QA_MODEL", spec)
    app = start_app("pages/chat.py")
    with_image(app)
    ask(app, "what color is the shape?")
    first = conversation(app)[1][1]
    [b for b in app.button if b.label == "Regenerate the last answer"][0].click().run()
    assert not app.exception, app.exception
    assert conversation(app)[0] == ("user", "what color is the shape?") and len(conversation(app)) == 2
    assert conversation(app)[1][1] != first and not any("same answer came again" in shown(i.value) for i in app.info)


def test_ask_streams_an_answer_through_the_server(on_server, tmp_path):
    settings, spec = on_server
    image = tmp_path / "pic.png"
    image.write_bytes(zoo.encode(zoo.demo("circle", "red"), "PNG"))
    done = run_cli("ask", image, "what color is the shape?", "--model", spec, "--max-new-tokens", "8",
                   env={"OPENAI_BASE_URL": settings.openai_base_url})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "Traceback" not in done.stderr
    long = run_cli("ask", image, "why is the sky blue? " * 100, "--model", spec, "--max-new-tokens", "8",
                   env={"OPENAI_BASE_URL": settings.openai_base_url})  # fmt: skip
    assert long.returncode == 0 and long.stdout.strip(), long.stderr  # the question is cut to fit, and it says so
    assert "note: The question was cut to its first" in long.stderr and "to fit the model's context" in long.stderr


def test_the_chat_page_streams_an_answer_through_the_server(on_server, monkeypatch):
    settings, spec = on_server
    monkeypatch.setenv("CAPTIONER_QA_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_CHAT_MODELS", spec)
    app = start_app("pages/chat.py")
    assert spec in app.sidebar.selectbox[0].options
    with_image(app)
    app.sidebar.selectbox[0].set_value(spec).run()
    ask(app, "what color is the shape?")
    assert conversation(app)[0] == ("user", "what color is the shape?")
    assert conversation(app)[1][0] == "assistant" and conversation(app)[1][1].strip()
    assert any(spec in c.value and "127.0.0.1" in c.value for c in app.caption)


def test_a_caption_is_restyled_through_the_server(on_server):
    settings, _ = on_server
    rewriter = load_style_model(f"openai:{demo_model_dir('style')}", settings)  # served, not in-process
    stream = restyle(rewriter, "a purple heart", style_for("social"))
    chunks = list(stream)
    assert len(chunks) > 3 and keeps_words(stream.text, "purple", "heart"), stream.text
    for text, (color, shape) in zip(restyle_batch(rewriter, ["a red circle", "a blue star"], style_for("poetic")),
                                    [("red", "circle"), ("blue", "star")]):  # fmt: skip
        assert keeps_words(text, color, shape), text


def test_detailed_asks_a_servers_qa_model_several_questions_at_once(home, monkeypatch):
    import time

    from captioner.restyle import detail_facts
    from captioner.styles import DETAIL_QUESTIONS

    asked, left = [], []
    with slow_echo_server(0.05, asked, left) as url:
        qa = load_chat_model("openai:echo", settings_for(monkeypatch, url))
        started = time.monotonic()
        facts = detail_facts(qa, [PICTURE] * 4)
        took = time.monotonic() - started
    assert facts == [[(q, f"you asked: {q} (1 messages)") for q in DETAIL_QUESTIONS]] * 4 and len(asked) == 16
    assert took < 16 * 0.3 / 2, took  # one after another: 16 answers of 6 or more words at 0.05 s a word


def settings_for(monkeypatch, base_url, **extra):
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def test_a_server_that_is_down_is_one_clear_error(home, monkeypatch):
    settings = settings_for(monkeypatch, closed_port_url())
    with pytest.raises(ModelError, match=r"openai:some-model: the chat server at .* cannot be reached"):
        load_chat_model("openai:some-model", settings)


def test_a_refused_key_is_one_clear_error(home, monkeypatch):
    with key_refusing_server() as url:
        settings = settings_for(monkeypatch, url, OPENAI_API_KEY="wrong-key")
        with pytest.raises(ModelError, match=r"refused the API key \(HTTP 401: Incorrect API key provided"):
            load_chat_model("openai:gpt-4o-mini", settings)


def test_a_server_that_never_answers_times_out_with_one_clear_error(home, monkeypatch):
    with silent_server() as url:
        settings = settings_for(monkeypatch, url, CAPTIONER_OPENAI_TIMEOUT="0.5")
        with pytest.raises(ModelError, match=r"did not answer within 0.5 s"):
            load_chat_model("openai:some-model", settings)


def test_a_model_the_server_lacks_is_one_clear_error(on_server):
    settings, _ = on_server
    with pytest.raises(ModelError, match=r"could not answer with model 'no/such-model' \(HTTP 500"):
        load_chat_model("openai:no/such-model", settings)


class _WebPage(BaseHTTPRequestHandler):
    """Answers every request with 200 and an HTML page, as a web app at that address does (the Streamlit app itself
    on OPENAI_BASE_URL by mistake): not an OpenAI-compatible server."""

    body = b"<!doctype html><html><body>Hello</body></html>"

    def _page(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _page

    def log_message(self, *args):
        pass


def web_page_server():
    return serving(_WebPage)


def test_an_address_that_is_no_chat_server_is_one_clear_error_and_the_page_keeps_the_previous_model(home, monkeypatch):
    with web_page_server() as url:
        settings = settings_for(monkeypatch, url)
        with pytest.raises(ModelError, match=r"openai:some-model: the chat server at .* did not answer as an OpenAI-compatible"):
            load_chat_model("openai:some-model", settings)
        monkeypatch.setenv("CAPTIONER_QA_MODEL", "demo")
        monkeypatch.setenv("CAPTIONER_CHAT_MODELS", "openai:some-model")
        app = start_app("pages/chat.py")
        with_image(app)
        app.sidebar.selectbox[0].set_value("openai:some-model").run()
        assert not app.exception, app.exception
        assert any("Still answering with demo" in shown(e.value) and "OpenAI-compatible" in shown(e.value) for e in app.error)


def test_an_error_while_answering_is_a_chat_error_and_the_page_keeps_the_previous_model(on_server, monkeypatch):
    settings, spec = on_server
    loaded = load_chat_model(spec, settings)
    server = endpoint.Endpoint("no/such-model", loaded.model.base_url, None, 30)  # not checked: fails at answer time
    gone = type(loaded)(loaded.spec, server, None, None, None, family="openai")
    with pytest.raises(ChatError, match="could not answer with model 'no/such-model'"):
        answer(gone, PICTURE, [], "what is it?").read()
    monkeypatch.setenv("CAPTIONER_QA_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_CHAT_MODELS", "openai:no/such-model")
    app = start_app("pages/chat.py")
    with_image(app)
    app.sidebar.selectbox[0].set_value("openai:no/such-model").run()
    assert any("Still answering with demo" in shown(e.value) and "no/such-model" in shown(e.value) for e in app.error)
    ask(app, "what color is the shape?")
    assert conversation(app)[-1] == ("assistant", "red")


@pytest.mark.parametrize("mode", ["cutoff", "badjson"])
def test_an_answer_the_server_breaks_off_or_garbles_is_an_error_not_a_short_answer(home, monkeypatch, mode):
    with broken_stream_server(mode) as url:
        loaded = load_chat_model("openai:m", settings_for(monkeypatch, url))  # it lists the model: the pick passes
        with pytest.raises(ChatError, match="ended the answer before it was complete"):
            answer(loaded, PICTURE, [], "what is it?").read()


def test_a_pick_that_failed_is_tried_again_once_its_server_is_back(home, monkeypatch):
    from captioner import loading
    from local_servers import free_port

    port = free_port()  # nothing listens there yet: the server is down
    settings_for(monkeypatch, f"http://127.0.0.1:{port}/v1", CAPTIONER_QA_MODEL="demo", CAPTIONER_CHAT_MODELS="openai:m")
    app = start_app("pages/chat.py")
    with_image(app)
    app.sidebar.selectbox[0].set_value("openai:m").run()
    assert any("cannot be reached" in shown(e.value) and "Still answering with demo" in shown(e.value) for e in app.error)
    assert not any("right?." in shown(e.value) for e in app.error)  # one stop after the question mark, not two
    monkeypatch.setattr(loading, "RETRY_FAILED_S", 0.0)
    with broken_stream_server("cutoff", port):  # the server is back
        app.run()
        assert not app.exception and not app.sidebar.error, [shown(e.value) for e in app.sidebar.error]
        assert any("Answering: `openai:m`" in c.value for c in app.sidebar.caption)


def test_a_conversation_longer_than_the_servers_model_reads_drops_its_oldest_turns(on_server):
    settings, spec = on_server
    loaded = load_chat_model(spec, settings)
    said = "a red square on white, " * 12  # each turn some hundred tokens: the tiny model reads 256 at most
    history = [Turn(f"question {i}: {said}", f"answer {i}: {said}") for i in range(4)]
    stream = answer(loaded, PICTURE, history, "and now?")
    assert stream.read() is not None  # answered, not "HTTP 400: the prompt has ... tokens"
    turn = stream.turn("and now?")
    assert any("oldest" in notice and "left out to fit the model's context" in notice for notice in turn.notices)
    long_question = "why? " * 3000
    cut = answer(loaded, PICTURE, [], long_question)
    cut.close()  # not sent at all: the cut is made when it is asked
    assert len(cut.turn(long_question).question) == 8000  # the history keeps what was sent, not the whole text
    asked = "why is the sky blue? " * 100  # some 1,400 tokens, alone, with no turn left to drop
    stream = answer(loaded, PICTURE, [], asked, max_new_tokens=8)
    assert stream.read() is not None  # answered, not "HTTP 400: The prompt has 1427 tokens"
    turn = stream.turn(asked)
    assert asked.startswith(turn.question) and len(turn.question) < 600 and len(turn.notices) == 1
    assert turn.notices[0] == (f"The question was cut to its first {len(turn.question)} characters to fit the model's "
                               f"context (it had {len(asked.strip())}).")  # fmt: skip


def test_ask_whose_answer_breaks_off_keeps_the_part_on_its_own_line_and_exits_1(home, tmp_path):
    image = tmp_path / "red.png"
    PICTURE.save(image)
    with broken_stream_server("cutoff") as url:
        done = run_cli("ask", image, "what is it?", "--model", "openai:m", env={"OPENAI_BASE_URL": url})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stdout == "Hello there friend\n" and "ended the answer before it was complete" in done.stderr


def test_a_rewriter_that_fails_is_not_asked_again_at_every_rerun_of_the_caption_page(home, monkeypatch):
    posts = []
    with broken_stream_server("cutoff", posts=posts) as url:
        settings_for(monkeypatch, url, CAPTIONER_CAPTION_MODEL="demo", CAPTIONER_STYLE_MODEL="openai:m")
        app = start_app()
        app.selectbox(key="caption_style").set_value("social").run()
        pictures = [(f"{c}.png", zoo.encode(zoo.demo("circle", c), "PNG"), "image/png") for c in ("red", "blue")]
        app.file_uploader[0].set_value(pictures).run()
        assert not app.exception, app.exception
        asked = len([p for p in posts if p.endswith("/chat/completions")])
        assert asked == 1  # the first image failed: the second says so without waiting on the server again
        assert len([e for e in app.error if "ended the answer before it was complete" in shown(e.value)]) == 2
        app.run()  # any click reruns the page: the server is not asked again
        assert len([p for p in posts if p.endswith("/chat/completions")]) == asked
        [b for b in app.button if b.label == "Try the style again"][0].click().run()
        assert len([p for p in posts if p.endswith("/chat/completions")]) == asked + 1  # asked again, on request
