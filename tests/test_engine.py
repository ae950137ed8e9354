"""The caption engine under concurrency: own results, failures kept apart, options kept apart, abandoned requests
dropped, hot-swap under load, shutdown. The demo captioner's captions of demo images are known."""

import gc
import threading
import time

import pytest
import torch

from captioner.caption import GenerationOptions, caption_images, caption_stream
from captioner.demo.quality import demo_inputs
from captioner.engine import CaptionEngine, EngineClosed, EngineLimits, engine_for, retire_engine, shutdown_engines
from captioner.images import ImageInput
from captioner.models import load_captioner
from captioner.settings import Settings

GREEDY = GenerationOptions(num_beams=1, max_new_tokens=12)


@pytest.fixture(scope="module")
def demo():
    return load_captioner("demo", Settings(home=".", device="cpu"))


@pytest.fixture(scope="module")
def world():
    """32 demo images and their true captions."""
    inputs, samples = demo_inputs(32, seed=777, max_side=256)
    return inputs, [s.caption for s in samples]


@pytest.fixture(autouse=True)
def no_thread_left():
    yield
    shutdown_engines()
    left = [t.name for t in threading.enumerate() if t.name.startswith(("caption-engine", "decode"))]
    assert not left, f"threads left running: {left}"


def in_threads(count, work):
    """Run work(i) in count threads started together; returns {i: result or the exception raised}."""
    results, start = {}, threading.Barrier(count)

    def run(i):
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # recorded, and asserted on by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def gated(engine, gate: threading.Event, entered: threading.Event | None = None):
    """Make the engine's model step wait for gate (setting entered first); returns the row counts it ran."""
    ran, original = [], engine.step.run

    def run(pixel_values, options):
        if entered:
            entered.set()
        gate.wait(10)
        ran.append(len(pixel_values))
        return original(pixel_values, options)

    engine.step.run = run
    return ran


def test_32_threads_each_get_their_own_caption_in_shared_batches(demo, world):
    inputs, truths = world
    engine = engine_for(demo)
    results = in_threads(32, lambda i: caption_images(demo, [inputs[i]], GREEDY)[0])
    assert [results[i].caption for i in range(32)] == truths
    assert engine.images_run == 32 and engine.batches_run < 32, "no two sessions' requests shared a batch"


def test_a_bad_request_among_good_ones_fails_alone(demo, world):
    inputs, truths = world
    engine = engine_for(demo)
    original = engine.step.run

    def poisoned(pixel_values, options):  # the model fails on any batch holding an all-black image
        if (pixel_values.flatten(2).std(2).amax(1) == 0).any():
            raise RuntimeError("CUDA error: device-side assert triggered")
        return original(pixel_values, options)

    engine.step.run = poisoned
    black = ImageInput("black.png", _png_of((0, 0, 0)))
    garbage = ImageInput("garbage.jpg", b"\xff\xd8 not really a jpeg")
    batch = inputs[:6] + [black, garbage] + inputs[6:12]
    results = caption_images(demo, batch, GREEDY)
    assert [r.caption for r in results if r.ok] == truths[:12]
    assert results[6].error == "the captioner failed on this image (RuntimeError: CUDA error: device-side assert triggered)"
    assert results[7].error.startswith("truncated or corrupt") or "not an image" in results[7].error
    assert caption_images(demo, [inputs[20]], GREEDY)[0].caption == truths[20], "the worker died"


def test_settings_the_model_cannot_hold_fail_the_request_at_once_with_why(demo, world):
    """The demo captioner has 32 text positions: a long prompt, or more min new tokens than fit, fails every image
    alike with a reason a person can act on, in one model call (no retrying the images one by one)."""
    inputs, truths = world
    engine = engine_for(demo)
    calls, original = [], engine.step.run
    engine.step.run = lambda pixel_values, options: calls.append(len(pixel_values)) or original(pixel_values, options)
    long_prompt = GenerationOptions(num_beams=1, prompt="a photo of a " * 11)
    too_long = GenerationOptions(num_beams=1, max_new_tokens=40, min_new_tokens=32)
    for options, expected in ((long_prompt, "the prompt (44 tokens) plus min new tokens (0)"),
                              (too_long, "the prompt (0 tokens) plus min new tokens (32)")):  # fmt: skip
        calls.clear()
        results = caption_images(demo, inputs[:8], options, batch_size=8)
        assert [r.error for r in results] == [f"{expected} do not fit this captioner's 32 text positions"] * 8
        assert sum(calls) == 8, calls  # each image in one model call: none retried alone
    fits = GenerationOptions(num_beams=1, max_new_tokens=40, min_new_tokens=31)  # 1 + 31 positions: fits
    assert all(r.ok for r in caption_images(demo, inputs[:2], fits))
    assert [r.caption for r in caption_images(demo, inputs[:4], GREEDY)] == truths[:4]


