"""Model specs: hub ids, folders, demo and active; the demo fallback; device, dtype and quantization."""

import json
from dataclasses import replace
import time

import pytest
import torch

from captioner.loading import serve
from captioner.models import (
    ModelError, check_quantization, load_captioner, resolve_device, resolve_dtype, resolve_spec,
)  # fmt: skip
from captioner.settings import DEFAULT_CAPTION_MODEL, Settings, SettingsError


def test_demo_spec_names_the_embedded_model(settings):
    spec = resolve_spec("demo", "caption", settings)
    assert spec.source == "demo" and spec.version.startswith("demo-")
    assert (spec.location and json.loads(open(f"{spec.location}/demo.json").read())["version"] == spec.version)


def test_folder_hub_and_missing_folder_specs(settings, tiny_blip_dir):
    local = resolve_spec(str(tiny_blip_dir), "caption", settings)
    assert local.source == "local" and local.version == tiny_blip_dir.name
    hub = resolve_spec("Salesforce/blip-image-captioning-large", "caption", settings)
    assert hub.source == "hub" and hub.location == "Salesforce/blip-image-captioning-large"
    with pytest.raises(ModelError, match="does not exist"):
        resolve_spec("./no/such/model", "caption", settings)
    with pytest.raises(ModelError, match="empty"):
        resolve_spec("  ", "caption", settings)


def test_active_spec_follows_active_json_else_the_default(settings, tiny_blip_dir):
    assert resolve_spec("active", "caption", settings).location == DEFAULT_CAPTION_MODEL
    version_dir = settings.models_dir / "v0001"
    version_dir.mkdir(parents=True)
    (settings.models_dir / "active.json").write_text(json.dumps({"version": "v0001"}))
    spec = resolve_spec("active", "caption", settings)
    assert spec.source == "version" and spec.version == "v0001" and spec.location == str(version_dir)
    with pytest.raises(ModelError, match="captioning"):
        resolve_spec("active", "qa", settings)


def test_unreachable_hub_model_falls_back_to_demo_quickly_and_says_why(settings):
    started = time.time()
    served = serve("caption", replace(settings, caption_model=DEFAULT_CAPTION_MODEL))
    assert time.time() - started < 30
    assert served.model.spec.source == "demo" and served.model.name == "demo"
    assert DEFAULT_CAPTION_MODEL in served.fallback_reason and "offline" in served.fallback_reason
    assert "demo captioner" in served.fallback_reason


def test_no_fallback_when_not_allowed(settings):
    with pytest.raises(ModelError, match="offline"):
        load_captioner("Salesforce/blip-image-captioning-large", settings)


def test_a_saved_checkpoint_loads_through_the_real_path(settings, tiny_blip_dir):
    loaded = load_captioner(str(tiny_blip_dir), settings)
    assert loaded.version == tiny_blip_dir.name
    device = resolve_device(settings.device)  # the suite's device: cpu, or the machine's with CAPTIONER_TEST_DEVICE=auto
    assert loaded.device.type == device.type and loaded.dtype == resolve_dtype(settings.dtype, device)
    assert not loaded.model.training


def test_folders_that_are_not_blip_captioners_are_refused_clearly(settings, tmp_path, tiny_blip_dir):
    from transformers import BertConfig

    other = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(other)
    with pytest.raises(ModelError, match="'bert' model"):
        load_captioner(str(other), settings)
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_blip_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not really weights")
    with pytest.raises(ModelError, match="could not load"):
        load_captioner(str(broken), settings)
    clip = tmp_path / "clip"  # an open_clip folder (hf-hub layout), as CAPTIONER_SEARCH_MODEL=local-dir: reads it
    clip.mkdir()
    (clip / "open_clip_config.json").write_text("{}")
    with pytest.raises(ModelError, match=f"^{clip} is an open_clip model, a search model \\(local-dir:{clip}\\), not a caption model$"):
        load_captioner(str(clip), settings)
    (clip / "open_clip_config.json").unlink()
    with pytest.raises(ModelError, match=f"^{clip} holds no config.json: it is not a save_pretrained checkpoint$"):
        load_captioner(str(clip), settings)


