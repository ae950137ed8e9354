"""The one loading policy: a corrupt models/active.json or a broken live version is said everywhere, and the last
good version keeps serving (CLI, `models list`, the app's sidebar)."""

import json
import shutil

import images_zoo as zoo
from conftest import run_cli, start_app
from page_text import shown
from captioner import registry
from captioner.models import demo_model_dir


def make_version(home, name, broken=False):
    """A published version: a copy of the demo captioner's checkpoint (garbage weights when broken)."""
    shutil.copytree(demo_model_dir("caption"), home / "models" / name)
    (home / "models" / name / "train_args.json").write_text(json.dumps({"created": "2026-11-22", "base": "demo", "rows_used": 3}))
    if broken:
        (home / "models" / name / "model.safetensors").write_bytes(b"not a model")


def caption_cli(home, tmp_path):
    picture = tmp_path / "red.png"
    picture.write_bytes(zoo.encode(zoo.demo("circle", "red"), "PNG"))
    return run_cli("caption", picture, env={"CAPTIONER_CAPTION_MODEL": "demo"})


def test_a_corrupt_active_json_is_said_and_the_newest_good_version_keeps_captioning(home, tmp_path):
    make_version(home, "v0001")
    (home / "models" / "active.json").write_text('{"version": "v00')  # a torn hand edit
    done = caption_cli(home, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "active.json is corrupt" in done.stderr and "Captioning with v0001" in done.stderr
    assert json.loads(done.stdout)["caption"] == "a red circle"
    listed = run_cli("models", "list", env={"CAPTIONER_CAPTION_MODEL": "demo"})
    assert listed.returncode == 1 and "active.json is corrupt" in listed.stderr and "serving v0001 instead" in listed.stderr
    assert any(line.startswith("* v0001") for line in listed.stdout.splitlines()), listed.stdout
    assert "default model" not in listed.stdout


def test_a_broken_version_activated_by_hand_gives_way_to_the_last_good_one(home, tmp_path):
    make_version(home, "v0001")
    make_version(home, "v0002", broken=True)
    (home / "models" / "active.json").write_text(json.dumps({"version": "v0002"}))  # bypassing `models activate`
    done = caption_cli(home, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "v0002" in done.stderr and "Captioning with v0001" in done.stderr
    assert json.loads(done.stdout)["caption"] == "a red circle"
    listed = run_cli("models", "list", env={"CAPTIONER_CAPTION_MODEL": "demo"})
    lines = listed.stdout.splitlines()
    assert listed.returncode == 1 and "v0002/model.safetensors is truncated or corrupt" in listed.stderr
    assert any(line.startswith("! v0002") and line.endswith("(broken)") for line in lines), lines
    assert any(line.startswith("* v0001") for line in lines), lines


def test_a_version_without_weights_is_said_in_sentences(home, tmp_path):
    make_version(home, "v0001")
    make_version(home, "v0002")
    (home / "models" / "v0002" / "model.safetensors").unlink()  # a copy cut short by hand
    (home / "models" / "active.json").write_text(json.dumps({"version": "v0002"}))
    done = caption_cli(home, tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["caption"] == "a red circle", done.stderr
    assert f"found in directory {home / 'models' / 'v0002'}. Captioning with v0001, the newest" in done.stderr
    assert ".." not in done.stderr


def test_the_sidebar_says_active_json_is_corrupt_and_keeps_the_last_good_version(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    make_version(home, "v0001")
    registry.activate(home / "models", "v0001")
    app = start_app()
    assert not app.sidebar.warning
    (home / "models" / "active.json").write_text("{ not json")
    app.run()
    warnings = [shown(w.value) for w in app.sidebar.warning]
    assert any("active.json is corrupt" in w and "Still captioning with active (v0001)" in w for w in warnings), warnings
    assert any("version v0001" in c.value for c in app.sidebar.caption)
