"""The demo caption rewriter: a tiny Llama chat model trained on the demo world's captions in every style, so
caption styles work offline and in tests. It reads the very request the app sends (styles.rewrite_messages
through its chat template) and learns to keep the caption's colour and shape words."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from captioner.demo.style_quality import style_accuracy
from captioner.demo.world import ALL_COLORS, ALL_SHAPES, caption_for
from captioner.models import load_blip, load_chat_model_at, load_style_model, resolve_spec
from captioner.settings import Settings
from captioner.styles import INSTRUCTIONS, rewrite_messages, style_for

from .common import fit, publish, save_pretrained

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Styled captions of one shape of one colour ({a}: the colour's article). Each names the colour and the shape.
TEMPLATES = {
    "detailed": [
        "The image shows {a} {c} {s} on a plain white background. The {s} is filled with solid {c}, and nothing else is in the picture.",
        "{A} single {c} {s} sits alone on a white background. It is a {s}, and its color is {c}.",
        "This picture holds one shape: {a} {c} {s}, filled evenly with {c}, on an empty white background.",
    ],
    "alt-text": [
        "{A} {c} {s} on a white background.",
        "A single {c} {s} against a plain white background.",
        "One {c} {s} on white.",
    ],
    "social": [
        "Loving this bold {c} {s}! #{c} #{s} #shapes",
        "Simple and striking: one {c} {s}. #minimal #{s}",
        "Today's mood: {a} {c} {s} \u2728 #{c} #design",
    ],
    "poetic": [
        "{A} {c} {s} rests alone,\nbright on a field of white.",
        "Upon the quiet white,\n{a} {c} {s} holds its ground.",
        "Still and {c}, {a} {s}\nkeeps the silence of the page.",
    ],
}


@dataclass(frozen=True)
class RewriterRecipe:
    """Architecture, data and schedule of the demo rewriter."""

    hidden: int = 128
    layers: int = 3
    heads: int = 4
    vocab: int = 1024
    samples: int = 20_000
    steps: int = 600  # with transformers' cosine schedule, 400 steps kept the words in 85-86% of 800 fresh images, 600 in 100%
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    eval_images: int = 200


def article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def styled_example(rng: random.Random) -> tuple[list[dict], str]:
    """One training pair: the app's request for a random colour, shape and style, and a styled caption."""
    color, shape, style = rng.choice(tuple(ALL_COLORS)), rng.choice(ALL_SHAPES), rng.choice(tuple(INSTRUCTIONS))
    facts = [("what color is the shape?", color), ("what shape is it?", shape)] if style == "detailed" else []
    a = article(color)
    target = rng.choice(TEMPLATES[style]).format(a=a, A=a.capitalize(), c=color, s=shape)
    return rewrite_messages(caption_for(color, shape), style_for(style), facts), target


def build_tokenizer(texts: list[str], vocab: int):
    """A byte-level BPE tokenizer trained on the requests and answers, with the chat template's markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", model_max_length=256)  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _training_data(tokenizer, pairs):
    """Prompt + answer + end token per example, right-padded; the loss falls on the answer only."""
    import torch

    rows, labels = [], []
    for messages, target in pairs:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        reply = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(list(prompt) + reply)
        labels.append([-100] * len(prompt) + reply)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, torch.tensor([row + [-100] * (width - len(row)) for row in labels])


def build_rewriter(target: Path, captioner_dir: Path, qa_dir: Path, recipe: RewriterRecipe, seed: int, log: Callable = print) -> dict:
    """Train the demo rewriter, measure it through the real loading path on fresh images, and put it in place."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = random.Random(seed + 3)
    started = time.time()
    pairs = [styled_example(rng) for _ in range(recipe.samples)]
    corpus = [m["content"] for messages, _ in pairs[:4000] for m in messages] + [t for _, t in pairs[:4000]]
    tokenizer = build_tokenizer(corpus, recipe.vocab)
    ids, mask, labels = _training_data(tokenizer, pairs)
    log(f"demo rewriter: {len(ids)} examples of {ids.shape[1]} tokens at most, ready in {time.time() - started:.0f}s")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=3 * recipe.hidden,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    def step_loss(generator):
        i = torch.randint(0, len(ids), (recipe.batch_size,), generator=generator)
        width = int(mask[i].sum(1).max())  # trim the batch to its longest example
        return model(input_ids=ids[i, :width], attention_mask=mask[i, :width], labels=labels[i, :width]).loss

    fit(model, recipe, seed, step_loss, "demo rewriter", started, log)
    record = {"seed": seed, "recipe": asdict(recipe), "train_seconds": round(time.time() - started, 1)}
    evaluate = _evaluate(captioner_dir, qa_dir, recipe, seed, log)
    return publish(save_pretrained(model.half(), tokenizer), target, "style", evaluate, record, log)


def _evaluate(captioner_dir: Path, qa_dir: Path, recipe: RewriterRecipe, seed: int, log: Callable) -> Callable:
    def evaluate(folder: Path, version: str) -> dict:
        settings = Settings(home=Path.cwd(), device="cpu", style_model=str(folder))
        captioner = load_blip(resolve_spec(str(captioner_dir), "caption", settings), settings)
        qa = load_chat_model_at(resolve_spec(str(qa_dir), "qa", settings), settings)
        rewriter = load_style_model(str(folder), settings)
        accuracy, misses = style_accuracy(captioner, qa, rewriter, recipe.eval_images, seed=50_000 + seed)
        log(f"demo rewriter: {accuracy:.1%} of styled captions keep the right colour and shape words "
            f"({4 * recipe.eval_images} on fresh images); version {version}")  # fmt: skip
        return {"kept_words_accuracy": accuracy, "eval_styled_captions": 4 * recipe.eval_images, "examples_missed": misses[:10]}

    return evaluate

