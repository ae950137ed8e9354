"""The go-live gate sees forgetting, and what a version says about itself: its card, its figures, its base."""

import json

import pytest
import torch

from captioner import registry
from captioner.demo.quality import demo_inputs
from captioner.feedback import FeedbackLog
from captioner.models import load_captioner
from captioner.settings import Settings
from conftest import start_app
from finetune import FinetuneConfig, FinetuneError, Refused, main
from finetune.data import CONFIRMATION, CORRECTION, REGRESSION, Example
from finetune.judge import refusal, report
from finetune.metrics import caption_scores, smoothed_bleu4
from test_finetune import log_rows


def crippled_demo(folder, word="circle"):
    """The demo captioner, unable ever to say `word`: a model that has forgotten one old shape."""
    loaded = load_captioner("demo", Settings(home=folder, device="cpu"))
    word_id = loaded.processor.tokenizer.convert_tokens_to_ids(word)
    with torch.no_grad():
        loaded.model.text_decoder.cls.predictions.decoder.bias[word_id] = -100.0
    loaded.model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    return folder


def forgetful_run(home, tmp_path, epochs: int) -> FinetuneConfig:
    """Star corrections, and stored circle images the live demo captions right, retrained from a copy of the
    demo that can no longer say "circle": whatever it learns, it has forgotten circles."""
    log = FeedbackLog(home / "data")
    inputs, samples = demo_inputs(24, seed=41, shapes=("star",))
    for item, truth in zip(inputs, samples):
        log.record(item.data, "png", task="caption", model_output=f"a {truth.color} triangle", correction=truth.caption,
                   status="approved")  # fmt: skip
    inputs, _ = demo_inputs(8, seed=42, shapes=("circle",))
    for item in inputs:  # stored, uncorrected images: the live model's regression set
        log.record(item.data, "png", task="qa", prompt="what shape is it?", model_output="circle", correction="circle")
    return FinetuneConfig(home=str(home), base=str(crippled_demo(tmp_path / "forgetful")), min_rows=5, epochs=epochs,
                          heldout_fraction=0.5, seed=3)  # fmt: skip


