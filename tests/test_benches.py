"""Every benchmark runs end to end at toy sizes on the CPU and prints its side-by-side verdict: a bench that rots
(an API it calls changed) is found here, not on the one GPU session that was lent to measure with it."""

import subprocess
import sys

import pytest

from conftest import ROOT, child_env, needs

BENCHES = {
    "decoder_speed": (["--batches", "1", "2", "--repeats", "1", "--tokens", "5"], "decoder stats:"),
    # bfloat16: the run also times an fp32 copy of the model (what a CPU with AMX gains)
    "caption_throughput": (["--images", "8", "--seed-images", "2", "--rounds", "1", "--tokens", "5", "--dtype", "bfloat16"],
                           "its fp32 img/s"),
    "caption_latency": (["--samples", "2", "--users", "4", "--rounds", "1", "--tokens", "5"], "4 concurrent users:"),
    "index_throughput": (["--images", "12", "--plain-images", "4", "--dtype", "bfloat16"], "its fp32 images/s"),
    "pixel_throughput": (["--images", "8", "--batch-size", "4", "--config", "none"], "resampling once is"),
    "finetune_speed": (["--rows", "8", "--epochs", "1", "--batch-size", "4"], "this project:"),
    "chat_latency": (["--runs", "1", "--max-new-tokens", "4", "--no-endpoint"], "captioner streaming: throughput"),
    "search_latency": (["--sizes", "3000", "--queries", "10", "--model", "demo"], "speed-up over the plain way"),
    "feedback_log": (["--sizes", "0,200", "--repeat", "1", "--cli-repeat", "1"], "admin at 200 rows"),
}


@pytest.mark.parametrize("bench", sorted(BENCHES))
def test_the_bench_runs_at_toy_sizes_and_prints_its_verdict(bench, tmp_path):
    arguments, verdict = BENCHES[bench]
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", *arguments], capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env=child_env(CAPTIONER_DEVICE="cpu", CAPTIONER_HOME=str(tmp_path), HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert verdict in done.stdout, done.stdout[-2000:]


def test_the_index_bench_times_files_that_come_back_and_none_is_embedded_again(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.index_throughput", "--move", "--large", "60", "--new", "20", "--threads", "1"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env=child_env(CAPTIONER_DEVICE="cpu", CAPTIONER_HOME=str(tmp_path), HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "files back: 0 of 20 embedded again" in done.stdout, done.stdout
    assert "a remounted gallery: 0 of 80 embedded again" in done.stdout, done.stdout


def test_the_chat_bench_asks_transformers_serve_too(tmp_path):
    """The endpoint column, as README shows it: `--tiny llava` starts `transformers serve` through tests/chat_servers,
    imported from the checkout's root (it failed there: ModuleNotFoundError: local_servers)."""
    needs("fastapi")
    needs("openai")
    done = subprocess.run(
        [sys.executable, "-m", "bench.chat_latency", "--tiny", "llava", "--runs", "1", "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env=child_env(CAPTIONER_DEVICE="cpu", CAPTIONER_HOME=str(tmp_path), HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "endpoint (transformers serve)" in done.stdout, done.stdout[-2000:]


def test_the_device_check_script_knows_every_step_it_documents():
    script = (ROOT / "bench" / "device_check.sh").read_text()
    documented = script.split("# Steps: ", 1)[1].split(" (", 1)[0].split()
    done = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), "no-such-step"], capture_output=True, text=True,
                          env=child_env(OUT=str(ROOT / "test-artifacts" / "device-check"), PY=sys.executable), timeout=120)  # fmt: skip
    assert done.returncode == 2 and "unknown step no-such-step" in done.stdout
    assert all(f"    {step})" in script for step in documented) and f"STEPS=\"{' '.join(documented)}\"" in script


def test_the_device_kit_carries_the_pytest_plugins_the_suite_asks_for():
    """The device image has pytest but none of its plugins: pytest.ini's --timeout needs pytest-timeout there too,
    or `pytest -m gpu` stops before collecting (as it did in a dry run on the device's package set)."""
    addopts = next(line for line in (ROOT / "pytest.ini").read_text().splitlines() if line.startswith("addopts"))
    prep = (ROOT / "bench" / "device_prep.sh").read_text()
    assert "--timeout" not in addopts or "pytest-timeout==" in prep


