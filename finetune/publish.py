"""Writing a version: the merged checkpoint checked through the app's loading path, metrics.json,
train_args.json, the adapter with a portable base name, and the model card."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.golive import check_folder
from captioner.models import ModelError

from .card import base_license, base_reference, model_card, train_args
from .data import trained_only
from .errors import Refused
from .tensors import RowTensors


def write_version(staging: Path, models, settings, cfg, examples, rows: RowTensors, heldout, before, after, stats) -> dict:
    """The checkpoint, checked through the app's loading path, with metrics.json, train_args.json and the card."""
    base = base_reference(models.base.spec, settings.home)
    _portable_adapter_config(staging / "adapter", base)
    models.base.model.save_pretrained(staging)
    models.base.processor.save_pretrained(staging)
    check = _check_published(staging, settings)
    not_held_out = trained_only(rows.examples + heldout, {e.sha256 for e in heldout}) if cfg.heldout_fraction else {}
    metrics = {
        "heldout_before": before["overall"], "heldout_after": after["overall"],
        "new_concepts": {**_figure(before["new"], after["new"]), "trained_only": not_held_out},
        "old_knowledge": _figure(before["old"], after["old"]),
        "by_kind_before": before["by_kind"], "by_kind_after": after["by_kind"], "check_set": check, "training": stats,
    }  # fmt: skip
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    args = train_args(cfg, base, models.base.version, examples, rows, heldout, str(models.base.device))
    (staging / "train_args.json").write_text(json.dumps(args, indent=2, allow_nan=False) + "\n")
    (staging / "README.md").write_text(model_card(args, metrics, base_license(base, models.base.spec)), encoding="utf-8")
    return metrics


def _figure(before: dict, after: dict) -> dict:
    judged_on = {"judged_on": after["judged_on"]} if "judged_on" in after else {}  # anchors, when nothing old was held out
    return {"before": before["exact_match"], "after": after["exact_match"], "count": after["count"], **judged_on}


def _portable_adapter_config(folder: Path, base: dict) -> None:
    """peft writes the base as this machine's absolute path: name it portably (hub id, demo, models/vNNNN)."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base["name"]
    config["revision"] = base["revision"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = folder / "README.md"
    if card.is_file():  # peft's own adapter card repeats the absolute path
        card.unlink()


def _check_published(folder: Path, settings) -> list[str]:
    """Load the written checkpoint back through the app's own path and caption the check set."""
    try:
        return check_folder(folder, settings, "candidate")
    except ModelError as exc:
        raise Refused(f"not published: {exc}") from None
