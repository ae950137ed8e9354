"""The demo Q&A model: a small BLIP VQA trained on the demo world's questions, starting from the demo captioner."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from captioner.demo.quality import qa_accuracy
from captioner.demo.world import ALL_COLORS, COLORS, EXTRA_SHAPES, SHAPES, paraphrase, questions, sample
from captioner.models import load_chat_model_at, resolve_spec
from captioner.settings import Settings

from .captioner import CaptionRecipe, caption_batch_tensors, caption_config, processor_for
from .common import fit, publish, save_pretrained


@dataclass(frozen=True)
class QARecipe:
    """Data and schedule of the demo Q&A model (its architecture is the demo captioner's)."""

    samples: int = 32_000
    core_fraction: float = 0.5
    paraphrase_fraction: float = 0.25
    steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 50
    eval_images: int = 200


def qa_examples(rng: random.Random, n: int, recipe: QARecipe):
    """n (image, question, answer) triples; half from the core world, the rest from the broader one."""
    for _ in range(n):
        if rng.random() < recipe.core_fraction:
            item, colors, shapes = sample(rng), tuple(COLORS), SHAPES
        else:
            colors, shapes = tuple(ALL_COLORS), SHAPES + EXTRA_SHAPES
            item = sample(rng, shapes, colors)
        question, answer = rng.choice(questions(item.shape, item.color, rng, colors, shapes))
        if rng.random() < recipe.paraphrase_fraction:
            question = paraphrase(question, rng)
        yield item.image, question, answer


def _training_data(processor, recipe: QARecipe, rng: random.Random):
    import torch

    pixels, asked, answers = [], [], []
    examples = qa_examples(rng, recipe.samples, recipe)
    for start in range(0, recipe.samples, 512):
        chunk = [next(examples) for _ in range(min(512, recipe.samples - start))]
        pixels.append(processor.image_processor(images=[c[0] for c in chunk], return_tensors="pt")["pixel_values"].half())
        asked += [c[1] for c in chunk]
        answers += [c[2] for c in chunk]
    question = processor.tokenizer(asked, padding="longest", return_tensors="pt")
    answer_ids, answer_mask, labels = caption_batch_tensors(processor, answers)
    return torch.cat(pixels), question.input_ids, question.attention_mask, answer_ids, answer_mask, labels


def build_qa_model(target: Path, captioner_dir: Path, recipe: QARecipe, seed: int, log: Callable = print) -> dict:
    """Train the demo BLIP VQA (vision and text weights start from the demo captioner's) and put it in place."""
    import torch
    from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering

    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    caption_recipe = CaptionRecipe()
    processor = processor_for(caption_recipe)
    started = time.time()
    pixels, q_ids, q_mask, a_ids, a_mask, labels = _training_data(processor, recipe, rng)
    log(f"demo Q&A: {len(pixels)} training questions ready in {time.time() - started:.0f}s")
    model = BlipForQuestionAnswering(caption_config(caption_recipe, processor.tokenizer))
    _start_from_captioner(model, BlipForConditionalGeneration.from_pretrained(captioner_dir, dtype=torch.float32))

    def step_loss(generator):
        i = torch.randint(0, len(pixels), (recipe.batch_size,), generator=generator)
        return model(
            pixel_values=pixels[i].float(), input_ids=q_ids[i], attention_mask=q_mask[i],
            decoder_input_ids=a_ids[i], decoder_attention_mask=a_mask[i], labels=labels[i],
        ).loss  # fmt: skip

    fit(model, recipe, seed, step_loss, "demo Q&A", started, log)
    record = {"seed": seed, "recipe": asdict(recipe), "train_seconds": round(time.time() - started, 1)}
    return publish(save_pretrained(model.half(), processor), target, "qa", _evaluate(recipe, seed, log), record, log)


def _start_from_captioner(model, captioner) -> None:
    """Copy the captioner's vision tower and text stack: same shapes, and it already knows the world's words."""
    source = captioner.state_dict()
    mapped = {}
    for name in model.state_dict():
        if name.startswith(("vision_model.", "text_decoder.")):
            mapped[name] = source[name]
        elif name.startswith("text_encoder."):
            mapped[name] = source["text_decoder.bert." + name.removeprefix("text_encoder.")]
    model.load_state_dict(mapped, strict=False)


def _evaluate(recipe: QARecipe, seed: int, log: Callable) -> Callable:
    def evaluate(folder: Path, version: str) -> dict:
        settings = Settings(home=Path.cwd(), device="cpu")
        loaded = load_chat_model_at(resolve_spec(str(folder), "qa", settings), settings)
        accuracy, misses = qa_accuracy(loaded, recipe.eval_images, seed=30_000 + seed)
        log(f"demo Q&A: {accuracy:.1%} exact on {4 * recipe.eval_images} questions about fresh images; version {version}")
        return {"exact_answer_accuracy": accuracy, "eval_questions": 4 * recipe.eval_images, "examples_missed": misses[:10]}

    return evaluate
