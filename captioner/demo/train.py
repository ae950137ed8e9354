"""`python -m captioner demo build`: train the embedded demo models on the demo world from a fixed seed."""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from . import MODELS_DIR, TOKENIZER_DIR
from .world import ALL_COLORS, EXTRA_SHAPES, SHAPES, sample


@dataclass(frozen=True)
class CaptionRecipe:
    """The demo captioner: a small BLIP, its data and its training schedule."""

    image_size: int = 64
    patch_size: int = 8
    hidden: int = 128
    vision_layers: int = 4
    text_layers: int = 2
    heads: int = 4
    max_positions: int = 32
    samples: int = 40_000
    core_fraction: float = 0.5  # half the images from the core world the quality bar is measured on
    steps: int = 1600
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    eval_images: int = 400


def build_all(out_dir: Path | None = None, seed: int = 0, steps: int | None = None, log: Callable = print) -> dict:
    """Retrain every demo model into out_dir (default: the package's own); returns their metrics."""
    from .train_clip import ClipRecipe, build_clip_model
    from .train_qa import QARecipe, build_qa_model
    from .train_rewriter import RewriterRecipe, build_rewriter

    out_dir = Path(out_dir) if out_dir else MODELS_DIR
    recipes = [CaptionRecipe(), QARecipe(), ClipRecipe(), RewriterRecipe()]
    if steps is not None:
        recipes = [replace(recipe, steps=steps) for recipe in recipes]
    caption_recipe, qa_recipe, clip_recipe, rewriter_recipe = recipes
    metrics = {"caption": build_captioner(out_dir / "caption", caption_recipe, seed, log)}
    metrics["qa"] = build_qa_model(out_dir / "qa", out_dir / "caption", qa_recipe, seed, log)
    metrics["search"] = build_clip_model(out_dir / "search", clip_recipe, seed, log)
    metrics["style"] = build_rewriter(out_dir / "style", out_dir / "caption", out_dir / "qa", rewriter_recipe, seed, log)
    return metrics


def processor_for(recipe: CaptionRecipe):
    """The demo BLIP processor: the trimmed WordPiece tokenizer and a small square image processor."""
    from transformers import AutoTokenizer, BlipImageProcessor, BlipProcessor

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    size = {"height": recipe.image_size, "width": recipe.image_size}
    return BlipProcessor(image_processor=BlipImageProcessor(size=size), tokenizer=tokenizer)


def caption_config(recipe: CaptionRecipe, tokenizer):
    from transformers import BlipConfig

    hidden, ffn = recipe.hidden, 3 * recipe.hidden
    return BlipConfig(
        vision_config=dict(
            hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=recipe.vision_layers,
            num_attention_heads=recipe.heads, image_size=recipe.image_size, patch_size=recipe.patch_size,
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, encoder_hidden_size=hidden, intermediate_size=ffn,
            num_hidden_layers=recipe.text_layers, num_attention_heads=recipe.heads,
            max_position_embeddings=recipe.max_positions, bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
        ),
    )  # fmt: skip


def caption_batch_tensors(processor, captions: list[str]):
    """Decoder inputs and labels for captions: BLIP starts with [DEC], and pad positions carry no loss."""
    encoded = processor.tokenizer(captions, padding="longest", return_tensors="pt")
    input_ids = encoded.input_ids.clone()
    input_ids[:, 0] = processor.tokenizer.bos_token_id
    labels = input_ids.masked_fill(encoded.attention_mask == 0, -100)
    return input_ids, encoded.attention_mask, labels


def _training_data(processor, recipe: CaptionRecipe, rng: random.Random):
    """Images rendered and preprocessed once (fp16), in chunks so no more than a chunk of pictures is held."""
    import torch

    broad_shapes, broad_colors = SHAPES + EXTRA_SHAPES, tuple(ALL_COLORS)
    captions, pixels = [], []
    for start in range(0, recipe.samples, 512):
        chunk = [
            sample(rng) if rng.random() < recipe.core_fraction else sample(rng, broad_shapes, broad_colors)
            for _ in range(min(512, recipe.samples - start))
        ]
        captions += [item.caption for item in chunk]
        images = [item.image for item in chunk]
        pixels.append(processor.image_processor(images=images, return_tensors="pt")["pixel_values"].half())
    return (torch.cat(pixels), *caption_batch_tensors(processor, captions))


def build_captioner(target: Path, recipe: CaptionRecipe, seed: int, log: Callable = print) -> dict:
    """Train the demo captioner, check it through the real loading path, and put it in place."""
    import torch
    from transformers import BlipForConditionalGeneration

    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = processor_for(recipe)
    started = time.time()
    pixels, input_ids, attention, labels = _training_data(processor, recipe, rng)
    log(f"demo captioner: {len(pixels)} training images ready in {time.time() - started:.0f}s")
    model = BlipForConditionalGeneration(caption_config(recipe, processor.tokenizer))

    def step_loss(generator):
        index = torch.randint(0, len(pixels), (recipe.batch_size,), generator=generator)
        return model(
            pixel_values=pixels[index].float(), input_ids=input_ids[index],
            attention_mask=attention[index], labels=labels[index],
        ).loss  # fmt: skip

    fit(model, recipe, seed, step_loss, "demo captioner", started, log)
    record = {"seed": seed, "recipe": asdict(recipe), "train_seconds": round(time.time() - started, 1)}
    save = save_pretrained(model.half(), processor)
    return publish(save, target, "caption", _evaluate_captioner(recipe, seed, log), record, log)


def fit(model, recipe, seed: int, step_loss: Callable, name: str, started: float, log: Callable,
        weight_decay: float = 0.01, after_step: Callable | None = None) -> None:  # fmt: skip
    """The demo models' training loop: AdamW, warmup then cosine decay, clipped gradients, a log line every
    200 steps. step_loss(generator) draws a batch and returns its loss."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, recipe.warmup, recipe.steps))
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


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warmup, then cosine decay to zero."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


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


def _evaluate_captioner(recipe: CaptionRecipe, seed: int, log: Callable) -> Callable:
    def evaluate(folder: Path, version: str) -> dict:
        from ..models import ModelSpec, load_blip
        from ..settings import Settings
        from .quality import caption_accuracy

        loaded = load_blip(ModelSpec("demo", "caption", "demo", str(folder), version), Settings(home=Path.cwd(), device="cpu"))
        accuracy, misses = caption_accuracy(loaded, recipe.eval_images, seed=10_000 + seed)
        broad, _ = caption_accuracy(
            loaded, recipe.eval_images // 2, seed=20_000 + seed, shapes=SHAPES + EXTRA_SHAPES, colors=tuple(ALL_COLORS)
        )
        log(f"demo captioner: {accuracy:.1%} exact on {recipe.eval_images} fresh demo-world images; version {version}")
        return {
            "exact_caption_accuracy": accuracy, "eval_images": recipe.eval_images,
            "broad_world_accuracy": broad, "examples_missed": misses[:10],
        }  # fmt: skip

    return evaluate
