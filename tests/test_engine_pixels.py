"""The engine's device image stage (gpu_images behind the engine) against its CPU stage, on the CPU.

With device "cpu" the device stage runs the CUDA path's code on libjpeg-turbo: the same captions as the CPU stage,
the same one-line errors for bad files, thumbnails, and one preprocessing (gpu_images) under both stages.
"""

import io
import random
import threading
import time

import pytest
import torch
from PIL import Image

import images_zoo as zoo
from captioner.caption import GenerationOptions
from captioner.demo.quality import demo_inputs
from captioner.demo.world import sample
from captioner.engine import CaptionEngine, CpuImageStage, DeviceImageStage
from captioner.engine.pixels import pixel_spec
from captioner.images import ImageInput
from captioner.models import load_captioner
from captioner.settings import Settings

GREEDY = GenerationOptions(num_beams=1, max_new_tokens=12)


@pytest.fixture(scope="module")
def demo():
    return load_captioner("demo", Settings(home=".", device="cpu"))


def demo_jpegs(n: int, seed: int, max_side: int = 200) -> tuple[list[ImageInput], list[str]]:
    """Fresh demo-world pictures as JPEG uploads (the device decoder's input), with their true captions."""
    rng = random.Random(seed)
    inputs, truths = [], []
    for i in range(n):
        item = sample(rng, max_side=max_side)
        inputs.append(ImageInput(f"demo-{i}.jpg", zoo.encode(item.image, "JPEG", quality=95)))
        truths.append(item.caption)
    return inputs, truths


def bad_files() -> list[ImageInput]:
    return [
        ImageInput("garbage.jpg", b"\xff\xd8 not really a jpeg"),
        ImageInput("cut.jpg", zoo.truncated(zoo.encode(zoo.demo(), "JPEG"))),
        ImageInput("empty.png", b""),
    ]


def run_engine(loaded, stage, inputs, **job):
    engine = CaptionEngine(loaded, stage=stage)
    try:
        return engine.caption(inputs, GREEDY, **job)
    finally:
        engine.close()


def test_the_device_path_on_the_cpu_captions_like_the_cpu_stage(demo):
    jpegs, truths = demo_jpegs(24, seed=31)
    pngs, samples = demo_inputs(4, seed=32, max_side=200)
    inputs = jpegs[:12] + bad_files() + pngs + jpegs[12:]
    spec = pixel_spec(demo.processor.image_processor)
    on_device = run_engine(demo, DeviceImageStage(spec, "cpu", torch.float32, chunk=8), inputs)
    on_cpu = run_engine(demo, CpuImageStage(demo.processor, "cpu", torch.float32), inputs)
    assert [r.caption for r in on_device] == [r.caption for r in on_cpu]
    assert [r.caption for r in on_device if r.ok] == truths[:12] + [s.caption for s in samples] + truths[12:]
    # the CPU stage shrinks pictures over twice the model's side before its resize; the device path resizes once
    assert [r.score for r in on_device] == pytest.approx([r.score for r in on_cpu], abs=3e-3)
    # a bad file fails only itself, with the door's own one-line error, whichever stage made the pixels
    assert [r.error for r in on_device] == [r.error for r in on_cpu]
    assert [r.name for r in on_device if not r.ok] == ["garbage.jpg", "cut.jpg", "empty.png"]
    assert [r.extension for r in on_device if r.ok] == [r.extension for r in on_cpu if r.ok]


def test_both_stages_make_the_same_pixels_for_jpegs_at_full_scale(demo):
    """Tolerance: none. A JPEG under twice the model's side decodes at full scale in both stages (libjpeg-turbo in
    Pillow and in torchvision), and both resize and normalise with gpu_images."""
    jpegs, _ = demo_jpegs(8, seed=33, max_side=2 * 64 - 1)
    spec = pixel_spec(demo.processor.image_processor)
    device_stage, cpu_stage = DeviceImageStage(spec, "cpu", torch.float32), CpuImageStage(demo.processor, "cpu", torch.float32)
    ours = device_stage.collate([p.pixels for p in device_stage.prepare(jpegs, thumbnails=False)])
    theirs = cpu_stage.collate([p.pixels for p in cpu_stage.prepare(jpegs, thumbnails=False)])
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    assert (ours - theirs).abs().max() == 0
    device_stage.close(), cpu_stage.close()


