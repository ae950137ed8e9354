"""Shared fixtures: an isolated CAPTIONER_HOME, a tiny BLIP saved to disk, demo images, and bad inputs."""

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


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords or "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh CAPTIONER_HOME for one test; nothing outside it is touched."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("CAPTIONER_HOME", str(path))
    for name in ("CAPTION_MODEL", "DEVICE", "DTYPE", "QUANTIZE", "GALLERY"):
        monkeypatch.delenv(f"CAPTIONER_{name}", raising=False)
    return path


@pytest.fixture
def settings(home):
    from captioner.settings import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BLIP captioner, saved with save_pretrained like any real checkpoint."""
    from captioner.demo.train import CaptionRecipe, caption_config, processor_for
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
    """Run `python -m captioner ...` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "captioner", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=timeout,
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
    from streamlit.testing.v1 import AppTest

    _app_test_without_pages_directory_mode()

    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    app.run()
    if page:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app
