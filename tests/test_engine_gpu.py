"""The engine's CUDA paths: JPEGs decoded by nvjpeg and preprocessed on the GPU (the device stage), pinned uint8
batches normalised on the GPU, memory-sized limits, the demo on CUDA."""

import pytest
import torch
from test_engine_pixels import bad_files, decodes_during_model_calls, demo_jpegs

import images_zoo as zoo

from captioner.caption import GenerationOptions, caption_images
from captioner.demo.quality import demo_inputs
from captioner.engine import EngineLimits, engine_for, shutdown_engines
from captioner.engine.limits import sequence_bytes
from captioner import gpu_images
from captioner.engine import DeviceImageStage
from captioner.engine.pixels import CpuImageStage, pixel_spec
from captioner.images import ImageInput
from captioner.models import load_captioner
from captioner.settings import Settings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GREEDY = GenerationOptions(num_beams=1, max_new_tokens=12)


@pytest.fixture(scope="module")
def cuda_demo():
    loaded = load_captioner("demo", Settings(home=".", device="cuda", dtype="float32"))
    yield loaded
    shutdown_engines()


def test_the_gpu_collate_equals_the_cpu_one(cuda_demo):
    inputs, _ = demo_inputs(8, seed=5)
    on_gpu = CpuImageStage(cuda_demo.processor, "cuda", torch.float32)
    on_cpu = CpuImageStage(cuda_demo.processor, "cpu", torch.float32)
    pixels = [p.pixels for p in on_cpu.prepare(inputs, thumbnails=False)]
    gpu_batch, cpu_batch = on_gpu.collate(pixels), on_cpu.collate(pixels)
    assert gpu_batch.device.type == "cuda" and gpu_batch.dtype == torch.float32
    assert (gpu_batch.cpu() - cpu_batch).abs().max() <= 1e-5
    assert on_gpu.collate(pixels[:1]).shape == (1, 3, 64, 64)
    on_gpu.close(), on_cpu.close()


def test_the_demo_on_cuda_captions_like_on_the_cpu(cuda_demo):
    inputs, samples = demo_inputs(64, seed=6)
    cpu = load_captioner("demo", Settings(home=".", device="cpu"))
    on_gpu, on_cpu = caption_images(cuda_demo, inputs, GREEDY), caption_images(cpu, inputs, GREEDY)
    assert [r.caption for r in on_gpu] == [s.caption for s in samples] == [r.caption for r in on_cpu]
    assert [r.score for r in on_gpu] == pytest.approx([r.score for r in on_cpu], abs=1e-3)
    step = engine_for(cuda_demo).step  # the fast decoder with CUDA graphs served them, not a fallback
    assert step.last_path == "fast" and step.stats["graph_captures"] > 0 and step.stats["graph_replays"] > 0


def test_32_users_on_cuda_each_get_their_own_caption(cuda_demo):
    import threading

    inputs, samples = demo_inputs(32, seed=7)
    engine = engine_for(cuda_demo)
    before = engine.batches_run
    got = {}

    def caption_one(i: int) -> None:
        got.setdefault(i, caption_images(cuda_demo, [inputs[i]], GREEDY)[0].caption)

    threads = [threading.Thread(target=caption_one, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [got[i] for i in range(32)] == [s.caption for s in samples]
    assert engine.batches_run - before < 32, "no two users' requests shared a batch"


def test_bf16_demo_on_cuda_is_right_on_fresh_images():
    loaded = load_captioner("demo", Settings(home=".", device="cuda", dtype="bfloat16"))
    inputs, samples = demo_inputs(200, seed=8)
    results = caption_images(loaded, inputs, GREEDY)
    right = sum(r.caption == s.caption for r, s in zip(results, samples))
    assert right >= 0.97 * len(samples)


def test_limits_on_cuda_follow_the_free_memory(cuda_demo):
    limits = EngineLimits.for_model(cuda_demo.model, cuda_demo.device, torch.bfloat16)
    free, _ = torch.cuda.mem_get_info()
    assert 8 <= limits.max_sequences <= 4096 and limits.threads_beside_decoding is None
    assert limits.max_sequences * sequence_bytes(cuda_demo.model.config, torch.bfloat16) <= free


def test_the_engine_on_cuda_decodes_jpegs_with_nvjpeg_and_a_bad_file_fails_alone(cuda_demo, monkeypatch):
    decoded_on = []
    real = gpu_images._decode_jpegs

    def counted(items, device):  # the JPEGs nvjpeg decoded (one it refuses comes back None, for the door)
        decoded = real(items, device)
        decoded_on.append((sum(tensor is not None for tensor in decoded), device.type))
        return decoded

    monkeypatch.setattr(gpu_images, "_decode_jpegs", counted)
    jpegs, truths = demo_jpegs(40, seed=9)
    cmyk = ImageInput("cmyk.jpg", zoo.cmyk_jpeg("circle", "red"))  # refused by the header reader: the door decodes it
    inputs = jpegs[:10] + bad_files() + [cmyk] + jpegs[10:]
    engine = engine_for(cuda_demo)
    assert isinstance(engine.stage, DeviceImageStage)
    on_gpu = caption_images(cuda_demo, inputs, GREEDY)
    assert sum(count for count, _ in decoded_on) == len(jpegs) and {device for _, device in decoded_on} == {"cuda"}
    cpu = load_captioner("demo", Settings(home=".", device="cpu"))
    on_cpu = caption_images(cpu, inputs, GREEDY)
    assert [r.error for r in on_gpu] == [r.error for r in on_cpu]
    assert [r.name for r in on_gpu if not r.ok] == ["garbage.jpg", "cut.jpg", "empty.png"]
    assert [r.caption for r in on_gpu if r.ok] == truths[:10] + [on_cpu[13].caption] + truths[10:]
    assert [r.caption for r in on_gpu] == [r.caption for r in on_cpu]


def test_nvjpeg_pixels_are_within_one_level_of_the_cpu_device_path(cuda_demo):
    """nvjpeg's IDCT and chroma upsampling round differently from libjpeg-turbo's: at most one 8-bit level."""
    jpegs, _ = demo_jpegs(16, seed=10, max_side=400)
    spec = pixel_spec(cuda_demo.processor.image_processor)
    one_level = 1 / 255 / min(spec.std)
    batches = {}
    for device, dtype in (("cuda", torch.float32), ("cpu", torch.float32), ("cuda", torch.bfloat16)):
        stage = DeviceImageStage(spec, device, dtype)
        batches[device, dtype] = stage.collate([p.pixels for p in stage.prepare(jpegs, thumbnails=False)])
        stage.close()
    on_gpu, on_cpu = batches["cuda", torch.float32], batches["cpu", torch.float32]
    assert on_gpu.device.type == "cuda" and batches["cuda", torch.bfloat16].dtype == torch.bfloat16
    assert (on_gpu.cpu() - on_cpu).abs().max() <= one_level + 1e-5


def test_on_cuda_the_next_chunk_is_decoded_by_nvjpeg_while_the_model_works(cuda_demo, monkeypatch):
    jpegs, _ = demo_jpegs(60, seed=11, max_side=300)
    engine = engine_for(cuda_demo)
    decodes, during = decodes_during_model_calls(engine, jpegs, monkeypatch)
    assert {device for _, device in decodes} == {"cuda"} and len(decodes) >= 3
    assert during, "no image was decoded while the model was working"
