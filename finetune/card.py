"""What a published version says about itself: a portable name for its base, train_args.json, a Hub-valid card."""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import asdict
from pathlib import Path

import yaml

from captioner.files import now_utc

from .data import REGRESSION, VIEW

TAGS = ["image-captioning", "blip", "lora", "peft", "captioning-studio"]


def base_reference(spec, home: Path) -> dict:
    """The base model as any machine can name it: a hub id, `demo`, `models/vNNNN`, or a folder relative to
    CAPTIONER_HOME (never an absolute path of this one); with the hub model at the root of its lineage, if any."""
    location = Path(spec.location)
    if spec.source == "hub":
        return {"name": spec.location, "revision": None if spec.version == "hub" else spec.version, "hub_id": spec.location}
    if spec.source == "demo":
        return {"name": "demo", "revision": spec.version, "hub_id": None}
    try:
        name = location.relative_to(home).as_posix()
    except ValueError:
        name = location.name
    return {"name": name, "revision": None, "hub_id": _lineage_root(location)}


def train_args(cfg, base: dict, base_version: str, examples: list, rows, heldout: list, device: str = "") -> dict:
    """train_args.json: every option as given, then what the run worked out from them, each under a name of its own,
    the data it trained on and the software it ran with (what a rerun needs, and what tells it apart)."""
    trained = [e for e in rows.examples if e.kind != VIEW]
    return {
        **asdict(cfg), "home": "", "progress_file": "",  # this machine's paths: they name nothing elsewhere
        "base": base["name"] if Path(cfg.base).is_absolute() else cfg.base,  # the portable name of a local folder
        "created": now_utc(), "base_description": f"{base['name']} ({base_version})", "base_model": base["name"],
        "base_revision": base["revision"], "base_hub_id": base["hub_id"], "rows_used": len(examples),
        "train_rows": len(trained), "recoloured_views_made": len(rows.examples) - len(trained),
        "heldout_rows": len(heldout), "regression_rows": sum(e.kind == REGRESSION for e in trained + heldout),
        "data": data_snapshot(trained + heldout, heldout), "environment": environment(device),
    }  # fmt: skip


def data_snapshot(used: list, heldout: list) -> dict:
    """The feedback rows (by id) and images (by hash) the run used; the fingerprint changes with any caption or image."""
    lines = sorted(f"{e.kind}\t{e.sha256}\t{e.caption}" for e in used)
    return {
        "fingerprint": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "feedback_rows": sorted(e.row_id for e in used if e.row_id),
        "regression_images": sorted(e.sha256 for e in used if e.kind == REGRESSION),
        "heldout_images": sorted(e.sha256 for e in heldout),
    }


def environment(device: str) -> dict:
    """Python and the libraries whose versions change the trained weights, and the device it trained on."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    found = {"python": platform.python_version(), "device": device, "torch": torch.__version__}  # with its build: +cu130
    for package in ("transformers", "peft", "numpy", "pillow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _lineage_root(folder: Path) -> str | None:
    """The hub model a local checkpoint descends from, as its own card or train_args.json says."""
    try:
        return json.loads((folder / "train_args.json").read_text(encoding="utf-8")).get("base_hub_id")
    except (OSError, ValueError, AttributeError):
        pass
    front = card_data(folder / "README.md")
    return front.get("base_model") if isinstance(front.get("base_model"), str) else None


def card_data(path: Path) -> dict:
    """The YAML front matter of a model card, or {}."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return {}
    try:
        data = yaml.safe_load(text[4 : text.index("\n---", 4)])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_license(base: dict, spec) -> str:
    """The base model's license as its own card states it (the hub cache or its folder); else "other"."""
    front = {}
    if spec.source == "hub":
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.location, "README.md")
            front = card_data(Path(cached)) if isinstance(cached, str) else {}
        except Exception:  # no cache, no card: the license is unknown, not an error
            front = {}
    elif spec.source != "demo":
        front = card_data(Path(spec.location) / "README.md")
    if not front and (base["hub_id"] or "").startswith("Salesforce/blip"):
        return "bsd-3-clause"  # the BLIP checkpoints' license
    return front.get("license") if isinstance(front.get("license"), str) else "other"


def _new_concepts(args: dict, new: dict) -> str:
    """The held-out corrections' figure, or why there is none."""
    if not args["heldout_fraction"]:
        return "not judged: no held-out set (--heldout-fraction 0), so every correction was trained on"
    line = f"{_pct(new['before'])} before, {_pct(new['after'])} after ({_images(new['count'])})"
    concepts = new.get("trained_only") or {}
    if not concepts:
        return line
    named = ", ".join(f"{_plain(concept)} ({count})" for concept, count in concepts.items())
    return f"{line}\n  - corrected too few times to hold any out, so every correction was trained on and none judged: {named}"


