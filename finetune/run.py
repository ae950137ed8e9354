"""main(cfg): approved feedback -> LoRA fine-tune -> held-out judgement and gate -> a published version."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from captioner import images, registry
from captioner.feedback import FeedbackLog, now_utc
from captioner.models import LoadedModel

from . import judge
from .card import base_license, base_reference, model_card
from .config import FinetuneConfig, resolve_home
from .data import DataError, Example, approved_examples, is_heldout
from .errors import FinetuneError, Refused
from .regression import keep_confident, regression_examples
from .tensors import RowTensors, to_tensors
from .trainer import TrainingError, train, with_lora


def log(message: str) -> None:
    print(f"finetune: {message}", file=sys.stderr, flush=True)


@dataclass
class Models:
    """The model training starts from, and the live one the result is judged against (often the same)."""

    base: LoadedModel
    live: LoadedModel


def main(cfg: FinetuneConfig) -> Path | None:
    """Run the whole loop; returns the published version's folder. Raises Refused when the gate says no and
    FinetuneError when the run cannot start or finish; nothing goes live then.

    Under `accelerate launch` every process trains its share of each batch; only the first (RANK 0)
    evaluates and publishes, and the others return None.
    """
    started = time.time()
    try:
        cfg.validate()
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    settings = resolve_home(cfg)
    first_process = int(os.environ.get("RANK", "0")) == 0
    registry.remove_stale_staging(settings.models_dir)
    staging = writable_staging(settings, cfg) if first_process else None
    try:
        feedback = FeedbackLog(settings.data_dir)
        examples = approved(feedback, cfg)
        models = load_models(cfg, settings)
        train_rows, heldout = prepare(models, feedback, examples, cfg)
        if not first_process:
            train_model(models, train_rows, cfg, None)
            return None
        live_said = judge.captions(models.live, heldout_inputs := [images.read_file(e.image_path) for e in heldout])
        live_right = judge.right(live_said, heldout)
        live_report = judge.report(live_said, heldout, live_right)
        before = live_report if models.base is models.live else judge.report(judge.captions(models.base, heldout_inputs), heldout, live_right)
        log(f"held-out before: {_summary(before)}")
        peft_model, stats = train_model(models, train_rows, cfg, Path(cfg.progress_file) if cfg.progress_file else None)
        peft_model.save_pretrained(staging / "adapter")
        after = judge_trained(models, peft_model, heldout, heldout_inputs, live_right, live_report, cfg)
        metrics = write_version(staging, models, settings, cfg, examples, train_rows, heldout, before, after, stats)
        version = registry.publish(settings.models_dir, staging)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"published models/{version} in {time.time() - started:.0f}s (new concepts {metrics['new_concepts']['after']}, "
        f"old knowledge {metrics['old_knowledge']['after']})")  # fmt: skip
    if cfg.activate:
        registry.activate(settings.models_dir, version)
        log(f"{version} is live")
    return settings.models_dir / version


def writable_staging(settings, cfg: FinetuneConfig) -> Path:
    """The folder the new version is written into, made before any training: an unwritable models/ (or
    progress file) is one clear error up front, not a traceback after minutes of work."""
    try:
        staging = registry.staging_dir(settings.models_dir)
        (staging / ".write-check").write_bytes(b"ok")
        (staging / ".write-check").unlink()
    except OSError as exc:
        raise FinetuneError(f"cannot write the new version into {settings.models_dir}: {exc.strerror or exc}; nothing was trained") from None
    if cfg.progress_file:
        try:
            with open(cfg.progress_file, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise FinetuneError(f"cannot write the progress file {cfg.progress_file}: {exc.strerror or exc}") from None
    return staging


def approved(feedback: FeedbackLog, cfg: FinetuneConfig) -> list[Example]:
    """The approved caption rows, or FinetuneError when there are too few or their images are missing."""
    try:
        examples, problems = approved_examples(feedback)
    except DataError as exc:
        raise FinetuneError(str(exc)) from None
    for problem in problems:
        log(f"skipping a broken row: {problem}")
    if len(examples) < cfg.min_rows:
        raise FinetuneError(f"only {len(examples)} approved caption row(s); --min-rows is {cfg.min_rows}")
    return examples


def load_models(cfg: FinetuneConfig, settings) -> Models:
    """The model to train (full precision: bf16 copies are made for training on a GPU) and the live one."""
    from captioner.models import ModelError, live_caption_spec, load_captioner

    live_spec = live_caption_spec(settings)
    base_spec = cfg.base or live_spec
    try:
        base = load_captioner(base_spec, replace(settings, dtype="float32"), fallback=True)
        live = base if base_spec == live_spec else load_captioner(live_spec, settings, fallback=True)
    except ModelError as exc:
        raise FinetuneError(f"cannot load the model to start from: {exc}") from None
    if base.fallback_reason:
        log(f"note: {base.fallback_reason}")
    return Models(base, live)


def prepare(models: Models, feedback: FeedbackLog, examples: list[Example], cfg: FinetuneConfig) -> tuple[RowTensors, list[Example]]:
    """Training rows on the device (corrections, confirmations, the confident regression set), and the held-out examples."""
    import torch

    regression = regression_examples(models.live, feedback, {e.sha256 for e in examples}, cfg.regression_images)
    dtype = torch.bfloat16 if models.base.device.type == "cuda" else torch.float32
    try:
        rows, problems = to_tensors(examples + regression, models.base.processor, models.base.device, dtype)
    except DataError as exc:
        raise FinetuneError(str(exc)) from None
    for problem in problems:
        log(f"skipping an image that cannot be decoded: {problem}")
    rows, unsure = keep_confident(models.live.model, rows)
    heldout_mask = torch.tensor([is_heldout(e.sha256, cfg.heldout_fraction) for e in rows.examples], device=rows.pixels.device)
    train_rows, heldout = rows.select(~heldout_mask), [e for e in rows.examples if is_heldout(e.sha256, cfg.heldout_fraction)]
    if not len(train_rows):
        raise FinetuneError(f"all {len(rows)} images fell in the held-out split; lower --heldout-fraction ({cfg.heldout_fraction})")
    counts = {kind: sum(e.kind == kind for e in train_rows.examples) for kind in ("correction", "confirmation", "regression")}
    log(f"{len(train_rows)} images to train on ({', '.join(f'{n} {k}s' for k, n in counts.items())}), {len(heldout)} held out"
        + (f"; {unsure} stored images left out of the regression set: the live model was unsure of them" if unsure else ""))
    return train_rows, heldout


def train_model(models: Models, rows: RowTensors, cfg: FinetuneConfig, progress_file: Path | None):
    """The base model with trained LoRA adapters, and the loss statistics."""
    peft_model = with_lora(models.base.model, models.base.processor.tokenizer, rows, cfg)
    try:
        stats = train(peft_model, rows, cfg, progress_file, bf16=models.base.device.type == "cuda")
    except TrainingError as exc:
        raise FinetuneError(f"training stopped: {exc}") from None
    return peft_model, stats


def judge_trained(models: Models, peft_model, heldout, heldout_inputs, live_right, live_report, cfg) -> dict:
    """Merge the adapters, caption the held-out images, and refuse a model that is broken, worse or forgetful."""
    import torch

    merged = peft_model.merge_and_unload()
    if not all(bool(torch.isfinite(p).all()) for p in merged.parameters()):
        raise FinetuneError("the trained weights hold NaN or inf values; nothing was published")
    models.base.model = merged
    after = judge.report(judge.captions(models.base, heldout_inputs), heldout, live_right)
    log(f"held-out after: {_summary(after)}")
    reason = judge.refusal(after, live_report, cfg.max_forgetting)
    if reason:
        raise Refused(f"not published: {reason}; the live model stays {models.live.name} ({models.live.version})")
    return after


def write_version(staging: Path, models: Models, settings, cfg, examples, rows: RowTensors, heldout, before, after, stats) -> dict:
    """The checkpoint, checked through the app's loading path, with metrics.json, train_args.json and the card."""
    base = base_reference(models.base.spec, settings.home)
    _portable_adapter_config(staging / "adapter", base)
    models.base.model.save_pretrained(staging)
    models.base.processor.save_pretrained(staging)
    check = _check_published(staging, settings)
    metrics = {
        "heldout_before": before["overall"], "heldout_after": after["overall"],
        "new_concepts": _figure(before["new"], after["new"]), "old_knowledge": _figure(before["old"], after["old"]),
        "by_kind_before": before["by_kind"], "by_kind_after": after["by_kind"], "check_set": check, "training": stats,
    }  # fmt: skip
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    args = {
        **asdict(cfg), "home": "", "progress_file": "", "created": now_utc(),
        "base": f"{base['name']} ({models.base.version})", "base_model": base["name"], "base_revision": base["revision"],
        "base_hub_id": base["hub_id"], "rows_used": len(examples), "train_rows": len(rows),
        "heldout_rows": len(heldout), "regression_rows": sum(e.kind == "regression" for e in rows.examples + heldout),
    }  # fmt: skip
    (staging / "train_args.json").write_text(json.dumps(args, indent=2) + "\n")
    (staging / "README.md").write_text(model_card(args, metrics, base_license(base, models.base.spec)), encoding="utf-8")
    return metrics


def _figure(before: dict, after: dict) -> dict:
    return {"before": before["exact_match"], "after": after["exact_match"], "count": after["count"]}


def _summary(report: dict) -> str:
    parts = [f"{kind} {s['exact_match']:.0%} of {s['count']}" for kind, s in report["by_kind"].items() if s["count"]]
    return f"exact match {report['overall']['exact_match']} overall; " + ", ".join(parts)


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
    from captioner.caption import check_captioner
    from captioner.models import ModelError, ModelSpec, load_blip

    try:
        loaded = load_blip(ModelSpec(str(folder), "caption", "local", str(folder), "candidate"), settings)
        return check_captioner(loaded)
    except ModelError as exc:
        raise Refused(f"not published: {exc}") from None


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
        _final(cfg, "refused" if isinstance(exc, Refused) else "failed", str(exc))
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
