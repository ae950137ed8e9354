"""`python -m finetune` on tiny and demo models in a temporary CAPTIONER_HOME: publish, refuse, crash, learn."""

import json
import signal
import subprocess
import sys

import pytest
import torch

from captioner import registry
from captioner.demo.quality import demo_inputs
from captioner.feedback import FeedbackLog
from captioner.models import load_captioner
from captioner.settings import Settings
from conftest import ROOT, child_env, run_cli
from finetune import FinetuneConfig, FinetuneError, Refused, main
from finetune.config import parse_args


def log_rows(home, n=24, status="approved", seed=3, shapes=("circle", "square", "triangle"), wrong=False):
    """Approved caption rows for n demo-world images (corrections of a made-up wrong output)."""
    log = FeedbackLog(home / "data")
    inputs, samples = demo_inputs(n, seed, shapes=shapes)
    for item, truth in zip(inputs, samples):
        log.record(item.data, "png", task="caption", model_output="a thing" if wrong else truth.caption,
                   correction=truth.caption, status=status, model="demo")  # fmt: skip
    return log


@pytest.fixture
def tiny_home(home, monkeypatch, tiny_blip_dir):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", str(tiny_blip_dir))
    return home


def quick(home, **changes):
    return FinetuneConfig(home=str(home), epochs=2, min_rows=5, heldout_fraction=0.0, **changes)


def test_a_version_is_published_with_all_its_files_and_made_live(tiny_home, tiny_blip_dir):
    log_rows(tiny_home, wrong=True)
    folder = main(quick(tiny_home))
    assert folder == tiny_home / "models" / "v0001"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "train_args.json", "README.md", "adapter"} <= names
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (folder / "adapter").iterdir()}
    assert registry.active_version(tiny_home / "models") == "v0001"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 4 and len(metrics["check_set"]) == 6
    assert {"new_concepts", "old_knowledge", "by_kind_before", "by_kind_after"} <= set(metrics)
    args = json.loads((folder / "train_args.json").read_text())
    assert args["rows_used"] == 24 and args["base"] == "" and args["base_description"].startswith(tiny_blip_dir.name)
    assert str(tiny_blip_dir) not in (folder / "train_args.json").read_text()  # nothing names this machine's paths
    from transformers import BlipForConditionalGeneration

    assert BlipForConditionalGeneration.from_pretrained(folder) is not None
    assert "exact match decides" in (folder / "README.md").read_text()
    assert not list((tiny_home / "models").glob(".staging-*"))


def test_no_activate_publishes_without_going_live(tiny_home):
    log_rows(tiny_home)
    main(quick(tiny_home, activate=False))
    assert registry.active_version(tiny_home / "models") is None
    assert [v.name for v in registry.list_versions(tiny_home / "models")] == ["v0001"]


def test_a_version_damaged_on_its_way_into_models_is_published_but_not_made_live(tiny_home, monkeypatch):
    log_rows(tiny_home)
    main(quick(tiny_home))  # v0001 is live
    publish = registry.publish

    def publish_then_truncate(models_dir, staging):
        name = publish(models_dir, staging)
        weights = models_dir / name / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])  # a disk that lost the file's tail
        return name

    monkeypatch.setattr(registry, "publish", publish_then_truncate)
    with pytest.raises(FinetuneError, match="v0002, but it is not made live: v0002/model.safetensors is truncated"):
        main(quick(tiny_home, seed=1))
    assert registry.active_version(tiny_home / "models") == "v0001"


def test_a_nan_loss_stops_the_run_and_nothing_is_published(tiny_home, tiny_blip_dir, tmp_path):
    poisoned = tmp_path / "poisoned"
    loaded = load_captioner(str(tiny_blip_dir), Settings(home=tmp_path, device="cpu"))
    with torch.no_grad():
        loaded.model.text_decoder.bert.embeddings.LayerNorm.weight.fill_(float("nan"))
    loaded.model.save_pretrained(poisoned)
    loaded.processor.save_pretrained(poisoned)
    log_rows(tiny_home)
    with pytest.raises(FinetuneError, match="the loss became nan"):
        main(quick(tiny_home, base=str(poisoned)))
    assert registry.list_versions(tiny_home / "models") == []
    assert registry.active_version(tiny_home / "models") is None