def test_the_finetune_bench_times_this_checkouts_code(tmp_path):
    """Its ways run in child processes: started as a file they imported the first `captioner` on sys.path (an
    installed copy of another checkout, or none on the device machine), not the checkout the bench came from."""
    decoy = tmp_path / "decoy"
    for package in ("captioner", "finetune"):
        (decoy / package).mkdir(parents=True)
        (decoy / package / "__init__.py").write_text("raise ImportError('a copy of the project other than this checkout')\n")
    done = subprocess.run(
        [sys.executable, "-m", "bench.finetune_speed", "--rows", "4", "--epochs", "1", "--batch-size", "4"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
        env={**child_env(CAPTIONER_DEVICE="cpu", CAPTIONER_HOME=str(tmp_path), HF_HUB_OFFLINE="1"), "PYTHONPATH": str(decoy)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "this project:" in done.stdout, done.stdout[-2000:]


def device_kit(tmp_path, carried: dict[str, str]):
    """A copy of device_check.sh in a checkout of its own carrying these .device files, and a stand-in python that
    logs what it is asked to run (the script's own steps, none of the real work)."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "device_check.sh").write_text((ROOT / "bench" / "device_check.sh").read_text())
    for name, text in carried.items():
        (tmp_path / ".device" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ".device" / name).write_text(text)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\n')
    python.chmod(0o755)
    return lambda *steps: subprocess.run(
        ["bash", str(tmp_path / "bench" / "device_check.sh"), *steps], capture_output=True, text=True, timeout=60,
        env=child_env(OUT=str(tmp_path / "out"), PY=str(python), BUDGET="60"),
    )  # fmt: skip


def test_a_quantized_call_carrying_bitsandbytes_alone_installs_it(tmp_path):
    """The quantized step's call carries .device/bnb alone (bitsandbytes' wheel and the rest exceed one call's
    64 MiB); its wheel was installed only beside the others, so chat-8bit failed on an import there."""
    run = device_kit(tmp_path, {"bnb/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl": ""})
    done = run("quantized")
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [line for line in (tmp_path / "calls.txt").read_text().splitlines() if line.startswith("-m pip install")]
    assert len(installs) == 1 and "bnb/bitsandbytes-0.50.2" in installs[0]


def test_without_blip_base_the_device_check_stops_before_any_step(tmp_path):
    """Every BLIP bench would fail there one after another, each after loading torch: it is said at once instead."""
    run = device_kit(tmp_path, {"wheels/ftfy-6.3.1-py3-none-any.whl": ""})
    done = run("tests", "decoder")
    assert done.returncode == 2 and "no BLIP-base config in .device/blip-base" in done.stdout
    assert not (tmp_path / "calls.txt").exists()
    assert run("tests", "index").returncode == 0  # steps that need no BLIP config still run


def test_make_bench_runs_every_bench():
    """Every speed claim is a bench, and `make bench` runs them all (decoder, pixel and feedback log ones were left out)."""
    helpers = {"__init__", "caption_common", "random_models"}
    benches = {path.stem for path in (ROOT / "bench").glob("*.py")} - helpers
    makefile = (ROOT / "Makefile").read_text()
    assert {bench for bench in benches if f"-m bench.{bench}\n" not in makefile} == set()


def test_the_chat_bench_builds_its_random_model_once_per_models_dir(tmp_path, monkeypatch):
    """device_check's chat and quantized steps load the same random opt-2.7b: built and saved once, not per step."""
    from types import SimpleNamespace

    from bench import chat_latency

    built = []

    def build(family, size, folder):
        (folder / "config.json").parent.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        built.append(folder)
        return folder

    monkeypatch.setattr(chat_latency, "build_random", build)
    args = SimpleNamespace(random="blip2", size="opt-2.7b", models_dir=tmp_path / "models")
    first = chat_latency.random_model(args, tmp_path / "one")
    assert chat_latency.random_model(args, tmp_path / "two") == first and len(built) == 1
    (first / "complete").unlink()  # as a build cut short leaves it
    assert chat_latency.random_model(args, tmp_path / "three") == first and len(built) == 2
    args.models_dir = None
    assert chat_latency.random_model(args, tmp_path / "four") == tmp_path / "four" / "model" and len(built) == 3
