"""What a published version says about itself: a portable name for its base, and a Hub-valid model card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

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


def _unjudged(new: dict) -> str:
    """The concepts corrected too few times to hold one out: trained on every row, so not judged on unseen images."""
    concepts = new.get("trained_only") or {}
    if not concepts:
        return ""
    named = ", ".join(f"{_plain(concept)} ({count})" for concept, count in concepts.items())
    return f"\n  - corrected too few times to hold any out, so every correction was trained on and none judged: {named}"


def model_card(args: dict, metrics: dict, license_id: str) -> str:
    """README.md of a version: Hub metadata (base_model, library_name, pipeline_tag, license, tags), then the
    figures the gate decided on."""
    front = {"library_name": "transformers", "pipeline_tag": "image-to-text", "license": license_id, "tags": TAGS}
    if args.get("base_hub_id"):
        front = {"base_model": args["base_hub_id"], **front}
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    old, new = metrics["old_knowledge"], metrics["new_concepts"]
    kinds = "\n".join(
        f"| {_plain(kind)} | {scores['count']} | {_pct(metrics['by_kind_before'].get(kind, {}).get('exact_match'))} "
        f"| {_pct(scores['exact_match'])} |"
        for kind, scores in metrics["by_kind_after"].items()
    ) or "| (no held-out images) | 0 | n/a | n/a |"
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
- rows used: {args['rows_used']} ({args['train_rows']} trained on, {args['heldout_rows']} held out by image hash),
  of which {args['regression_rows']} are the regression set (stored images the live model captions confidently);
  {args.get('recoloured_views', 0)} recoloured views of the corrections that taught no colour word
- LoRA rank {args['lora_r']} on the {args['lora_targets']} layers, learning rate {args['lr']},
  {metrics['training']['steps']} training steps, self-distillation weight {args['distill']}

## The two figures the gate decided on (held-out images, exact match)

- **New concepts** (held-out corrections): {_pct(new['before'])} before, {_pct(new['after'])} after ({new['count']} images){_unjudged(new)}
- **Old knowledge** ({old.get('judged_on') or 'held-out images the live model captions right'}): {_pct(old['before'])} before,
  {_pct(old['after'])} after ({old['count']} images); a model that loses more than {args['max_forgetting'] * 100:g}
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


def _plain(text: str) -> str:
    """Text from corrections, shown as itself in Markdown: every character Markdown could read is escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", text)


def _number(value) -> str:
    return "n/a" if value is None else str(value)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"