def test_device_dtype_and_quantization_rules():
    cpu = resolve_device("auto")
    assert cpu.type == ("cuda" if torch.cuda.is_available() else cpu.type)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelError, match="CAPTIONER_DTYPE=float16 is not supported on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        check_quantization("8bit", torch.device("cpu"))
    check_quantization("none", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CAPTIONER_DEVICE=cuda asks for a CUDA GPU, but none is available"):
            resolve_device("cuda")


def test_quantization_on_cpu_fails_at_load_with_a_clear_message(home, monkeypatch, tiny_blip_dir):
    monkeypatch.setenv("CAPTIONER_DEVICE", "cpu")
    monkeypatch.setenv("CAPTIONER_QUANTIZE", "4bit")
    with pytest.raises(ModelError, match="'4bit' needs a CUDA GPU"):
        load_captioner(str(tiny_blip_dir), Settings.from_env())


def test_bad_settings_name_the_variable(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_DEVICE", "tpu")
    with pytest.raises(SettingsError, match="CAPTIONER_DEVICE='tpu'"):
        Settings.from_env()
    monkeypatch.setenv("CAPTIONER_DEVICE", "cuda:1")
    monkeypatch.setenv("CAPTIONER_QUANTIZE", "3bit")
    with pytest.raises(SettingsError, match="CAPTIONER_QUANTIZE"):
        Settings.from_env()
    monkeypatch.setenv("CAPTIONER_QUANTIZE", "none")
    monkeypatch.setenv("CAPTIONER_HOME", __file__)
    with pytest.raises(SettingsError, match="CAPTIONER_HOME=.*test_models.py is a file, not a folder"):
        Settings.from_env()


def test_settings_paths_follow_captioner_home(home):
    settings = Settings.from_env()
    assert settings.feedback_csv == home / "data" / "feedback.csv"
    assert settings.models_dir == home / "models" and settings.gallery == home / "data" / "gallery"


def test_a_hub_mirror_on_its_own_port_counts_as_reachable(monkeypatch):
    import socket

    from captioner.models import hub_offline_reason, hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as mirror:  # a mirror such as http://hf-mirror:8080, listening where HF_ENDPOINT says
        mirror.bind(("127.0.0.1", 0))
        mirror.listen()
        port = mirror.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2) and hub_offline_reason() is None  # it was asked on 443 and judged offline
    assert not hub_reachable(timeout=2)  # closed now: the same port refuses
    assert hub_offline_reason() == f"127.0.0.1:{port} cannot be reached (offline)"


def test_hf_hub_offline_is_named_as_the_reason(monkeypatch):
    from captioner.models import hub_offline_reason

    monkeypatch.setenv("HF_HUB_OFFLINE", "ON")  # huggingface_hub counts on as true too
    assert hub_offline_reason() == "HF_HUB_OFFLINE is set (offline)"
    with pytest.raises(ModelError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_captioner("Salesforce/blip-image-captioning-large", Settings.from_env({"CAPTIONER_DEVICE": "cpu"}))


def test_a_misspelled_setting_is_named_with_the_one_it_probably_meant(home, tmp_path):
    from captioner.settings import unknown_variables
    from conftest import run_cli

    env = {"CAPTIONER_DEVICES": "cpu", "CAPTIONER_HOME": ".", "CAPTIONER_TEST_DEVICE": "auto", "CAPTIONER_FOO": "1"}
    assert unknown_variables(env) == [
        "CAPTIONER_DEVICES is not a setting and is ignored (did you mean CAPTIONER_DEVICE?)",
        "CAPTIONER_FOO is not a setting and is ignored; the settings are CAPTIONER_HOME, CAPTIONER_CAPTION_MODEL, "
        "CAPTIONER_QA_MODEL, CAPTIONER_SEARCH_MODEL, CAPTIONER_CHAT_MODELS, CAPTIONER_GALLERY, "
        "CAPTIONER_GALLERY_FOLLOW_LINKS, CAPTIONER_DEVICE, CAPTIONER_DTYPE, CAPTIONER_QUANTIZE, CAPTIONER_ADMIN_PASSWORD, "
        "CAPTIONER_STYLE_MODEL, CAPTIONER_OPENAI_TIMEOUT",
    ]
    done = run_cli("feedback", "list", env={"CAPTIONER_CAPTION_MODLE": "demo"})  # it used to list as if all was well
    assert done.returncode == 0
    assert "note: CAPTIONER_CAPTION_MODLE is not a setting and is ignored (did you mean CAPTIONER_CAPTION_MODEL?)" in done.stderr


def test_the_readme_describes_every_setting_and_only_settings_that_exist():
    import re

    from captioner.settings import VARIABLES
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(CAPTIONER_[A-Z_]+)` \|", readme, flags=re.M))
    assert table == set(VARIABLES)  # each with its meaning and default in the Configuration table
    mentioned = set(re.findall(r"CAPTIONER_[A-Z_]+", readme)) - {"CAPTIONER_TEST_DEVICE", "CAPTIONER_DEVICES"}  # the suite's, a typo
    assert mentioned <= set(VARIABLES), mentioned - set(VARIABLES)
