"""The caption engine on a tiny BLIP loaded from disk: batching, order, errors, prompts, threads, locking."""

import threading
import time

import pytest
from PIL import Image

import images_zoo as zoo
from captioner import caption as caption_module
from captioner import images
from captioner.caption import GenerationOptions, caption_images, format_captions
from captioner.images import ImageInput
from captioner.models import load_captioner

GREEDY = GenerationOptions(num_beams=1, max_new_tokens=6)


@pytest.fixture
def tiny(settings, tiny_blip_dir):
    return load_captioner(str(tiny_blip_dir), settings, fallback=False)


def pictures(n):
    shapes, colors = ("circle", "square", "triangle"), ("red", "green", "blue", "yellow")
    return [ImageInput(f"img{i}.png", zoo.encode(zoo.demo(shapes[i % 3], colors[i % 4], 64 + 13 * i), "PNG")) for i in range(n)]


def count_generate_calls(monkeypatch, loaded, delay=0.0):
    calls, original = [], loaded.model.generate

    def counted(*args, **kwargs):
        start = time.time()
        time.sleep(delay)
        out = original(*args, **kwargs)
        calls.append((start, time.time(), len(kwargs["pixel_values"])))
        return out

    monkeypatch.setattr(loaded.model, "generate", counted)
    return calls


def test_one_generate_per_batch_and_results_in_input_order(tiny, monkeypatch):
    calls = count_generate_calls(monkeypatch, tiny)
    inputs = pictures(10)
    inputs.insert(3, ImageInput("broken.jpg", b"not an image"))
    inputs.insert(7, ImageInput("empty.png", b""))
    results = caption_images(tiny, inputs, GREEDY, batch_size=4)
    assert [r.name for r in results] == [i.name for i in inputs]
    assert [r.ok for r in results] == [i.name not in ("broken.jpg", "empty.png") for i in inputs]
    assert "not an image" in results[3].error and "empty" in results[7].error
    assert all(r.caption for r in results if r.ok)
    assert sum(size for *_, size in calls) == 10 and len(calls) == 3
    assert all(r.model_version == tiny.version and r.model == tiny.name for r in results)


def test_batched_captions_equal_one_at_a_time(tiny):
    inputs = pictures(6)
    batched = [r.caption for r in caption_images(tiny, inputs, GREEDY, batch_size=6)]
    single = [caption_images(tiny, [item], GREEDY, batch_size=1)[0].caption for item in inputs]
    assert batched == single


def test_prompt_prefix_conditions_the_caption(tiny):
    results = caption_images(tiny, pictures(3), GenerationOptions(num_beams=2, max_new_tokens=4, prompt="A picture of"))
    assert all(r.caption.startswith("a picture of") for r in results)


def test_decoding_runs_in_worker_threads_while_the_model_works(tiny, monkeypatch):
    calls = count_generate_calls(monkeypatch, tiny, delay=0.3)
    decoded_at, original = [], images.decode

    def watched(item, **kwargs):
        decoded_at.append((time.time(), threading.current_thread().name))
        return original(item, **kwargs)

    monkeypatch.setattr(images, "decode", watched)
    caption_images(tiny, pictures(12), GREEDY, batch_size=4)
    assert all(name.startswith("decode") for _, name in decoded_at)
    during_generate = [t for t, _ in decoded_at if any(start <= t <= end for start, end, _ in calls)]
    assert during_generate, "no image was decoded while the model was generating"


def test_a_shared_model_runs_one_generate_at_a_time(tiny, monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()
    original = tiny.model.generate

    def exclusive(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(tiny.model, "generate", exclusive)
    outputs = {}
    sessions = [
        threading.Thread(target=lambda k=k: outputs.setdefault(k, caption_images(tiny, pictures(6), GREEDY, batch_size=2)))
        for k in range(3)
    ]
    for session in sessions:
        session.start()
    for session in sessions:
        session.join()
    assert peak[0] == 1
    captions = [[r.caption for r in outputs[k]] for k in range(3)]
    assert captions[0] == captions[1] == captions[2] and len(captions[0]) == 6


def test_a_one_pixel_image_is_captioned(tiny):
    result = caption_images(tiny, [ImageInput("dot.png", zoo.encode(Image.new("RGB", (1, 1)), "PNG"))], GREEDY)[0]
    assert result.ok and result.caption


def test_bad_generation_settings_are_named():
    with pytest.raises(ValueError, match="beams must be 1 to 10, not 0"):
        GenerationOptions(num_beams=0).validate()
    with pytest.raises(ValueError, match="min new tokens"):
        GenerationOptions(max_new_tokens=5, min_new_tokens=9).validate()


def test_thumbnails_are_small_and_exports_keep_order(tiny):
    big = ImageInput("big.png", zoo.encode(zoo.demo(side=900), "PNG"))
    results = caption_images(tiny, [big, ImageInput("bad.gif", b"GIF89a-broken")], GREEDY, thumbnails=True)
    assert max(results[0].thumbnail.size) <= caption_module.THUMBNAIL_SIDE
    rows = [{"path": r.name, "caption": r.caption, "error": r.error} for r in results]
    jsonl = format_captions(rows, "jsonl").splitlines()
    assert [line.split('"')[3] for line in jsonl] == ["big.png", "bad.gif"] and '"error"' in jsonl[1]
    assert format_captions(rows, "csv").startswith("path,caption,error\r\nbig.png,")
    assert format_captions(rows, "txt").count("\n") == 1