def test_the_device_stage_makes_thumbnails_and_keeps_input_order(demo):
    jpegs, _ = demo_jpegs(20, seed=34, max_side=500)
    inputs = jpegs[:3] + [ImageInput("garbage.jpg", b"\xff\xd8 not really a jpeg")] + jpegs[3:]
    stage = DeviceImageStage(pixel_spec(demo.processor.image_processor), "cpu", torch.float32, chunk=4)
    prepared = list(stage.prepare(inputs, thumbnails=True))
    stage.close()
    assert [getattr(p, "source", None) for p in prepared] == [None if i == 3 else item for i, item in enumerate(inputs)]
    for item, result in zip(jpegs, [p for p in prepared if hasattr(p, "thumbnail")]):
        width, height = Image.open(io.BytesIO(item.data)).size
        assert max(result.thumbnail.size) == min(384, max(width, height))


def test_a_device_batch_that_fails_as_a_whole_fails_only_the_input_that_breaks_it(demo, monkeypatch):
    from captioner.engine import device_pixels

    jpegs, truths = demo_jpegs(6, seed=35)
    real = device_pixels.load_pixels

    def breaks_on_the_third(inputs, *args):
        if any(item.name == "demo-2.jpg" for item in inputs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(inputs, *args)

    monkeypatch.setattr(device_pixels, "load_pixels", breaks_on_the_third)
    stage = DeviceImageStage(pixel_spec(demo.processor.image_processor), "cpu", torch.float32)
    results = run_engine(demo, stage, jpegs)
    assert [r.caption for r in results] == truths[:2] + [None] + truths[3:]
    assert results[2].error == "cannot be decoded (RuntimeError: CUDA error: an illegal memory access was encountered)"


def test_a_long_job_holds_a_bounded_window_of_prepared_images(demo):
    jpegs, truths = demo_jpegs(40, seed=36, max_side=100)
    held, peak = [0], [0]
    lock = threading.Lock()

    class Counting(DeviceImageStage):
        def prepare(self, items, thumbnails):
            for item in super().prepare(items, thumbnails):
                with lock:
                    held[0] += 1
                    peak[0] = max(peak[0], held[0])
                yield item

        def collate(self, pixels):
            with lock:
                held[0] -= len(pixels)
            return super().collate(pixels)

    engine = CaptionEngine(demo, stage=Counting(pixel_spec(demo.processor.image_processor), "cpu", torch.float32, chunk=4))
    engine._window = 8
    try:
        assert [r.caption for r in engine.caption(jpegs, GREEDY)] == truths
    finally:
        engine.close()
    assert peak[0] <= 8 + 4, f"{peak[0]} images prepared at once"


def decodes_during_model_calls(engine, inputs, monkeypatch, max_batch: int = 8) -> tuple[list, list]:
    """Caption inputs through engine with every model call slowed by 0.2 s; returns the device decodes' start times
    with their device, and the model calls' (start, end)."""
    from captioner import gpu_images

    decodes, calls = [], []
    real_decode, real_run = gpu_images._decode_jpegs, engine.step.run

    def decode(items, device):
        decodes.append((time.monotonic(), device.type))
        time.sleep(0.05)  # a chunk of real photos: the model's first call starts before the next chunk does
        return real_decode(items, device)

    def run(pixel_values, options):
        start = time.monotonic()
        time.sleep(0.2)
        try:
            return real_run(pixel_values, options)
        finally:
            calls.append((start, time.monotonic()))

    monkeypatch.setattr(gpu_images, "_decode_jpegs", decode)
    monkeypatch.setattr(engine.step, "run", run)
    results = engine.caption(inputs, GREEDY, max_batch=max_batch)
    assert all(r.ok for r in results)
    during = [t for t, _ in decodes if any(start <= t <= end for start, end in calls)]
    return decodes, during


def test_the_device_stage_decodes_the_next_chunk_while_the_model_works(demo, monkeypatch):
    jpegs, _ = demo_jpegs(40, seed=37, max_side=100)
    engine = CaptionEngine(demo, stage=DeviceImageStage(pixel_spec(demo.processor.image_processor), "cpu", torch.float32, chunk=16))
    try:
        decodes, during = decodes_during_model_calls(engine, jpegs, monkeypatch)
    finally:
        engine.close()
    assert len(decodes) >= 3 and during, "no chunk was decoded while the model was working"
