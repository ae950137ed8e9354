"""What a published version records so that a run can be rerun and told apart: the data snapshot, the software."""

import json

import torch

from conftest import SUITE_DEVICE
from finetune import main
from test_finetune import log_rows, quick, tiny_home  # noqa: F401  (tiny_home is a fixture)


def test_train_args_names_the_feedback_rows_images_and_library_versions_it_trained_with(tiny_home):  # noqa: F811
    log = log_rows(tiny_home, n=12)
    folder = main(quick(tiny_home, seed=5))
    args = json.loads((folder / "train_args.json").read_text())
    rows, _ = log.read()
    assert args["seed"] == 5
    assert args["data"]["feedback_rows"] == sorted(row.id for row in rows)
    assert len(args["data"]["fingerprint"]) == 64 and args["data"]["heldout_images"] == []
    env = args["environment"]
    assert env["torch"] == torch.__version__
    assert env["transformers"] and env["peft"] and env["python"] and env["device"].startswith(SUITE_DEVICE.split(":")[0])
    assert "seed 5" in (folder / "README.md").read_text()
    log_rows(tiny_home, n=2, seed=11)  # two more approved rows: the next run's data differs, and says so
    again = json.loads((main(quick(tiny_home, seed=5)) / "train_args.json").read_text())
    assert len(again["data"]["feedback_rows"]) == 14
    assert again["data"]["fingerprint"] != args["data"]["fingerprint"]


def test_the_cards_hub_metadata_carries_the_figures_metrics_json_holds(tmp_path):
    from huggingface_hub import ModelCard

    from finetune.card import model_card

    args = {"created": "2026-01-01T00:00:00+00:00", "base_model": "demo", "base_revision": "demo-1", "base_hub_id": None,
            "rows_used": 20, "regression_rows": 0, "train_rows": 17, "heldout_rows": 3, "heldout_fraction": 0.15,
            "recoloured_views_made": 0, "lora_r": 16, "lora_targets": "text", "lr": 0.002, "distill": 1.0, "seed": 4,
            "max_forgetting": 0.02}  # fmt: skip
    overall = {"before": {"exact_match": 0.5, "bleu4": 0.61, "cider": None, "count": 3},
               "after": {"exact_match": 0.75, "bleu4": 0.8, "cider": 1.25, "count": 3}}  # fmt: skip
    metrics = {"heldout_before": overall["before"], "heldout_after": overall["after"],
               "new_concepts": {"before": 0.0, "after": 1.0, "count": 1}, "old_knowledge": {"before": 1.0, "after": None, "count": 0},
               "by_kind_before": {}, "by_kind_after": {}, "check_set": ["a red circle"], "training": {"steps": 10}}  # fmt: skip
    (tmp_path / "README.md").write_text(model_card(args, metrics, "other"), encoding="utf-8")
    results = {r.metric_name: r.metric_value for r in ModelCard.load(tmp_path / "README.md").data.eval_results}
    assert results == {"held-out exact match": 0.75, "held-out smoothed sentence BLEU-4": 0.8, "held-out CIDEr": 1.25,
                       "new concepts exact match": 1.0}  # fmt: skip (old knowledge: n/a, so not claimed)
    metrics["heldout_after"] = {"exact_match": None, "bleu4": None, "cider": None, "count": 0}
    metrics["new_concepts"] = {"before": None, "after": None, "count": 0}
    (tmp_path / "README.md").write_text(model_card(args, metrics, "other"), encoding="utf-8")
    assert not ModelCard.load(tmp_path / "README.md").data.eval_results  # no figure: no model-index at all
