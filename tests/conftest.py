"""Shared fixtures: an isolated CAPTIONER_HOME, a tiny BLIP saved to disk, demo images, and bad inputs.

The device: the default suite runs on the CPU whatever the machine has (CAPTIONER_DEVICE=cpu for this process, the
app under AppTest and every child process; fp32, so captions and oracle comparisons are exact and the same
everywhere). CUDA paths are the `gpu`-marked tests: they name device="cuda" themselves, are skipped without CUDA,
and run with `pytest -m gpu` (or --runslow). CAPTIONER_TEST_DEVICE=auto runs the default suite on the machine's
own device instead (tests about CPU behaviour pin the CPU themselves).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from captioner import runtime

ROOT = Path(__file__).resolve().parents[1]
runtime.configure("cli")  # threads and OpenMP wait policy, before any test loads torch (the cores are shared)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SUITE_DEVICE = os.environ.get("CAPTIONER_TEST_DEVICE", "cpu")
os.environ["CAPTIONER_DEVICE"] = SUITE_DEVICE


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    """slow: only with --runslow. gpu: only where CUDA is available, and asked for (-m gpu, or --runslow)."""
    runslow = config.getoption("--runslow")
    gpu_asked = runslow or "gpu" in (config.getoption("markexpr") or "")
    gpu_items = [item for item in items if "gpu" in item.keywords]
    has_cuda = bool(gpu_items) and gpu_asked and _cuda_available()
    for item in items:
        if "gpu" in item.keywords:
            if not gpu_asked:
                item.add_marker(pytest.mark.skip(reason="GPU test: run with -m gpu"))
            elif not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        elif "slow" in item.keywords and not runslow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# A machine without the app's full install: the GPU device image has no streamlit, playwright, openai, datasets or
# transformers' serving extras (bench/device_check.sh's `suite` step sets it). Elsewhere make test installs them all.
PARTIAL_INSTALL = os.environ.get("CAPTIONER_TEST_PARTIAL") == "1"


def needs(module: str) -> None:
    """Where CAPTIONER_TEST_PARTIAL=1, skip the calling test (or module) if module is not installed; elsewhere a
    missing module fails the test as it would without this."""
    if PARTIAL_INSTALL:
        pytest.importorskip(module, reason=f"{module} is not installed here (CAPTIONER_TEST_PARTIAL=1)")


def write_non_utf8_name(folder, name: bytes, data: bytes) -> bytes:
    """Write data under a file name that is not UTF-8 (Latin-1, as a zip made on an old Windows unpacks on Linux);
    the calling test is skipped where the file system refuses such names."""
    try:
        with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
            handle.write(data)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    return name


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child process, plus extra, with the repository put first on PYTHONPATH
    (extended, never replaced: a GPU machine's PYTHONPATH may carry what torch needs)."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(paths)}


def at_a_real_pace(monkeypatch, model, seconds: float = 0.005) -> None:
    """Slow every forward call of model (and of the decoder its generate hands over to: BLIP's text_decoder, BLIP-2's
    language_model) by `seconds`: a tiny model answers in a blink, so on a busy machine a reader could wake only
    after the whole answer and rightly get it in one piece; streaming tests need a model's pace."""
    import functools
    import time

    decoders = (model, getattr(model, "text_decoder", None), getattr(model, "language_model", None))
    for module in {id(m): m for m in decoders if m is not None}.values():
        forward = module.forward

        @functools.wraps(forward)  # generate reads forward's signature
        def paced(*args, _forward=forward, **kwargs):
            time.sleep(seconds)
            return _forward(*args, **kwargs)

        monkeypatch.setattr(module, "forward", paced)


def count_decodes(monkeypatch, picture: bytes) -> list[bool]:
    """Every image the one door (captioner.images.decode) decodes from now on: True where it is this picture."""
    import captioner.images

    decoded, decode = [], captioner.images.decode

    def counted(source, *args, **kwargs):
        decoded.append(source.data == picture)
        return decode(source, *args, **kwargs)

    monkeypatch.setattr(captioner.images, "decode", counted)
    return decoded


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh CAPTIONER_HOME for one test; nothing outside it is touched."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("CAPTIONER_HOME", str(path))
    monkeypatch.setenv("CAPTIONER_DEVICE", SUITE_DEVICE)
    for name in ("CAPTION_MODEL", "DTYPE", "QUANTIZE", "GALLERY"):
        monkeypatch.delenv(f"CAPTIONER_{name}", raising=False)
    yield path
    if "captioner.loading" in sys.modules:  # this home's models are not the next test's last good ones
        sys.modules["captioner.loading"].forget()


@pytest.fixture
def settings(home):
    from captioner.settings import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BLIP captioner, saved with save_pretrained like any real checkpoint."""
    from demo_training.captioner import CaptionRecipe, caption_config, processor_for
    from transformers import BlipForConditionalGeneration
    import torch

    torch.manual_seed(0)
    recipe = CaptionRecipe(image_size=32, patch_size=8, hidden=32, vision_layers=1, text_layers=1, heads=2)
    processor = processor_for(recipe)
    model = BlipForConditionalGeneration(caption_config(recipe, processor.tokenizer))
    folder = tmp_path_factory.mktemp("tiny-blip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def demo_png():
    """A function making PNG bytes of one demo-world image: demo_png(shape, color, side)."""
    from captioner.demo.world import render

    def make(shape="circle", color="red", side=128):
        return png_bytes(render(shape, color, side, (side * 0.2, side * 0.2, side * 0.75, side * 0.75)))

    return make


def run_cli(*args, env=None, cwd=None, timeout=300):
    """Run this checkout's `python -m captioner ...` in a subprocess (from cwd, by default the checkout); returns the
    CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "captioner", *map(str, args)],
        capture_output=True, text=True, env=child_env(**(env or {})), cwd=cwd or ROOT, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_vqa_dir(tmp_path_factory) -> Path:
    from tiny_models import build_vqa

    return build_vqa(tmp_path_factory.mktemp("tiny-vqa"))


@pytest.fixture(scope="session")
def tiny_blip2_dir(tmp_path_factory) -> Path:
    from tiny_models import build_blip2

    return build_blip2(tmp_path_factory.mktemp("tiny-blip2"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    from tiny_models import build_llava

    return build_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from tiny_models import build_open_clip

    base = tmp_path_factory.mktemp("tiny-clip")
    return build_open_clip(base / "configs", base / "model")


def _app_test_without_pages_directory_mode() -> None:
    """AppTest as a server after its first run: AppTest re-detects pages/ before every run, which would put each
    run through Streamlit's file-based mode and pages.inside_the_app's rerun (dropping button clicks)."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import app_test

    class AppPagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False  # what inside_the_app does once per server

    app_test.PagesManager = AppPagesManager  # the fresh-server path itself is tested in Chromium (test_browser.py)


def start_app(page: str | None = None):
    """The whole app in Streamlit's AppTest, run once (and switched to a page, e.g. pages/chat.py)."""
    needs("streamlit")
    from streamlit.testing.v1 import AppTest

    _app_test_without_pages_directory_mode()

    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    app.run()
    if page:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app
