"""caption_images on a tiny BLIP loaded from disk: order, errors, prompts, batch caps, decoding beside the model."""

import csv
import io
import json
import math
import threading
import time
from dataclasses import replace

import pytest
import torch
from PIL import Image

import images_zoo as zoo
from captioner import images
from captioner.caption import THUMBNAIL_SIDE, GenerationOptions, caption_images, format_captions
from captioner.engine import engine_for, shutdown_engines
from captioner.engine.pixels import CpuImageStage, pixel_spec
from captioner.images import ImageInput
from captioner.models import load_captioner

GREEDY = GenerationOptions(num_beams=1, max_new_tokens=6)


@pytest.fixture
def tiny(settings, tiny_blip_dir):
    loaded = load_captioner(str(tiny_blip_dir), settings)
    yield loaded
    shutdown_engines()


def pictures(n):
    shapes, colors = ("circle", "square", "triangle"), ("red", "green", "blue", "yellow")
    return [ImageInput(f"img{i}.png", zoo.encode(zoo.demo(shapes[i % 3], colors[i % 4], 64 + 13 * i), "PNG")) for i in range(n)]


def record_model_calls(monkeypatch, loaded, delay=0.0):
    """Every model step the engine runs: (start, end, rows, thread name)."""
    step = engine_for(loaded).step
    calls, original = [], step.run

    def recorded(pixel_values, options):
        start = time.time()
        time.sleep(delay)
        out = original(pixel_values, options)
        calls.append((start, time.time(), len(pixel_values), threading.current_thread().name))
        return out

    monkeypatch.setattr(step, "run", recorded)
    return calls


def test_results_in_input_order_bad_inputs_named_and_batches_capped(tiny, monkeypatch):
    calls = record_model_calls(monkeypatch, tiny)
    inputs = pictures(10)
    inputs.insert(3, ImageInput("broken.jpg", b"not an image"))
    inputs.insert(7, ImageInput("empty.png", b""))
    results = caption_images(tiny, inputs, GREEDY, batch_size=4)
    assert [r.name for r in results] == [i.name for i in inputs]
    assert [r.ok for r in results] == [i.name not in ("broken.jpg", "empty.png") for i in inputs]
    assert "not an image" in results[3].error and "empty" in results[7].error
    assert all(r.caption for r in results if r.ok)
    assert sum(rows for *_, rows, _ in calls) == 10 and max(rows for *_, rows, _ in calls) <= 4
    assert all(r.model_version == tiny.version and r.model == tiny.name for r in results)


def test_every_caption_carries_its_mean_token_log_probability(tiny):
    results = caption_images(tiny, pictures(3), GenerationOptions(num_beams=3, max_new_tokens=5))
    assert all(isinstance(r.score, float) and math.isfinite(r.score) and r.score <= 0 for r in results)
    rows = [{"path": r.name, "caption": r.caption, "score": r.score, "error": r.error} for r in results]
    assert f'"score": {round(results[0].score, 4)}' in format_captions(rows, "jsonl").splitlines()[0]


def test_batched_captions_equal_one_at_a_time(tiny):
    inputs = pictures(6)
    batched = caption_images(tiny, inputs, GREEDY, batch_size=6)
    single = [caption_images(tiny, [item], GREEDY, batch_size=1)[0] for item in inputs]
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.score for r in batched] == pytest.approx([r.score for r in single], abs=1e-4)


def test_prompt_prefix_conditions_the_caption(tiny):
    results = caption_images(tiny, pictures(3), GenerationOptions(num_beams=2, max_new_tokens=4, prompt="A picture of"))
    assert all(r.caption.startswith("a picture of") for r in results)


def test_images_decode_in_threads_while_the_model_works(settings, tiny_blip_dir, monkeypatch):
    """The CPU image stage (pinned: on CUDA the device stage decodes; test_engine_pixels and test_engine_gpu)."""
    tiny = load_captioner(str(tiny_blip_dir), replace(settings, device="cpu"))
    calls = record_model_calls(monkeypatch, tiny, delay=0.2)
    decoded_at, original = [], images.decode

    def watched(item, **kwargs):
        decoded_at.append((time.time(), threading.current_thread().name))
        time.sleep(0.03)  # a real photo's decode: the first batch is taken while later pictures still decode
        return original(item, **kwargs)

    monkeypatch.setattr(images, "decode", watched)
    caption_images(tiny, pictures(12), GREEDY, batch_size=4)
    assert all(name.startswith("decode") for _, name in decoded_at)
    during_model = [t for t, _ in decoded_at if any(start <= t <= end for start, end, *_ in calls)]
    shutdown_engines()
    assert during_model, "no image was decoded while the model was working"