def test_a_run_that_makes_the_heldout_worse_is_refused(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    log_rows(home, n=40)
    with pytest.raises(Refused, match="forgot what the live model knew|worse than the live model"):
        main(FinetuneConfig(home=str(home), epochs=3, lr=0.5, heldout_fraction=0.3))
    assert registry.list_versions(home / "models") == [] and registry.active_version(home / "models") is None


def test_clear_errors_for_too_few_rows_missing_images_and_broken_rows(tiny_home, capsys):
    with pytest.raises(FinetuneError, match="--home /no/such/folder is not a folder"):  # not "0 approved rows"
        main(FinetuneConfig(home="/no/such/folder"))
    with pytest.raises(FinetuneError, match="only 0 approved caption row.*feedback.csv does not exist .is CAPTIONER_HOME"):
        main(quick(tiny_home))  # run from the wrong folder, or a mistyped CAPTIONER_HOME: it says where it looked
    log = log_rows(tiny_home, n=6, status="pending")
    with pytest.raises(FinetuneError, match=f"only 0 approved caption row.*; in {log.csv_path}"):
        main(quick(tiny_home))
    log_rows(tiny_home, n=6)
    with open(log.csv_path, "a", encoding="utf-8") as handle:
        handle.write("a,broken,row\r\n")
    main(quick(tiny_home))
    assert "skipping a broken row: feedback.csv line 14" in capsys.readouterr().err
    first_image = next((tiny_home / "data" / "images").iterdir())
    first_image.unlink()
    with pytest.raises(FinetuneError, match="point at images that are missing"):
        main(quick(tiny_home))


def test_an_image_whose_caption_a_reviewer_rejected_never_joins_the_regression_set(home, demo_png):
    from captioner.review import set_status
    from finetune.data import uncorrected_images

    log = FeedbackLog(home / "data")
    misclick, _ = log.record(demo_png("star", "red"), "png", task="caption", model_output="a red circle",
                             correction="a red circle")  # "Looks right" pressed on a wrong caption  # fmt: skip
    set_status(log, {misclick.id}, "rejected", "reviewer")
    pending, _ = log.record(demo_png("circle", "blue"), "png", task="caption", model_output="a blue circle",
                            correction="a blue circle")  # fmt: skip
    asked, _ = log.record(demo_png("square", "green"), "png", task="qa", prompt="what shape is it?", model_output="square",
                          correction="square")  # fmt: skip
    found = {sha for _, sha in uncorrected_images(log, set(), 10)}
    assert found == {pending.image_sha256, asked.image_sha256}


def test_cli_options_map_onto_the_config():
    cfg = parse_args(["--min-rows", "7", "--epochs", "4", "--lr", "0.001", "--lora-r", "8", "--no-activate"])
    assert (cfg.min_rows, cfg.epochs, cfg.lr, cfg.lora_r, cfg.activate, cfg.alpha) == (7, 4, 0.001, 8, False, 16)
    cfg = parse_args(["--distill", "0", "--max-forgetting", "0.05", "--lora-targets", "all"])
    assert (cfg.distill, cfg.max_forgetting, cfg.lora_targets) == (0.0, 0.05, "all")
    with pytest.raises(ValueError, match="--lora-targets"):
        FinetuneConfig(lora_targets="vision").validate()
    assert FinetuneConfig().steps_for(10) == 250 and FinetuneConfig().steps_for(150) == 250  # about 4,000 samples
    assert FinetuneConfig().steps_for(10_000) == 3 * 625 and FinetuneConfig(epochs=2).steps_for(40) == 6


KILLER = """
import os, signal, sys
from captioner import registry
from finetune import FinetuneConfig, main

real_publish = registry.publish
def publish_and_die(models_dir, staging):
    os.kill(os.getpid(), signal.SIGKILL)  # killed with the version written but not yet renamed into place
registry.publish = publish_and_die
main(FinetuneConfig(home=sys.argv[1], epochs=1, min_rows=5, heldout_fraction=0.0))
"""


def test_sigkill_while_publishing_leaves_the_live_model_valid(tiny_home):
    log_rows(tiny_home)
    main(quick(tiny_home))
    assert registry.active_version(tiny_home / "models") == "v0001"
    log_rows(tiny_home, n=8, seed=9)
    done = subprocess.run([sys.executable, "-c", KILLER, str(tiny_home)], cwd=ROOT, timeout=600,
                          env=child_env())  # fmt: skip
    assert done.returncode == -signal.SIGKILL
    assert registry.active_version(tiny_home / "models") == "v0001"
    assert [v.name for v in registry.list_versions(tiny_home / "models")] == ["v0001"]
    assert load_captioner("active", Settings.from_env()).version == "v0001"
    assert list((tiny_home / "models").glob(".staging-*"))  # the half-written run is left aside...
    main(quick(tiny_home))
    assert not list((tiny_home / "models").glob(".staging-*"))  # ...and swept by the next one
    assert registry.active_version(tiny_home / "models") == "v0002"


def test_models_cli_lists_activates_and_rolls_back(tiny_home):
    log_rows(tiny_home)
    main(quick(tiny_home))
    main(quick(tiny_home, seed=1))
    listed = run_cli("models", "list").stdout
    assert "* v0002" in listed and "  v0001" in listed
    assert run_cli("models", "rollback").returncode == 0
    assert registry.active_version(tiny_home / "models") == "v0001"
    assert run_cli("models", "rollback").returncode == 0
    assert registry.active_version(tiny_home / "models") is None
    assert "* default model" in run_cli("models", "list").stdout
    done = run_cli("models", "activate", "v0009")
    assert done.returncode == 2 and "does not exist" in done.stderr
    (tiny_home / "models" / "v0002" / "model.safetensors").write_bytes(b"corrupt")
    done = run_cli("models", "activate", "v0002")
    assert done.returncode == 2 and "cannot go live" in done.stderr


@pytest.mark.slow
def test_the_demo_captioner_learns_stars_from_three_corrections_without_forgetting():
    """The product's promise on the demo world (issue 14): 3 star corrections reach 60% on fresh stars, 10 reach
    90%, 100 reach 95%, and old shapes stay within 2 points in every size bucket from 64 to 512 px."""
    import re

    done = subprocess.run([sys.executable, "-m", "bench.learning_loop", "--corrections", "3,10,100", "--eval", "200"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {int(line.split()[1]): line for line in done.stdout.splitlines() if "→" in line}
    for corrections, target in ((3, 60), (10, 90), (100, 95)):
        figures = [(float(a), float(b)) for a, b in re.findall(r"([\d.]+)% →\s*([\d.]+)%", rows[corrections])]
        stars_after, old = figures[0][1], figures[1:]
        assert stars_after >= target and "published" in rows[corrections], done.stdout
        assert len(old) == 4 and all(after >= before - 2 for before, after in old), done.stdout


@pytest.mark.gpu
def test_a_retrain_on_cuda_trains_in_bf16_and_publishes_full_precision_weights(home, monkeypatch):
    """The GPU path end to end: rows on the device, recoloured views captioned from bf16 rows, bf16 frozen weights,
    fused AdamW, evaluation and the gate."""
    from safetensors import safe_open

    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_DEVICE", "cuda")
    log = FeedbackLog(home / "data")
    inputs, samples = demo_inputs(4, seed=3, shapes=("star",))
    for item, truth in zip(inputs, samples):  # the shape was wrong: "star" is taught, so views are made
        log.record(item.data, "png", task="caption", model_output=f"a {truth.color} circle", correction=truth.caption,
                   status="approved")  # fmt: skip
    log_rows(home, n=20, seed=4)
    folder = main(FinetuneConfig(home=str(home), epochs=10, min_rows=5))
    assert "\n- 24 recoloured views of the corrections that taught no colour word" in (folder / "README.md").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["training"]["steps"] > 0 and metrics["old_knowledge"]["count"] >= 0
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in list(weights.keys())[:20]} == {"torch.float32"}


@pytest.mark.parametrize("argv, said", [
    (["--lora-alpha", "-4"], "--lora-alpha must be 0 (twice the rank) or more, not -4"),
    (["--lora-dropout", "-0.1"], "--lora-dropout must be in [0, 1), not -0.1"),
    (["--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1), not 1.5"),
    (["--lora-dropout", "nan"], "--lora-dropout must be a finite number, not nan"),
    (["--distill", "nan"], "--distill must be a finite number, not nan"),
    (["--distill", "inf"], "--distill must be a finite number, not inf"),
    (["--old-share", "nan"], "--old-share must be a finite number, not nan"),
    (["--heldout-fraction=-inf"], "--heldout-fraction must be a finite number, not -inf"),
    (["--batch-size", "1"], "--batch-size 1 cannot hold both new and old rows (--old-share 0.5): use 2 or more, or --old-share 0"),
    (["--seed", str(2**64)], f"--seed must be between 0 and {2**63 - 1}, not {2**64}"),
    (["--seed", "-1"], f"--seed must be between 0 and {2**63 - 1}, not -1"),
    (["--batch-size", "100000"], "--batch-size must be between 1 and 256, not 100000"),  # ran until out of memory
    (["--lora-r", "4096"], "--lora-r must be between 1 and 256, not 4096"),
])  # fmt: skip
def test_an_option_out_of_range_is_one_error_naming_it_before_anything_is_read_or_written(tmp_path, argv, said):
    home = tmp_path / "home"
    home.mkdir()  # no rows: a run that got as far as reading them would say "only 0 approved caption rows"
    with pytest.raises(FinetuneError) as raised:
        main(parse_args([*argv, "--home", str(home)]))
    assert str(raised.value) == said
    assert list(home.iterdir()) == []


def test_a_batch_of_one_row_is_fine_when_no_old_rows_are_mixed_in():
    assert FinetuneConfig(batch_size=1, old_share=0).validate().batch_size == 1
    assert FinetuneConfig(batch_size=2).validate().batch_size == 2


def test_the_command_line_refuses_bad_options_with_exit_1_and_no_traceback(tiny_home):
    log_rows(tiny_home, n=6)
    done = subprocess.run([sys.executable, "-m", "finetune", "--home", str(tiny_home), "--min-rows", "5",
                           "--lora-dropout", "1.5", "--distill", "nan"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=child_env())  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "finetune: --distill must be a finite number, not nan; --lora-dropout must be in [0, 1), not 1.5\n"
    assert not (tiny_home / "models").exists()


def test_out_of_memory_never_advises_a_batch_size_the_options_refuse(tiny_home, monkeypatch):
    import finetune.trainer

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(finetune.trainer, "augment", out_of_memory)
    log_rows(tiny_home, n=8)
    log_rows(tiny_home, n=4, seed=9, wrong=True)  # corrections beside the confirmations: each batch mixes both
    with pytest.raises(FinetuneError, match=r"--batch-size 4; try --batch-size 2$"):
        main(quick(tiny_home, batch_size=4))
    with pytest.raises(FinetuneError, match=r"--batch-size 2; even the smallest batch does not fit on this GPU$"):
        main(quick(tiny_home, batch_size=2))


def test_epochs_that_would_train_for_days_are_refused_before_the_model_loads(home, capsys):
    log_rows(home, n=24)
    with pytest.raises(FinetuneError) as raised:  # 24 rows, 2 steps a pass: 10,000 steps, 40 times the automatic 250
        main(parse_args(["--epochs", "5000", "--home", str(home)]))
    assert str(raised.value) == ("--epochs 5000 over 24 images with an approved caption would train 10,000 steps, more than 10 times the "
                                 "250 of --epochs 0 (automatic): use at most --epochs 1250")  # fmt: skip
    assert not (home / "models").exists() and "Loading the model" not in capsys.readouterr().err
    FinetuneConfig(epochs=1250).check_length(24)  # the limit it names is accepted


def test_a_lora_rank_wider_than_the_demo_models_layers_is_refused_before_its_images_are_decoded(home, monkeypatch, capsys):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")  # 128 wide: rank 256 only adds memory
    log_rows(home, n=24)
    with pytest.raises(FinetuneError) as raised:
        main(parse_args(["--lora-r", "256", "--home", str(home)]))
    assert str(raised.value) == ("--lora-r 256 is more than the width of the narrowest layer it adapts (128 in this model): "
                                 "a higher rank adds memory and no capacity; use at most --lora-r 128")  # fmt: skip
    assert "Decoding images" not in capsys.readouterr().err and registry.list_versions(home / "models") == []


def test_epochs_are_checked_again_against_the_rows_it_trains_on_which_views_multiply(tiny_home, capsys):
    log = FeedbackLog(tiny_home / "data")
    inputs, samples = demo_inputs(10, 4)
    for item, truth in zip(inputs, samples):  # each teaches a shape, no colour: 6 recoloured views each join training
        colour = truth.caption.split()[1]
        log.record(item.data, "png", task="caption", model_output=f"a {colour} blob", correction=truth.caption, status="approved")
    cfg = FinetuneConfig(home=str(tiny_home), epochs=2000, heldout_fraction=0.0, min_rows=5, regression_images=0)
    cfg.check_length(10)  # 10 approved rows: 2,000 steps, within 10 times the automatic 250
    with pytest.raises(FinetuneError) as raised:
        main(cfg)
    said = str(raised.value)  # 70 rows, 5 steps a pass: 10,000 steps would have run
    assert said == ("--epochs 2000 over 70 training rows (approved, regression set and recoloured views) would train "
                    "10,000 steps, more than 10 times the 250 of --epochs 0 (automatic): use at most --epochs 500")  # fmt: skip
    assert registry.list_versions(tiny_home / "models") == []


def test_too_few_rows_says_the_approved_rows_count_once_per_image(tiny_home):
    log = FeedbackLog(tiny_home / "data")
    inputs, samples = demo_inputs(3, 8)
    for item, truth in zip(inputs, samples):
        for said in ("a blob", "a thing", "a shape"):  # three approved rows of each image: the admin sees 9
            log.record(item.data, "png", task="caption", model_output=said, correction=truth.caption, status="approved")
    with pytest.raises(FinetuneError) as raised:
        main(FinetuneConfig(home=str(tiny_home), min_rows=5))
    assert str(raised.value) == ("only 3 images with an approved caption (9 approved caption rows: the latest of each image "
                                 f"counts); --min-rows is 5; in {log.csv_path}")  # it said "only 3 approved caption row(s)" of 9


def test_captioning_the_regression_set_and_the_held_out_images_is_counted_in_the_progress(tiny_home, tmp_path):
    log_rows(tiny_home, n=12, wrong=True)  # approved corrections
    log_rows(tiny_home, n=6, seed=9, status="pending")  # confirmations nobody reviewed: the regression set's images
    progress = tmp_path / "progress.jsonl"
    main(FinetuneConfig(home=str(tiny_home), epochs=1, min_rows=5, heldout_fraction=0.5, recoloured_views=0,
                        progress_file=str(progress), activate=False))  # fmt: skip
    said = [json.loads(line).get("said", "") for line in progress.read_text().splitlines()]
    assert "Captioning stored images nobody corrected (the regression set): 6 of 6" in said  # minutes of BLIP-base said nothing
    live = [s for s in said if s.startswith("Captioning the held-out images with the live model: ")]
    new = [s for s in said if s.startswith("Captioning the held-out images with the new model: ")]
    assert live and new and live[-1].split(": ")[1] == new[-1].split(": ")[1]  # every held-out image, before and after
    done, total = live[-1].split(": ")[1].split(" of ")
    assert done == total and int(total) > 0
