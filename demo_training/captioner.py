"""The demo captioner: a small BLIP trained on the demo world from a fixed seed."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from captioner.demo import TOKENIZER_DIR
from captioner.demo.quality import caption_accuracy
from captioner.demo.world import ALL_COLORS, EXTRA_SHAPES, SHAPES, sample
from captioner.models import load_blip, resolve_spec
from captioner.settings import Settings

from .common import fit, publish, save_pretrained


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


def _evaluate_captioner(recipe: CaptionRecipe, seed: int, log: Callable) -> Callable:
    def evaluate(folder: Path, version: str) -> dict:
        settings = Settings(home=Path.cwd(), device="cpu")
        loaded = load_blip(resolve_spec(str(folder), "caption", settings), settings)
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