def _rows(args: dict) -> str:
    """Where the rows came from and where they went, in figures that add up; then the recoloured views."""
    approved, regression = args["rows_used"], args["regression_rows"]
    trained, held = args["train_rows"], args["heldout_rows"]
    came = f"{approved} approved caption rows"
    if regression:
        came += (f" + {regression} regression images (stored images nobody corrected that the live model captions "
                 f"confidently) = {approved + regression}")  # fmt: skip
    went = f"{trained} trained on, " + (f"{held} held out by image hash" if args["heldout_fraction"] else
                                        "none held out (--heldout-fraction 0)")  # fmt: skip
    undecodable = approved + regression - trained - held  # approved rows whose images could not be decoded
    if undecodable > 0:
        went += f", {undecodable} left out (their images cannot be decoded)"
    line = f"- rows used: {came}: {went}"
    views = args["recoloured_views_made"]
    if views:
        line += f"\n- {views} recoloured views of the corrections that taught no colour word, trained on besides those {trained}"
    return line


def model_card(args: dict, metrics: dict, license_id: str) -> str:
    """README.md of a version: Hub metadata (base_model, library_name, pipeline_tag, license, tags), then the
    figures the gate decided on."""
    front = {"library_name": "transformers", "pipeline_tag": "image-to-text", "license": license_id, "tags": TAGS}
    if args.get("base_hub_id"):
        front = {"base_model": args["base_hub_id"], **front}
    results = eval_results(metrics)
    if results:
        front["model-index"] = [{"name": f"captioner fine-tuned from {args['base_model']}", "results": results}]
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    old, new = metrics["old_knowledge"], metrics["new_concepts"]
    kinds = "\n".join(
        f"| {_plain(kind)} | {scores['count']} | {_pct(metrics['by_kind_before'].get(kind, {}).get('exact_match'))} "
        f"| {_pct(scores['exact_match'])} |"
        for kind, scores in metrics["by_kind_after"].items()
    ) or f"| (no held-out images{'' if args['heldout_fraction'] else ': --heldout-fraction 0'}) | 0 | n/a | n/a |"
    rows = "\n".join(f"| {name} | {_number(before.get(name))} | {_number(after.get(name))} |" for name in ("exact_match", "bleu4", "cider"))
    checks = "\n".join(caption.replace("`", "'") for caption in metrics["check_set"])
    revision = f" (revision {args['base_revision']})" if args.get("base_revision") else ""
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# Fine-tuned captioner

BLIP captioner fine-tuned with LoRA (peft) on approved corrections from `data/feedback.csv`, with the
live model's own knowledge replayed and distilled so that it is kept.

- created: {args['created']}
- base model: `{args['base_model']}`{revision}
{_rows(args)}
- LoRA rank {args['lora_r']} on the {args['lora_targets']} layers, learning rate {args['lr']},
  {metrics['training']['steps']} training steps, self-distillation weight {args['distill']}, seed {args['seed']}
  (`train_args.json` holds every option, the feedback rows and images used, and the library versions)

## The two figures the gate decided on (held-out images, exact match)

- **New concepts** (held-out corrections): {_new_concepts(args, new)}
- **Old knowledge** ({old.get('judged_on') or 'held-out images the live model captions right'}): {_pct(old['before'])} before,
  {_pct(old['after'])} after ({_images(old['count'])}); a model that loses more than {args['max_forgetting'] * 100:g}
  points here is refused, whatever its overall score

| kind | images | before | after |
| --- | --- | --- | --- |
{kinds}

All held-out images, before and after (exact match decides, CIDEr breaks a tie; BLEU-4 is smoothed sentence
BLEU, since plain BLEU-4 of a three-word caption is 0 by construction):

| metric | before | after |
| --- | --- | --- |
{rows}

Captions of the check set (the images every version must caption before it can go live):

```text
{checks}
```

## Files

The merged model and processor (`from_pretrained` this folder), `adapter/` (the LoRA adapter alone; its
`base_model_name_or_path` is `{args['base_model']}`), `metrics.json`, `train_args.json`.
"""


def eval_results(metrics: dict) -> list[dict]:
    """The figures after training as the Hub's model-index reads them (each one metrics.json holds; none that is n/a)."""
    after = metrics["heldout_after"]
    figures = [("exact_match", after.get("exact_match"), "held-out exact match"), ("bleu", after.get("bleu4"),
               "held-out smoothed sentence BLEU-4"), ("cider", after.get("cider"), "held-out CIDEr"),
               ("exact_match", metrics["new_concepts"].get("after"), "new concepts exact match"),
               ("exact_match", metrics["old_knowledge"].get("after"), "old knowledge exact match")]  # fmt: skip
    found = [{"type": kind, "value": value, "name": name} for kind, value, name in figures if value is not None]
    if not found:
        return []
    dataset = {"type": "captioning-studio-feedback", "name": "held-out approved corrections (data/feedback.csv)"}
    return [{"task": {"type": "image-to-text", "name": "Image captioning"}, "dataset": dataset, "metrics": found}]


def _plain(text: str) -> str:
    """Text from corrections, shown as itself in Markdown: every character Markdown could read is escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", text)


def _images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def _number(value) -> str:
    return "n/a" if value is None else str(value)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"
