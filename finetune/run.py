"""main(cfg): approved feedback -> LoRA fine-tune -> held-out judgement and gate -> a published version."""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from filelock import FileLock, Timeout

from captioner import images, registry
from captioner.feedback import FeedbackLog
from captioner.loading import serve
from captioner.models import LoadedModel, ModelError
from captioner.runtime import lock_holder

from . import judge
from .config import FinetuneConfig, resolve_home
from .data import DataError, Example, approved_examples, heldout_images
from .errors import FinetuneError, NotLive, Refused
from .plan import describe
from .progress import counter, say
from .publish import write_version
from .regression import keep_confident, regression_examples
from .tensors import RowTensors, to_tensors
from .trainer import TrainingError, check_rank, distributed, train, with_lora
from .views import with_views


RUN_LOCK = ".finetune.lock"  # one retrain at a time per models folder, however it was started


def log(message: str) -> None:
    print(f"finetune: {message}", file=sys.stderr, flush=True)


@dataclass
class Models:
    """The model training starts from, and the live one the result is judged against (often the same)."""

    base: LoadedModel
    live: LoadedModel


@dataclass
class Baseline:
    """The held-out images as the live model (and the base, when training starts elsewhere) captions them."""

    inputs: list  # the held-out images, read once
    live_right: list[bool]  # which of them the live model captions right: their old ones are the regression set
    live: dict  # judge.report of the live model
    before: dict  # judge.report of the model training starts from
    anchors: list  # when no held-out image holds old knowledge: the images it is judged on instead
    anchors_live: list[str]  # ... and what the live model says of them


