"""The demo search model: a small open_clip CLIP trained contrastively on demo-world images and captions."""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from captioner.demo import TOKENIZER_DIR
from captioner.demo.quality import search_precision
from captioner.demo.world import ALL_COLORS, COLORS, EXTRA_SHAPES, SHAPES, sample
from captioner.embed import load_open_clip, write_open_clip_folder
from captioner.models import resolve_spec
from captioner.settings import Settings

from .common import fit, publish

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TEMPLATES = ("a {color} {shape}", "{color} {shape}", "a photo of a {color} {shape}", "a {color} {shape} on white")


@dataclass(frozen=True)
class ClipRecipe:
    """Architecture, data and schedule of the demo CLIP."""

    embed_dim: int = 64
    width: int = 128
    vision_layers: int = 3
    text_layers: int = 2
    heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    context_length: int = 16
    images_per_class: int = 250
    steps: int = 1000
    batch_size: int = 64  # distinct classes per batch, so no caption is a false negative of another
    lr: float = 1e-3
    warmup: int = 100
    eval_gallery: int = 100


def model_config(recipe: ClipRecipe, vocab_size: int) -> dict:
    """open_clip model_cfg: a ViT image tower and a bidirectional text tower pooled at [CLS] (WordPiece ids)."""
    return {
        "embed_dim": recipe.embed_dim,
        "vision_cfg": {"image_size": recipe.image_size, "layers": recipe.vision_layers, "width": recipe.width,
                       "patch_size": recipe.patch_size, "head_width": recipe.width // recipe.heads, "mlp_ratio": 3.0},
        "text_cfg": {"context_length": recipe.context_length, "vocab_size": vocab_size, "width": recipe.width,
                     "heads": recipe.heads, "layers": recipe.text_layers, "mlp_ratio": 3.0,
                     "hf_tokenizer_name": "captioner-demo", "no_causal_mask": True, "pool_type": "first", "pad_id": 0},
    }  # fmt: skip


def preprocess_config(recipe: ClipRecipe) -> dict:
    return {"size": recipe.image_size, "mean": MEAN, "std": STD, "interpolation": "bicubic", "resize_mode": "shortest"}


def classes() -> list[tuple[str, str]]:
    """Every (color, shape) of the broad world; the star is never among them."""
    return [(color, shape) for shape in SHAPES + EXTRA_SHAPES for color in ALL_COLORS]


def build_clip_model(target: Path, recipe: ClipRecipe, seed: int, log: Callable = print) -> dict:
    """Train the demo CLIP and put it in place as an open_clip local-dir checkpoint."""
    import open_clip
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed + 2)
    vocab_size = len(AutoTokenizer.from_pretrained(TOKENIZER_DIR))
    model_cfg, preprocess_cfg = model_config(recipe, vocab_size), preprocess_config(recipe)
    scratch = Path(target.parent / f".{target.name}-scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    write_open_clip_folder(None, model_cfg, preprocess_cfg, scratch)
    _copy_tokenizer(scratch)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{scratch}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{scratch}")
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.time()
    pool, texts = _training_data(preprocess, tokenizer, recipe, rng)
    log(f"demo CLIP: {pool.shape[0] * pool.shape[1]} training images ready in {time.time() - started:.0f}s")
    n_classes, core = len(texts), [i for i, (c, s) in enumerate(classes()) if c in COLORS and s in SHAPES]

    def step_loss(generator):
        others = [i for i in torch.randperm(n_classes, generator=generator).tolist() if i not in core]
        chosen = torch.tensor(core + others[: recipe.batch_size - len(core)])
        picks = torch.randint(0, pool.shape[1], (len(chosen),), generator=generator)
        template = torch.randint(0, len(TEMPLATES), (len(chosen),), generator=generator)
        image = model.encode_image(pool[chosen, picks].float(), normalize=True)
        text = model.encode_text(texts[chosen, template], normalize=True)
        logits = model.logit_scale.exp() * image @ text.T
        target = torch.arange(len(chosen))
        return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2

    def clamp_temperature():
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    fit(model, recipe, seed, step_loss, "demo CLIP", started, log, weight_decay=0.05, after_step=clamp_temperature)
    record = {"seed": seed, "recipe": asdict(recipe), "train_seconds": round(time.time() - started, 1)}

    def save(folder: Path) -> Path:
        write_open_clip_folder(model.half(), model_cfg, preprocess_cfg, folder)
        _copy_tokenizer(folder)
        return folder / "open_clip_model.safetensors"

    return publish(save, target, "search", _evaluate(recipe, seed, log), record, log)


def _copy_tokenizer(folder: Path) -> None:
    for item in TOKENIZER_DIR.iterdir():
        shutil.copy(item, folder / item.name)


def _training_data(preprocess, tokenizer, recipe: ClipRecipe, rng: random.Random):
    """[classes, images_per_class, 3, H, W] fp16 pictures and [classes, templates, context] token ids."""
    import torch

    pictures = []
    for color, shape in classes():
        shots = [sample(rng, shapes=(shape,), colors=(color,)).image for _ in range(recipe.images_per_class)]
        pictures.append(torch.stack([preprocess(image) for image in shots]).half())
    texts = [[template.format(color=c, shape=s) for template in TEMPLATES] for c, s in classes()]
    tokens = tokenizer([t for group in texts for t in group]).view(len(texts), len(TEMPLATES), -1)
    return torch.stack(pictures), tokens


def _evaluate(recipe: ClipRecipe, seed: int, log: Callable) -> Callable:
    def evaluate(folder: Path, version: str) -> dict:
        settings = Settings(home=Path.cwd(), device="cpu")
        loaded = load_open_clip(resolve_spec(str(folder), "search", settings), settings)
        text_p5, image_p5, red_circle = search_precision(loaded, recipe.eval_gallery, seed=40_000 + seed)
        log(f"demo CLIP: precision@5 text {text_p5:.2f}, image {image_p5:.2f} ('a red circle': {red_circle:.2f}); version {version}")
        return {"text_precision_at_5": text_p5, "image_precision_at_5": image_p5, "red_circle_text_precision_at_5": red_circle,
                "eval_gallery": recipe.eval_gallery}  # fmt: skip

    return evaluate

