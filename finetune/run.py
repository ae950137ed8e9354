"""main(cfg): approved feedback -> LoRA fine-tune -> held-out and check-set evaluation -> a published version."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

from captioner import registry
from captioner.feedback import FeedbackLog, now_utc

from .config import FinetuneConfig, resolve_home
from .data import DataError, approved_examples, split, to_dataset
from .metrics import caption_scores, worse
from .trainer import TrainingError, train, with_lora


class FinetuneError(RuntimeError):
    """A run that cannot start, fails, or is refused; the message says why. Nothing goes live."""


def log(message: str) -> None:
    print(f"finetune: {message}", file=sys.stderr, flush=True)


def evaluate(loaded, examples) -> dict:
    """Caption the examples (greedy) and score them against their captions."""
    from captioner.caption import GenerationOptions, caption_images
    from captioner.images import read_file

    if not examples:
        return caption_scores([], [])
    results = caption_images(loaded, [read_file(e.image_path) for e in examples], GenerationOptions(num_beams=1), batch_size=32)
    return caption_scores([r.caption or "" for r in results], [e.caption for e in examples])


def main(cfg: FinetuneConfig) -> Path | None:
    """Run the whole loop; returns the published version's folder. Raises FinetuneError when refused.

    Under `accelerate launch` every process trains its share of each batch; only the first (RANK 0)
    evaluates and publishes, and the others return None.
    """
    from captioner.models import ModelError, live_caption_spec, load_captioner

    started = time.time()
    try:
        cfg.validate()
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    settings = resolve_home(cfg)
    progress_file = Path(cfg.progress_file) if cfg.progress_file else None
    registry.remove_stale_staging(settings.models_dir)
    try:
        examples, problems = approved_examples(FeedbackLog(settings.data_dir))
    except DataError as exc:
        raise FinetuneError(str(exc)) from None
    for problem in problems:
        log(f"skipping a broken row: {problem}")
    if len(examples) < cfg.min_rows:
        raise FinetuneError(f"only {len(examples)} approved caption row(s); --min-rows is {cfg.min_rows}")
    train_set, heldout = split(examples, cfg.heldout_fraction)
    dataset = to_dataset(train_set)
    log(f"{len(examples)} images: {len(dataset)} to train on, {len(heldout)} held out")

    live_spec = live_caption_spec(settings)
    base_spec = cfg.base or live_spec
    try:
        base = load_captioner(base_spec, replace(settings, dtype="float32"), fallback=True)
        live = base if base_spec == live_spec else load_captioner(live_spec, settings, fallback=True)
    except ModelError as exc:
        raise FinetuneError(f"cannot load the model to start from: {exc}") from None
    if base.fallback_reason:
        log(f"note: {base.fallback_reason}")
    base_name, base_version = base.name, base.version
    first_process = int(os.environ.get("RANK", "0")) == 0
    if first_process:
        before = evaluate(base, heldout)
        live_scores = before if live is base else evaluate(live, heldout)
        log(f"held-out before: {before}")

    peft_model = with_lora(base.model, base.processor.tokenizer, dataset["caption"], cfg)
    try:
        stats = train(peft_model, base.processor, dataset, cfg, progress_file if first_process else None)
    except TrainingError as exc:
        raise FinetuneError(f"training stopped: {exc}") from None
    if not first_process:
        return None
    staging = registry.staging_dir(settings.models_dir)
    try:
        peft_model.save_pretrained(staging / "adapter")
        merged = peft_model.merge_and_unload()
        base.model = merged
        after = evaluate(base, heldout)
        log(f"held-out after: {after}")
        refusal = _refusal(after, live_scores, merged)
        if refusal:
            raise FinetuneError(f"not published: {refusal}; the live model stays {live.name} ({live.version})")
        _write_checkpoint(merged, base.processor, staging)
        check = _check_published(staging, settings)
        metrics = {
            "heldout_before": before, "heldout_after": after, "heldout_live": live_scores,
            "check_set": check, "training": stats,
        }  # fmt: skip
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        args = {**asdict(cfg), "created": now_utc(), "base": f"{base_name} ({base_version})",
                "rows_used": len(examples), "train_rows": len(train_set), "heldout_rows": len(heldout)}  # fmt: skip
        (staging / "train_args.json").write_text(json.dumps(args, indent=2) + "\n")
        (staging / "README.md").write_text(_model_card(args, metrics))
        version = registry.publish(settings.models_dir, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"published models/{version} in {time.time() - started:.0f}s")
    if cfg.activate:
        registry.activate(settings.models_dir, version)
        log(f"{version} is live")
    return settings.models_dir / version


def _write_checkpoint(model, processor, folder: Path) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _check_published(folder: Path, settings) -> list[str]:
    """Load the written checkpoint back through the app's own path and caption the check set."""
    from captioner.caption import check_captioner
    from captioner.models import ModelError, ModelSpec, load_blip

    try:
        loaded = load_blip(ModelSpec(str(folder), "caption", "local", str(folder), "candidate"), settings)
        return check_captioner(loaded)
    except ModelError as exc:
        raise FinetuneError(f"not published: {exc}") from None