def test_requests_with_different_options_in_flight_at_once_get_their_own(demo, world):
    inputs, _ = world
    kinds = [GREEDY, GenerationOptions(num_beams=3, max_new_tokens=12), GenerationOptions(num_beams=1, max_new_tokens=2),
             GenerationOptions(num_beams=2, max_new_tokens=12, prompt="a blue")]  # fmt: skip
    alone = {(i, k): caption_images(demo, [inputs[i]], kinds[k])[0].caption for i in range(8) for k in range(4)}
    engine = engine_for(demo)
    seen, original = [], engine.step.run
    engine.step.run = lambda pixels, options: seen.append((len(pixels), options)) or original(pixels, options)
    together = in_threads(32, lambda n: caption_images(demo, [inputs[n % 8]], kinds[n // 8])[0].caption)
    assert {n: together[n] for n in range(32)} == {n: alone[(n % 8, n // 8)] for n in range(32)}
    assert all(c.startswith("a blue") for c in (alone[(i, 3)] for i in range(8)))
    assert sum(rows for rows, _ in seen) == 32 and len({options for _, options in seen}) == 4


def test_an_abandoned_request_is_dropped_and_never_run(demo, world):
    inputs, truths = world
    engine = engine_for(demo)
    gate, busy = threading.Event(), threading.Event()
    ran = gated(engine, gate, busy)
    first = threading.Thread(target=lambda: caption_images(demo, [inputs[0]], GREEDY))
    first.start()
    assert busy.wait(10)  # the worker is inside a batch: everything submitted now waits in the queue
    with pytest.raises(TimeoutError):  # a caller that stops waiting (timeout)
        caption_images(demo, inputs[1:4], GREEDY, timeout=0.3)

    class Rerun(Exception):  # what Streamlit raises in the script thread on a rerun or a closed session
        pass

    def rerun(done, total):
        raise Rerun

    with pytest.raises(Rerun):
        caption_images(demo, inputs[4:7], GREEDY, on_progress=rerun)
    stream = caption_stream(demo, [ImageInput("bad.png", b"")] + inputs[7:10], GREEDY)
    assert not next(stream).ok
    stream.close()  # a generator closed after its first result
    gate.set()
    first.join(10)
    assert caption_images(demo, [inputs[11]], GREEDY)[0].caption == truths[11]
    assert ran == [1, 1], f"abandoned requests were run: batches of {ran}"


def test_hot_swap_under_load_fails_nothing_and_each_result_names_its_model(demo, world, settings, tiny_blip_dir):
    inputs, truths = world
    tiny = load_captioner(str(tiny_blip_dir), settings)
    expected = {demo.version: truths[:8], tiny.version: [r.caption for r in caption_images(tiny, inputs[:8], GREEDY)]}
    assert expected[demo.version] != expected[tiny.version]
    live, stop, seen = [demo], threading.Event(), []

    def session(i):
        while not stop.is_set():
            loaded = live[0]
            result = caption_images(loaded, [inputs[i % 8]], GREEDY)[0]
            seen.append((i % 8, result))
        return True

    old_engine = engine_for(demo)
    sessions = threading.Thread(target=lambda: in_threads(8, session))
    sessions.start()
    time.sleep(0.4)
    live[0] = tiny  # what pages/ui/shared.caption_model does when a new version goes live
    retire_engine(demo)
    assert old_engine.closed
    time.sleep(0.4)
    live[0] = demo  # and back (a rollback): demo gets a fresh engine
    retire_engine(tiny)
    time.sleep(0.4)
    stop.set()
    sessions.join(30)
    assert not old_engine.running, "the retired engine's thread did not stop"
    assert seen and all(r.ok for _, r in seen), [r.error for _, r in seen if not r.ok][:3]
    assert all(r.caption == expected[r.model_version][i] for i, r in seen)
    assert {r.model_version for _, r in seen} == {demo.version, tiny.version}


def test_close_finishes_the_jobs_under_way_then_refuses_and_stops(demo, world):
    inputs, truths = world
    engine = CaptionEngine(demo, limits=EngineLimits(max_batch=4))
    gate = threading.Event()
    gated(engine, gate)
    results = {}
    job = threading.Thread(target=lambda: results.setdefault("all", engine.caption(inputs[:10], GREEDY)))
    job.start()
    time.sleep(0.2)
    closer = threading.Thread(target=engine.close)
    closer.start()
    time.sleep(0.1)
    with pytest.raises(EngineClosed):
        engine.caption(inputs[:1], GREEDY)
    gate.set()
    job.join(10)
    closer.join(10)
    assert [r.caption for r in results["all"]] == truths[:10]
    assert not engine.running


def test_an_engine_stops_when_its_model_is_dropped(settings, tiny_blip_dir):
    loaded = load_captioner(str(tiny_blip_dir), settings)
    assert caption_images(loaded, demo_inputs(2, seed=1)[0], GREEDY)[0].ok
    worker = engine_for(loaded)._worker
    del loaded
    gc.collect()
    worker.join(10)
    assert not worker.is_alive()


def test_batches_respect_the_budget_and_an_out_of_memory_batch_is_split(demo, world):
    inputs, truths = world
    engine = CaptionEngine(demo, limits=EngineLimits(max_batch=8, max_sequences=12))
    sizes, original = [], engine.step.run

    def limited(pixel_values, options):
        sizes.append((len(pixel_values), options.num_beams))
        if len(pixel_values) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(pixel_values, options)

    engine.step.run = limited
    with engine:
        beams = engine.caption(inputs[:12], GenerationOptions(num_beams=3, max_new_tokens=12))
        greedy = engine.caption(inputs[:12], GREEDY)
    assert [r.caption for r in greedy] == truths[:12] and all(r.ok for r in beams)
    assert all(rows * beams_ <= 12 for rows, beams_ in sizes if beams_ == 3)  # 12 sequences: 4 images of 3 beams
    assert max(rows for rows, _ in sizes) <= 8


def _png_of(color) -> bytes:
    from PIL import Image

    import images_zoo as zoo

    return zoo.encode(Image.new("RGB", (80, 80), color), "PNG")


def test_a_model_replaced_in_place_gets_a_fresh_engine(settings, tiny_blip_dir, world):
    """finetune merges LoRA and sets loaded.model = merged; the next captions must come from the merged model."""
    import copy

    inputs, _ = world
    loaded = load_captioner(str(tiny_blip_dir), settings)
    first = engine_for(loaded)
    before = caption_images(loaded, inputs[:4], GREEDY)
    changed = copy.deepcopy(loaded.model)
    with torch.no_grad():
        changed.text_decoder.cls.predictions.bias[:] = 0
        changed.text_decoder.cls.predictions.bias[5 + 100] = 50.0  # one token wins every step
    loaded.model = changed
    after = caption_images(loaded, inputs[:4], GREEDY)
    assert engine_for(loaded) is not first and first.closed
    assert [r.caption for r in after] != [r.caption for r in before]
    assert len({r.caption for r in after}) == 1


def test_the_worker_leaves_cores_to_decoding_and_no_other_thread_changes_count(demo, world):
    """While images decode beside it the worker runs on its share; alone, it tries torch's default first (then
    whichever count it measures faster, tests/test_engine_threads.py); sessions and training keep their count."""

    def fresh_thread_count():
        seen = []
        probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        probe.start()
        probe.join()
        return seen[0]

    default, here = fresh_thread_count(), torch.get_num_threads()
    engine = CaptionEngine(demo, limits=EngineLimits(max_batch=1, threads_beside_decoding=1))
    seen, run, prepare = [], engine.step.run, engine.stage.prepare_one
    engine.step.run = lambda pixels, options: seen.append(torch.get_num_threads()) or run(pixels, options)
    engine.stage.prepare_one = lambda item, thumbnails: time.sleep(0.15) or prepare(item, thumbnails)  # slow decoding
    engine.stage.workers = 1
    with engine:
        engine.caption(world[0][:4], GREEDY)
    assert seen[0] == 1 and seen[-1] == default, seen
    assert (fresh_thread_count(), torch.get_num_threads()) == (default, here)


@pytest.mark.parametrize("free_gib", [80, 8, 0.1])
def test_on_a_gpu_batches_are_sized_by_the_free_memory_it_has(monkeypatch, free_gib):
    """Blip-base's shapes: a big card fills its share of free memory with sequences; a nearly full one still runs 8."""
    from transformers import BlipConfig

    from captioner.engine.limits import GPU_MEMORY_SHARE, sequence_bytes

    free = int(free_gib * 2**30)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    model = type("Blip", (), {"config": BlipConfig()})()
    limits = {dtype: EngineLimits.for_model(model, "cuda", dtype) for dtype in (torch.bfloat16, torch.float32)}
    share = free * GPU_MEMORY_SHARE
    for dtype, limit in limits.items():
        one = sequence_bytes(model.config, dtype)
        assert limit.max_sequences == 8 or share - one < limit.max_sequences * one <= share
    if free_gib == 80:
        assert limits[torch.bfloat16].rows_for(1) == 256 and limits[torch.bfloat16].rows_for(3) >= 200
        half = limits[torch.bfloat16].max_sequences // 2  # fp32 sequences take twice the bytes
        assert half - 1 <= limits[torch.float32].max_sequences <= half + 1
    if free_gib == 0.1:
        assert limits[torch.bfloat16].max_sequences == 8
    odd = type("Odd", (), {"config": object()})()
    assert EngineLimits.for_model(odd, "cuda", torch.bfloat16).max_sequences == 256