def test_a_model_that_forgot_what_the_live_one_knew_is_refused(home, monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    with pytest.raises(Refused, match=r"forgot what the live model knew: exact match on \d+ held-out images .* fell to 0\.0%"):
        main(forgetful_run(home, tmp_path, epochs=2))
    assert registry.list_versions(home / "models") == [] and registry.active_version(home / "models") is None


@pytest.mark.slow
def test_forgetting_is_refused_even_when_the_new_concept_lifts_the_overall_score(home, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    with pytest.raises(Refused, match="forgot what the live model knew"):
        main(forgetful_run(home, tmp_path, epochs=80))
    said = capsys.readouterr().err
    live, after = (float(line.split("exact match ")[1].split()[0]) for line in said.splitlines()
                   if line.startswith(("finetune: held-out live", "finetune: held-out after")))  # fmt: skip
    assert after > live, said  # the stars were learned: only the old-knowledge figure refuses it


def test_the_gate_refuses_forgetting_beyond_the_margin_even_when_the_overall_score_rose():
    examples = [Example(None, "a red star", f"{i:064x}", CORRECTION, "star") for i in range(6)]
    examples += [Example(None, "a blue circle", f"{i + 6:064x}", REGRESSION) for i in range(4)]
    live_said = ["a red circle"] * 6 + ["a blue circle"] * 4
    live_right = [s == e.caption for s, e in zip(live_said, examples)]
    live = report(live_said, examples, live_right)
    after = report(["a red star"] * 6 + ["a blue circle"] * 3 + ["a blue star"], examples, live_right)
    assert after["overall"]["exact_match"] > live["overall"]["exact_match"]
    assert after["by_kind"]["correction: star"]["exact_match"] == 1.0 and after["old"]["exact_match"] == 0.75
    assert "forgot what the live model knew" in refusal(after, live, max_forgetting=0.02)
    assert refusal(after, live, max_forgetting=0.3) is None
    kept = report(["a red star"] * 6 + ["a blue circle"] * 4, examples, live_right)
    assert refusal(kept, live, max_forgetting=0.0) is None


def test_old_knowledge_counts_only_what_the_live_model_got_right():
    examples = [Example(None, "a red square", f"{i:064x}", CONFIRMATION) for i in range(4)]
    live_right = [True, True, False, True]
    judged = report(["a red square", "a red square", "a red circle", "a red circle"], examples, live_right)
    assert judged["old"]["count"] == 3 and judged["old"]["exact_match"] == pytest.approx(2 / 3, abs=1e-4)


def test_bleu_is_smoothed_so_a_right_three_word_caption_scores_one():
    assert smoothed_bleu4("a red star", "a red star") == 1.0
    assert 0.5 < smoothed_bleu4("a red circle", "a red star") < 0.8
    assert smoothed_bleu4("", "a red star") == 0.0 and smoothed_bleu4("blue", "a red star") == 0.0
    scores = caption_scores(["a red star", "a blue star"], ["a red star", "a red star"])
    assert scores["exact_match"] == 0.5 and scores["bleu4"] > 0.7
    one = caption_scores(["a red star"], ["a red star"])  # CIDEr over one image is 0 by construction: not reported
    assert (one["exact_match"], one["cider"]) == (1.0, None)


def test_the_card_is_hub_metadata_and_the_adapter_names_its_base_portably(home, monkeypatch, tiny_blip_dir, tmp_path):
    """A base that descends from a hub model: the card carries that hub id, the base's license and the Hub
    fields; the adapter names its base without any path of this machine; a version trained from that version
    keeps the lineage."""
    from huggingface_hub import ModelCard

    base = tmp_path / "base"
    base.mkdir()
    for item in tiny_blip_dir.iterdir():
        (base / item.name).write_bytes(item.read_bytes())
    (base / "README.md").write_text("---\nbase_model: Salesforce/blip-image-captioning-base\nlicense: bsd-3-clause\n---\n# a base\n")
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", str(base))
    log_rows(home, n=12, wrong=True)
    first = main(FinetuneConfig(home=str(home), epochs=1, min_rows=5, heldout_fraction=0.0))
    card = ModelCard.load(first / "README.md")
    assert card.data.base_model == "Salesforce/blip-image-captioning-base"
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == ("transformers", "image-to-text", "bsd-3-clause")
    assert "lora" in card.data.tags and "New concepts" in card.text and "Old knowledge" in card.text
    adapter = json.loads((first / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "base" and str(tmp_path) not in json.dumps(adapter)
    second = main(FinetuneConfig(home=str(home), epochs=1, min_rows=5, heldout_fraction=0.0, seed=1))
    assert json.loads((second / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "models/v0001"
    assert ModelCard.load(second / "README.md").data.base_model == "Salesforce/blip-image-captioning-base"


def test_an_unwritable_models_folder_is_one_clear_error_before_any_training(tiny_home_files, capsys):
    home = tiny_home_files
    (home / "models").write_text("not a folder")
    with pytest.raises(FinetuneError, match="cannot write into .*models: it is a file, not a folder; nothing was trained"):
        main(FinetuneConfig(home=str(home), epochs=1, min_rows=5, heldout_fraction=0.0))
    assert "held-out before" not in capsys.readouterr().err


def test_the_same_seed_trains_the_same_model(tiny_home_files, tmp_path):
    from safetensors.torch import load_file

    log = FeedbackLog(tiny_home_files / "data")
    trained = []
    for name in ("one", "two"):
        home = tmp_path / name
        (home / "data").mkdir(parents=True)
        (home / "data" / "feedback.csv").write_bytes(log.csv_path.read_bytes())
        (home / "data" / "images").symlink_to(log.images_dir)
        folder = main(FinetuneConfig(home=str(home), epochs=2, min_rows=5, heldout_fraction=0.0, seed=5))
        trained.append(load_file(folder / "adapter" / "adapter_model.safetensors"))
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])


def test_the_versions_tab_shows_new_concepts_and_old_knowledge(tiny_home_files, monkeypatch):
    monkeypatch.setenv("CAPTIONER_ADMIN_PASSWORD", "pw")
    main(FinetuneConfig(home=str(tiny_home_files), epochs=1, min_rows=5, heldout_fraction=0.5))
    app = start_app("pages/admin.py")
    app.text_input[0].set_value("pw")
    app.button[0].click().run()
    table = [d.value for d in app.dataframe if "version" in d.value.columns and "live" in d.value.columns][0]
    version = registry.list_versions(tiny_home_files / "models")[0]
    assert list(table["old knowledge after"]) == [version.old_knowledge["after"]]
    assert list(table["new concepts after"]) == [version.new_concepts["after"]]
    # a concept corrected once or twice keeps its rows for training: the tab and the card say it was not judged
    unjudged = version.new_concepts["trained_only"]
    assert unjudged
    ranked = sorted(unjudged.items(), key=lambda pair: -pair[1])  # most rows first; past 8, the rest are counted
    listed = ", ".join(f"{c} ({n})" for c, n in ranked[:8]) + (f" and {len(ranked) - 8} more" if len(ranked) > 8 else "")
    assert list(table["trained on, too few to judge"]) == [listed]
    assert "too few times to hold any out" in (version.path / "README.md").read_text()


@pytest.fixture
def tiny_home_files(home, monkeypatch, tiny_blip_dir):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", str(tiny_blip_dir))
    log_rows(home, n=10, wrong=True)
    log_rows(home, n=6, seed=4)  # confirmations
    return home


def test_the_regression_set_keeps_only_captions_the_live_model_is_sure_of(settings, demo_png, tmp_path):
    from finetune.regression import keep_confident
    from finetune.tensors import to_tensors

    demo = load_captioner("demo", settings)
    examples = []
    for i, caption in enumerate(["a red circle", "a red square"]):  # the picture is a red circle
        (tmp_path / f"{i}.png").write_bytes(demo_png("circle", "red"))
        examples.append(Example(tmp_path / f"{i}.png", caption, f"{i:064x}", REGRESSION))
    rows, _ = to_tensors(examples, demo.processor, demo.device, torch.float32)
    kept, dropped = keep_confident(demo.model, rows)
    assert [e.caption for e in kept.examples] == ["a red circle"] and dropped == 1


def test_text_from_corrections_is_plain_text_in_the_card():
    from finetune.card import _plain

    assert _plain("correction: **star** [x](y) a|b") == r"correction: \*\*star\*\* \[x\]\(y\) a\|b"


def test_with_nothing_old_held_out_forgetting_is_judged_on_fixed_anchor_images(home, monkeypatch, tmp_path, capsys):
    """A log of star corrections alone (no confirmation, no other stored image): nothing held out shows what the live
    model knew, so a model that can no longer say "circle" is caught on fixed images the live model captions."""
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    log = FeedbackLog(home / "data")
    inputs, samples = demo_inputs(12, seed=41, shapes=("star",))
    for item, truth in zip(inputs, samples):
        log.record(item.data, "png", task="caption", model_output=f"a {truth.color} triangle", correction=truth.caption,
                   status="approved")  # fmt: skip
    cfg = FinetuneConfig(home=str(home), base=str(crippled_demo(tmp_path / "forgetful")), min_rows=5, epochs=1, seed=3)
    forgot = r"no held-out image holds old knowledge .* captions only \d+\.\d% of \d+ fixed images the live model is sure of"
    with pytest.raises(Refused, match=forgot):
        main(cfg)
    assert "forgetting is judged on" in capsys.readouterr().err
    assert registry.list_versions(home / "models") == [] and registry.active_version(home / "models") is None


def strict_json(path) -> dict:
    """The file as JSON, refusing NaN and Infinity (which json.dumps writes but no strict reader takes)."""
    def refuse(word):
        raise ValueError(f"{path.name} holds {word}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_the_cards_row_figures_add_up_with_a_regression_set_and_recoloured_views(home, monkeypatch):
    import re

    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    log = FeedbackLog(home / "data")
    inputs, samples = demo_inputs(8, seed=3, shapes=("star",))
    for item, truth in zip(inputs, samples):  # the shape was wrong, the colour right: "star" is taught, views are made
        log.record(item.data, "png", task="caption", model_output=f"a {truth.color} circle", correction=truth.caption,
                   status="approved")  # fmt: skip
    log_rows(home, n=30, seed=4)  # confirmations
    inputs, _ = demo_inputs(20, seed=5)
    for item in inputs:  # questions about images nobody corrected: the regression set is drawn from them
        log.record(item.data, "png", task="qa", prompt="what shape is it?", model_output="a circle", correction="a circle")
    folder = main(FinetuneConfig(home=str(home), epochs=1, min_rows=5))
    args = strict_json(folder / "train_args.json")
    card = (folder / "README.md").read_text()
    line = re.search(r"rows used: (\d+) approved caption rows \+ (\d+) regression images \(.*?\) = (\d+): "
                     r"(\d+) trained on, (\d+) held out by image hash\n", card)  # fmt: skip
    assert line, card
    approved, regression, total, trained, held = map(int, line.groups())
    assert (approved, total) == (38, approved + regression) and 0 < regression <= 20
    assert trained + held == total and held > 0
    views = re.search(r"\n- (\d+) recoloured views of the corrections that taught no colour word, trained on besides "
                      r"those (\d+)\n", card)  # fmt: skip
    assert views and int(views[2]) == trained and int(views[1]) > 0, card
    assert args["rows_used"] == approved and registry.list_versions(home / "models")[0].rows_used == approved


def test_with_no_heldout_set_the_card_and_the_models_list_say_so(tiny_home_files, capsys):
    from captioner.cli.models import list_versions

    folder = main(FinetuneConfig(home=str(tiny_home_files), epochs=1, min_rows=5, heldout_fraction=0.0))
    card = (folder / "README.md").read_text()
    assert "**New concepts** (held-out corrections): not judged: no held-out set (--heldout-fraction 0)" in card
    assert "too few times" not in card
    assert "16 approved caption rows: 16 trained on, none held out (--heldout-fraction 0)" in card
    capsys.readouterr()
    list_versions(Settings.from_env())
    listed = capsys.readouterr().out
    assert "none held out" in listed and "None" not in listed


def test_train_args_records_the_options_as_given_and_what_was_worked_out_under_names_of_its_own(tmp_path):
    from types import SimpleNamespace

    from finetune.card import train_args
    from finetune.data import VIEW

    def example(n, kind):
        return Example(tmp_path / f"{n}.png", "a red star", f"{n:064x}", kind, "star" if kind == CORRECTION else "")

    trained = [example(1, CORRECTION), example(2, CONFIRMATION), example(3, REGRESSION)]
    views = [example(n, VIEW) for n in range(10, 16)]
    heldout = [example(4, CONFIRMATION), example(5, REGRESSION)]
    base = {"name": "demo", "revision": "demo-1234", "hub_id": None}
    cfg = FinetuneConfig(base="demo", recoloured_views=6, home=str(tmp_path), progress_file=str(tmp_path / "p.jsonl"))
    args = train_args(cfg, base, "demo-1234", trained[:2] + heldout[:1], SimpleNamespace(examples=trained + views), heldout)
    assert (args["base"], args["recoloured_views"], args["lora_alpha"], args["seed"]) == ("demo", 6, 0, 0)
    assert (args["base_description"], args["recoloured_views_made"]) == ("demo (demo-1234)", 6)
    assert (args["rows_used"], args["train_rows"], args["heldout_rows"], args["regression_rows"]) == (3, 3, 2, 2)
    assert str(tmp_path) not in json.dumps(args, allow_nan=False)  # strict JSON, and no path of this machine
    args = train_args(FinetuneConfig(), base, "demo-1234", [], SimpleNamespace(examples=[]), [])
    assert args["base"] == ""  # the live model, as the option said
    local = FinetuneConfig(base=str(tmp_path / "models" / "v0003"))
    args = train_args(local, {"name": "models/v0003", "revision": None, "hub_id": None}, "v0003", [], SimpleNamespace(examples=[]), [])
    assert args["base"] == "models/v0003"