def _refusal(after: dict, live: dict, model) -> str | None:
    import torch

    if any(not torch.isfinite(p).all() for p in model.parameters()):
        raise FinetuneError("not published: the trained weights hold NaN or inf values")
    if worse(after, live):
        return (f"held-out exact match {after['exact_match']} / CIDEr {after['cider']} is worse than the live model's "
                f"{live['exact_match']} / {live['cider']}")  # fmt: skip
    return None


def _model_card(args: dict, metrics: dict) -> str:
    rows = "\n".join(
        f"| {name} | {metrics['heldout_before'].get(name)} | {metrics['heldout_after'].get(name)} |"
        for name in ("exact_match", "bleu4", "cider")
    )
    return f"""# Fine-tuned captioner

BLIP captioner fine-tuned with LoRA (peft) on approved corrections from `data/feedback.csv`.

- created: {args['created']}
- base model: {args['base']}
- rows used: {args['rows_used']} ({args['train_rows']} trained on, {args['heldout_rows']} held out by image hash)
- LoRA rank {args['lora_r']}, alpha {args['lora_alpha'] or 2 * args['lora_r']}, learning rate {args['lr']}, {metrics['training']['epochs']} epochs

Held-out split, before and after:

| metric | before | after |
| --- | --- | --- |
{rows}

Check set captions: {", ".join(metrics['check_set'])}

Files: the merged model and processor (`from_pretrained` this folder), `adapter/` (the LoRA adapter alone),
`metrics.json`, `train_args.json`.
"""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(argv: list[str] | None = None) -> int:
    """`python -m finetune ...`: exit 0 when a version was published, 1 when refused or failed, 130 when cancelled."""
    from .config import parse_args

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's business
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # Cancel on the admin page: clean up like Ctrl-C
    try:
        folder = main(cfg)
    except FinetuneError as exc:
        log(str(exc))
        status = "refused" if "not published" in str(exc) else "failed"
        _final(cfg, status, str(exc))
        return 1
    except KeyboardInterrupt:
        log("cancelled; nothing was published and the live model is unchanged")
        _final(cfg, "cancelled", "cancelled; nothing was published")
        return 130
    except Exception as exc:  # an unexpected failure still ends the run visibly for the admin page
        _final(cfg, "failed", f"{type(exc).__name__}: {exc}")
        raise
    if folder is not None:
        _final(cfg, "published", f"published {folder.name}" + (" and made it live" if cfg.activate else ""), folder.name)
    return 0


def _final(cfg: FinetuneConfig, status: str, message: str, version: str | None = None) -> None:
    if cfg.progress_file:
        with open(cfg.progress_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), "phase": "done", "status": status, "message": message,
                                     "version": version}) + "\n")  # fmt: skip
