"""What every demo model's training shares: the training loop, its schedule, and publishing a model folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable


def fit(model, recipe, seed: int, step_loss: Callable, name: str, started: float, log: Callable,
        weight_decay: float = 0.01, after_step: Callable | None = None) -> None:  # fmt: skip
    """The demo models' training loop: AdamW, warmup then cosine decay, clipped gradients, a log line every
    200 steps. step_loss(generator) draws a batch and returns its loss."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup, recipe.steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(recipe.steps):
        loss = step_loss(generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step:
            after_step()
        if step % 200 == 0 or step == recipe.steps - 1:
            log(f"{name}: step {step + 1}/{recipe.steps} loss {loss.item():.4f} ({time.time() - started:.0f}s)")


def save_pretrained(model, processor) -> Callable[[Path], Path]:
    """A saver for publish(): the transformers checkpoint of a model and its processor; returns the weights file."""

    def save(folder: Path) -> Path:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        return folder / "model.safetensors"

    return save


def publish(save: Callable[[Path], Path], target: Path, kind: str, evaluate: Callable, record: dict, log: Callable) -> dict:
    """Save beside the target, measure through the real loading path, then swap the folder into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o755)
    try:
        weights = save(staging)
        for item in staging.iterdir():
            item.chmod(0o644)
        version = "demo-" + hashlib.sha256(weights.read_bytes()).hexdigest()[:8]
        metrics = {"version": version, "kind": kind, **record, **evaluate(staging, version)}
        (staging / "demo.json").write_text(json.dumps(metrics, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}-old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return metrics
