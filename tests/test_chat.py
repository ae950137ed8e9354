"""Q&A backends on tiny models loaded from disk: streaming, history, cutting, errors; and the demo Q&A model."""

import time

import pytest
from PIL import Image

from captioner.chat import ChatError, Turn, answer, answer_batch
from captioner.demo.quality import qa_accuracy
from captioner.models import ModelError, load_chat_model
from captioner.settings import Settings

PICTURE = Image.new("RGB", (60, 40), (220, 30, 30))
HISTORY = [Turn("what is in the picture?", "a small dog"), Turn("where is it?", "on the grass")]


@pytest.fixture(params=["vqa", "blip2", "llava"])
def tiny_chat(request, settings):
    folder = request.getfixturevalue(f"tiny_{request.param}_dir")
    return load_chat_model(str(folder), settings, fallback=False)


def prompts_seen(monkeypatch, loaded):
    """Record the token ids each generate call is given (and still run the real generate)."""
    seen, original = [], loaded.model.generate

    def recording(*args, **kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return original(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", recording)
    return seen


def test_each_backend_loads_and_streams_token_by_token(tiny_chat):
    expected = {"vqa": "BlipForQuestionAnswering", "blip2": "Blip2ForConditionalGeneration"}
    assert tiny_chat.family in (*expected.values(), "AutoModelForImageTextToText")
    stream = answer(tiny_chat, PICTURE, HISTORY, "what color is it?", max_new_tokens=8)
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks) == stream.text and stream.notices == []
    assert stream.model == tiny_chat.name and stream.model_version == tiny_chat.version


def test_blip_vqa_answers_from_the_question_alone(settings, tiny_vqa_dir, monkeypatch):
    loaded = load_chat_model(str(tiny_vqa_dir), settings, fallback=False)
    seen = prompts_seen(monkeypatch, loaded)
    answer(loaded, PICTURE, HISTORY, "what color is it?", max_new_tokens=3).read()
    assert loaded.processor.tokenizer.decode(seen[0], skip_special_tokens=True) == "what color is it?"


def test_blip2_prompt_carries_the_whole_conversation(settings, tiny_blip2_dir, monkeypatch):
    loaded = load_chat_model(str(tiny_blip2_dir), settings, fallback=False)
    seen = prompts_seen(monkeypatch, loaded)
    answer(loaded, PICTURE, HISTORY, "what color is it?", max_new_tokens=3).read()
    prompt = loaded.processor.tokenizer.decode(seen[0], skip_special_tokens=True)
    assert prompt.endswith(
        "Question: what is in the picture? Answer: a small dog Question: where is it? Answer: on the grass "
        "Question: what color is it? Answer:"
    )


def test_chat_template_model_gets_the_full_history_and_one_image(settings, tiny_llava_dir, monkeypatch):
    loaded = load_chat_model(str(tiny_llava_dir), settings, fallback=False)
    seen = prompts_seen(monkeypatch, loaded)
    answer(loaded, PICTURE, HISTORY, "what color is it?", max_new_tokens=3).read()
    prompt = loaded.processor.tokenizer.decode(seen[0])
    assert "what is in the picture?\nassistant: a small dog\nuser: where is it?" in prompt
    assert prompt.endswith("user: what color is it?\nassistant:")
    image_id = loaded.model.config.image_token_index
    assert seen[0].count(image_id) == 16  # one image: 4 x 4 patches


def test_a_10000_character_question_is_cut_with_a_notice(tiny_chat):
    stream = answer(tiny_chat, PICTURE, [], "why is the sky blue " * 500, max_new_tokens=3)
    assert any("cut to its first" in notice for notice in stream.notices)
    assert isinstance(stream.read(), str)


def test_a_long_history_drops_its_oldest_turns_with_a_notice(settings, tiny_blip2_dir):
    loaded = load_chat_model(str(tiny_blip2_dir), settings, fallback=False)
    stream = answer(loaded, PICTURE, HISTORY * 20, "and now?", max_new_tokens=3)
    assert any("oldest" in notice for notice in stream.notices)
    stream.read()


def test_bad_questions_and_missing_images_are_clear_errors(tiny_chat):
    with pytest.raises(ChatError, match="the question is empty"):
        answer(tiny_chat, PICTURE, [], "   ")
    with pytest.raises(ChatError, match="no image"):
        answer(tiny_chat, None, [], "what?")


def test_an_abandoned_answer_stops_and_frees_the_model(settings, tiny_blip2_dir):
    loaded = load_chat_model(str(tiny_blip2_dir), settings, fallback=False)
    stream = iter(answer(loaded, PICTURE, [], "tell me everything", max_new_tokens=500))
    next(stream)
    started = time.time()
    stream.close()
    assert time.time() - started < 5
    assert loaded.lock.acquire(blocking=False)
    loaded.lock.release()


def test_models_that_cannot_chat_are_refused_clearly(settings, tiny_blip_dir, home, monkeypatch):
    with pytest.raises(ModelError, match="BLIP captioning model"):
        load_chat_model(str(tiny_blip_dir), settings, fallback=False)
    monkeypatch.setenv("CAPTIONER_QUANTIZE", "8bit")
    monkeypatch.setenv("CAPTIONER_DEVICE", "cpu")
    with pytest.raises(ModelError, match="'8bit' needs a CUDA GPU"):
        load_chat_model("demo", Settings.from_env(), fallback=False)


def test_offline_default_qa_model_falls_back_to_the_demo(settings):
    loaded = load_chat_model(settings.qa_model, settings)
    assert loaded.name == "demo" and "Salesforce/blip-vqa-base" in loaded.fallback_reason
    assert "demo Q&A model" in loaded.fallback_reason


def test_demo_qa_model_answers_fresh_images_exactly(settings):
    loaded = load_chat_model("demo", settings, fallback=False)
    accuracy, misses = qa_accuracy(loaded, 100, seed=5150)
    assert accuracy >= 0.95, misses[:10]


def test_batched_answers_need_a_vqa_model(settings, tiny_blip2_dir):
    with pytest.raises(ChatError, match="BLIP VQA"):
        answer_batch(load_chat_model(str(tiny_blip2_dir), settings, fallback=False), [PICTURE], ["what?"])