def test_sessions_share_one_worker_and_never_run_the_model_at_once(tiny, monkeypatch):
    active, peak, guard = [0], [0], threading.Lock()
    step = engine_for(tiny).step
    original = step.run

    def exclusive(pixel_values, options):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return original(pixel_values, options)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(step, "run", exclusive)
    outputs = {}
    sessions = [threading.Thread(target=lambda k=k: outputs.setdefault(k, caption_images(tiny, pictures(6), GREEDY))) for k in range(3)]
    for session in sessions:
        session.start()
    for session in sessions:
        session.join()
    assert peak[0] == 1
    captions = [[r.caption for r in outputs[k]] for k in range(3)]
    assert captions[0] == captions[1] == captions[2] and len(captions[0]) == 6
    assert tiny.lock.acquire(blocking=False), "captioning no longer holds the model lock"
    tiny.lock.release()


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
    assert max(results[0].thumbnail.size) == THUMBNAIL_SIDE  # a 32 px model's image, shown at a useful size
    assert results[0].caption == caption_images(tiny, [big], GREEDY)[0].caption  # as the CLI captions it
    rows = [{"path": r.name, "caption": r.caption, "score": r.score, "error": r.error} for r in results]
    jsonl = format_captions(rows, "jsonl").splitlines()
    assert [line.split('"')[3] for line in jsonl] == ["big.png", "bad.gif"] and '"error"' in jsonl[1]
    assert '"score": null' in jsonl[1]
    assert format_captions(rows, "csv").startswith("path,caption,error,score\r\nbig.png,")
    typed = [{**rows[0], "path": "=cmd|' /C calc'!A0.png", "caption": "-2+3", "correction": "@SUM(A1)"}]
    cells = next(csv.DictReader(io.StringIO(format_captions(typed, "csv"))))
    assert (cells["path"], cells["caption"], cells["correction"]) == ("'=cmd|' /C calc'!A0.png", "'-2+3", "'@SUM(A1)")
    assert float(cells["score"]) == round(rows[0]["score"], 4)  # a number stays a number
    assert json.loads(format_captions(typed, "jsonl"))["caption"] == "-2+3"  # JSONL keeps every text exactly
    assert format_captions(rows, "txt").count("\n") == 1


# --- the CPU image stage against the checkpoint's own image processor ---------------------------------------
def photos(n=6):
    """JPEG and PNG inputs of awkward sizes and aspect ratios, bigger and smaller than the model's side."""
    sizes = [(37, 53), (640, 480), (1024, 700), (300, 1000), (64, 64), (500, 501)][:n]
    return [
        ImageInput(f"p{i}.{'jpg' if i % 2 else 'png'}",
                   zoo.encode(zoo.demo("triangle", "blue", 200).resize(size), "JPEG" if i % 2 else "PNG"))
        for i, size in enumerate(sizes)
    ]


def test_the_torch_resize_equals_the_image_processor(tiny_blip_dir):
    """Tolerance: float rounding (1e-5) to transformers' torchvision-backed processor (its default since v5)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_blip_dir)
    if type(processor.image_processor).__name__.endswith("Pil"):
        pytest.skip("this transformers loads the PIL-backed processor: the next test holds it to its tolerance")
    stage = CpuImageStage(processor, "cpu", torch.float32)
    assert stage.spec is not None
    prepared = list(stage.prepare(photos(), thumbnails=False))
    ours = stage.collate([p.pixels for p in prepared])
    pictures_ = [images.decode(item, max_side=stage.decode_side, caller_resizes=True).image for item in photos()]
    theirs = processor.image_processor(images=pictures_, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5
    stage.close()


def test_a_processor_the_torch_path_does_not_cover_is_called_itself(tiny_blip_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_blip_dir)
    processor.image_processor.do_center_crop = True
    processor.image_processor.crop_size = {"height": 24, "width": 24}
    assert pixel_spec(processor.image_processor) is None
    stage = CpuImageStage(processor, "cpu", torch.float32)
    prepared = list(stage.prepare(photos(2), thumbnails=False))
    batch = stage.collate([p.pixels for p in prepared])
    assert batch.shape == (2, 3, 24, 24) and batch.dtype == torch.float32
    stage.close()


def test_the_torch_resize_is_within_one_level_of_the_pil_image_processor(tiny_blip_dir):
    import transformers

    pil_processor = getattr(transformers, "BlipImageProcessorPil", None)
    if pil_processor is None:
        pytest.skip("this transformers has no PIL-backed BLIP image processor")
    processor = transformers.AutoProcessor.from_pretrained(tiny_blip_dir)
    stage = CpuImageStage(processor, "cpu", torch.float32)
    ours = stage.collate([p.pixels for p in stage.prepare(photos(), thumbnails=False)])
    reference = pil_processor(**processor.image_processor.to_dict())
    decoded = [images.decode(i, max_side=stage.decode_side, caller_resizes=True).image for i in photos()]  # as the stage does
    theirs = reference(images=decoded, return_tensors="pt")
    one_level = 1 / 255 / min(reference.image_std)
    difference = (ours - theirs["pixel_values"]).abs()
    # PIL's and torchvision's bicubic differ by a level or two on a few edge pixels, up to 5 where an axis is upscaled
    assert difference.mean() <= 0.05 * one_level and difference.max() <= 8 * one_level
    stage.close()