def main(cfg: FinetuneConfig) -> Path | None:
    """Run the whole loop; returns the published version's folder. Raises Refused when the gate says no and
    FinetuneError when the run cannot start or finish; nothing goes live then.

    Under `accelerate launch` every process trains its share of each batch; only the first (RANK 0)
    evaluates and publishes, and the others return None. cfg.dry_run: print the plan, return None.
    """
    started = time.time()
    try:
        cfg.validate()
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    settings = resolve_home(cfg)
    check_progress_file(cfg)
    examples = approved(FeedbackLog(settings.data_dir), cfg)  # before anything is written: a refused run writes nothing
    try:
        cfg.check_length(len(examples))  # a run of days is refused before the model loads, not found out
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    if cfg.dry_run:
        print(describe(cfg, settings, examples))
        return None
    if int(os.environ.get("RANK", "0")) != 0:  # another process of `accelerate launch`: it only trains
        retrain_and_publish(cfg, settings, examples, None)
        return None
    if settings.models_dir.exists() and not settings.models_dir.is_dir():
        raise FinetuneError(f"cannot write into {settings.models_dir}: it is a file, not a folder; nothing was trained")
    try:
        for left in registry.remove_stale_staging(settings.models_dir):  # said: a run killed before it could say so
            log(f"removed models/{left}: an unfinished version a killed retrain left")
        run_lock = FileLock(str(settings.models_dir / RUN_LOCK), timeout=0)
        run_lock.acquire()
    except Timeout:
        holder = lock_holder(settings.models_dir / RUN_LOCK)
        raise FinetuneError(f"another retrain is running on {settings.models_dir}{f' ({holder})' if holder else ''}; "
                            "nothing was trained") from None  # fmt: skip
    except OSError as exc:  # its lock file cannot be made: a read-only or full models folder
        raise FinetuneError(f"cannot write into {settings.models_dir}: {exc.strerror or exc}; nothing was trained") from None
    try:
        live = registry.active_state(settings.models_dir)  # what the run is judged against must still be live at the end
        staging = writable_staging(settings)
        try:
            version = retrain_and_publish(cfg, settings, examples, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log(f"published models/{version} in {time.time() - started:.0f}s")
        if cfg.activate:
            say(cfg.progress_file, "activate", f"Making {version} live (checked on a fixed set of images first)")
            make_live(settings, version, registry.ANY if live.problem else live.version)
        return settings.models_dir / version
    finally:
        run_lock.release()


def make_live(settings, version: str, judged_against) -> None:
    """Activate the published version, only if the model it was judged against is still the live one."""
    try:
        problem = registry.version_problem(settings.models_dir / version)  # as published, not as written
        if problem:
            raise NotLive(f"published {version}, but it is not made live: {problem}", version)
        registry.activate(settings.models_dir, version, expected=judged_against)
    except registry.RegistryError as exc:
        raise NotLive(f"published {version}, but it is not made live: {exc}; it was judged against "
                      f"{judged_against or 'the default model'}: compare it on the admin page and activate it by name",
                      version) from None  # fmt: skip
    except KeyboardInterrupt:
        raise NotLive(f"cancelled after publishing {version}: it is not live (activate it by name to use it)",
                      version, "cancelled") from None  # fmt: skip
    log(f"{version} is live")


def retrain_and_publish(cfg: FinetuneConfig, settings, examples: list[Example], staging: Path | None) -> str | None:
    """The steps of a run, in order; returns the published version (None in a process that only trains)."""
    feedback, report = FeedbackLog(settings.data_dir), cfg.progress_file
    say(report, "load", "Loading the model to start from")
    models = load_models(cfg, settings)
    try:
        check_rank(models.base.model, cfg)  # before minutes of decoding images
    except TrainingError as exc:
        raise FinetuneError(str(exc)) from None
    rows, heldout = prepare(models, feedback, examples, cfg)
    if staging is None:
        train_model(models, rows, cfg, None)
        return None
    judged = f"the {len(heldout)} held-out images" if heldout else "fixed check images (no image is held out)"
    say(report, "judge", f"Captioning {judged} with the live model (before training)")
    baseline = judge_untrained(models, heldout, counter(report, "judge", "Captioning the held-out images with the live model"))
    peft_model, stats = train_model(models, rows, cfg, Path(report) if report else None)
    say(report, "save", "Saving the trained adapter")
    with writing(settings):
        peft_model.save_pretrained(staging / "adapter")
    say(report, "judge", f"Captioning {judged} with the new model")
    judging = counter(report, "judge", "Captioning the held-out images with the new model")
    after = judge_trained(models, peft_model, heldout, baseline, cfg, judging)
    say(report, "save", "Writing the new version (the merged model, its scores and card)")
    with writing(settings):
        write_version(staging, models, settings, cfg, examples, rows, heldout, baseline.before, after, stats)
        return registry.publish(settings.models_dir, staging)


@contextmanager
def writing(settings):
    """A disk that fills up or turns read-only while the version is written: one clear error, nothing published."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as exc:
        said = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        raise FinetuneError(f"cannot write the new version into {settings.models_dir}: {said}; nothing was published") from None


def check_progress_file(cfg: FinetuneConfig) -> None:
    """An unwritable progress file is one clear error up front, not a traceback after minutes of work."""
    if cfg.progress_file:
        try:
            with open(cfg.progress_file, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise FinetuneError(f"cannot write the progress file {cfg.progress_file}: {exc.strerror or exc}") from None


def writable_staging(settings) -> Path:
    """The folder the new version is written into, made before any training: an unwritable models/ is one clear
    error up front, not a traceback after minutes of work."""
    try:
        staging = registry.staging_dir(settings.models_dir)
        (staging / ".write-check").write_bytes(b"ok")
        (staging / ".write-check").unlink()
    except OSError as exc:
        raise FinetuneError(
            f"cannot write the new version into {settings.models_dir}: {exc.strerror or exc}; nothing was trained"
        ) from None
    return staging


def approved(feedback: FeedbackLog, cfg: FinetuneConfig) -> list[Example]:
    """The approved caption rows, or FinetuneError when there are too few or their images are missing."""
    try:
        examples, problems = approved_examples(feedback)
    except DataError as exc:
        raise FinetuneError(str(exc)) from None
    for problem in problems:
        log(f"skipping a broken row: {problem}")
    if len(examples) < cfg.min_rows:  # images, not rows: 30 approved rows of 10 images said "only 10 approved rows"
        rows = sum(r.task == "caption" and r.status == "approved" and bool(r.correction.strip()) for r in feedback.read()[0])
        what = (f"{len(examples)} images with an approved caption ({rows} approved caption rows: the latest of each image "
                "counts)" if rows != len(examples) else f"{len(examples)} approved caption row(s)")  # fmt: skip
        where = (f"in {feedback.csv_path}" if feedback.csv_path.exists()
                 else f"{feedback.csv_path} does not exist (is CAPTIONER_HOME, or --home, the folder holding data/?)")  # fmt: skip
        raise FinetuneError(f"only {what}; --min-rows is {cfg.min_rows}; {where}")
    return examples


def load_models(cfg: FinetuneConfig, settings) -> Models:
    """The model to train (full precision: bf16 copies are made for training on a GPU) and the live one."""
    if distributed() and settings.device in ("auto", "cuda"):  # each process of `accelerate launch` on its own GPU
        settings = replace(settings, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    try:
        base = serve("caption", replace(settings, dtype="float32"), cfg.base or None)  # "": live; models/v0001 from any folder
        live = serve("caption", settings) if cfg.base else base
    except ModelError as exc:
        raise FinetuneError(f"cannot load the model to start from: {exc}") from None
    for served in {id(base): base, id(live): live}.values():
        if served.fallback_reason:
            log(f"note: {served.fallback_reason}")
    return Models(base.model, live.model)


def prepare(models: Models, feedback: FeedbackLog, examples: list[Example], cfg: FinetuneConfig) -> tuple[RowTensors, list[Example]]:
    """Training rows on the device (corrections, confirmations, the confident regression set), and the held-out examples."""
    import torch

    report = cfg.progress_file
    regression = regression_examples(models.live, feedback, {e.sha256 for e in examples}, cfg.regression_images,
                                     counter(report, "prepare", "Captioning stored images nobody corrected (the regression set)"))
    dtype = torch.bfloat16 if models.base.device.type == "cuda" else torch.float32
    try:
        rows, problems = to_tensors(examples + regression, models.base.processor, models.base.device, dtype,
                                    on_progress=counter(report, "prepare", "Decoding images"))  # fmt: skip
    except DataError as exc:
        raise FinetuneError(str(exc)) from None
    for problem in problems:
        log(f"skipping an image that cannot be decoded: {problem}")
    if regression:
        say(report, "prepare", f"Checking which of the {len(regression)} regression images the live model is sure of")
    rows, unsure = keep_confident(models.live.model, rows)
    held = heldout_images(rows.examples, cfg.heldout_fraction)
    heldout_mask = torch.tensor([e.sha256 in held for e in rows.examples], device=rows.pixels.device)
    train_rows, heldout = rows.select(~heldout_mask), [e for e in rows.examples if e.sha256 in held]
    counts = {kind: sum(e.kind == kind for e in train_rows.examples) for kind in ("correction", "confirmation", "regression")}
    log(f"{len(train_rows)} images to train on ({', '.join(f'{n} {k}s' for k, n in counts.items())}), {len(heldout)} held out"
        + (f"; {unsure} stored images left out of the regression set: the live model was unsure of them" if unsure else ""))
    if cfg.recoloured_views:
        say(report, "prepare", "Making recoloured views of the corrections")
    train_rows, views = with_views(models.base.model, models.base.processor.tokenizer, train_rows, cfg.recoloured_views)
    if views:
        log(f"{views} recoloured views of the corrections that taught no colour word")
    return train_rows, heldout


def train_model(models: Models, rows: RowTensors, cfg: FinetuneConfig, progress_file: Path | None):
    """The base model with trained LoRA adapters, and the loss statistics."""
    try:  # again with the rows it trains on: the regression set and recoloured views can multiply the approved ones
        cfg.check_length(len(rows), "training rows (approved, regression set and recoloured views)")
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    peft_model = with_lora(models.base.model, models.base.processor.tokenizer, rows, cfg)
    try:
        stats = train(peft_model, rows, cfg, progress_file, bf16=models.base.device.type == "cuda")
    except TrainingError as exc:
        raise FinetuneError(f"training stopped: {exc}") from None
    return peft_model, stats


def judge_untrained(models: Models, heldout: list[Example], on_progress=None) -> Baseline:
    """Caption the held-out images with the live model (and the base, if it differs) before training."""
    inputs = [images.read_file(e.image_path) for e in heldout]
    live_said = judge.captions(models.live, inputs, on_progress)
    live_right = judge.right(live_said, heldout)
    live = judge.report(live_said, heldout, live_right)
    before = live if models.base is models.live else judge.report(judge.captions(models.base, inputs), heldout, live_right)
    anchors, anchors_live = [], []
    if not live["old"]["count"]:  # nothing held out shows what the live model knew: judge forgetting on the anchors
        anchors, anchors_live = judge.anchors(models.live)
        if anchors:
            live["old"] = judge.on_anchors(anchors_live, anchors_live)
            if before is not live:
                before["old"] = judge.on_anchors(judge.captions(models.base, anchors), anchors_live)
            log(f"no held-out image holds old knowledge: forgetting is judged on {live['old']['judged_on']}")
        else:
            log("no held-out image holds old knowledge, and the live model is sure of no anchor image: forgetting is not judged")
    log(f"held-out before: {_summary(before)}")
    if before is not live:
        log(f"held-out live: {_summary(live)}")
    return Baseline(inputs, live_right, live, before, anchors, anchors_live)


def judge_trained(models: Models, peft_model, heldout: list[Example], baseline: Baseline, cfg: FinetuneConfig,
                  on_progress=None) -> dict:  # fmt: skip
    """Merge the adapters, caption the held-out images, and refuse a model that is broken, worse or forgetful."""
    import torch

    merged = peft_model.merge_and_unload()
    if not all(bool(torch.isfinite(p).all()) for p in merged.parameters()):
        raise FinetuneError("the trained weights hold NaN or inf values; nothing was published")
    models.base.model = merged
    after = judge.report(judge.captions(models.base, baseline.inputs, on_progress), heldout, baseline.live_right)
    if baseline.anchors:
        after["old"] = judge.on_anchors(judge.captions(models.base, baseline.anchors), baseline.anchors_live)
        log(f"anchors after: {after['old']['exact_match']:.0%} agree with the live model")
    log(f"held-out after: {_summary(after)}")
    reason = judge.refusal(after, baseline.live, cfg.max_forgetting)
    if reason:
        raise Refused(f"not published: {reason}; the live model stays {models.live.name} ({models.live.version})")
    return after


def _summary(report: dict) -> str:
    if report["overall"]["exact_match"] is None:
        return "no held-out images"
    parts = [f"{kind} {s['exact_match']:.0%} of {s['count']}" for kind, s in report["by_kind"].items() if s["count"]]
    return f"exact match {report['overall']['exact_match']} overall; " + ", ".join(parts)


