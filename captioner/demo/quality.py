"""How well a captioner describes fresh demo-world images (the demo quality bar and the retraining test)."""

from __future__ import annotations

import io
import random

import numpy as np

from ..caption import GenerationOptions, caption_images
from ..chat import answer_batch
from ..embed import embed_images, embed_texts
from ..images import ImageInput
from .world import COLORS, MAX_SIDE, MIN_SIDE, SHAPES, caption_for, questions, sample


def demo_inputs(n: int, seed: int, shapes=SHAPES, colors=tuple(COLORS), min_side=MIN_SIDE, max_side=MAX_SIDE):
    """n fresh demo-world images as PNG-encoded inputs, with the samples they show."""
    rng = random.Random(seed)
    inputs, samples = [], []
    for i in range(n):
        item = sample(rng, shapes=shapes, colors=colors, min_side=min_side, max_side=max_side)
        buffer = io.BytesIO()
        item.image.save(buffer, format="PNG")
        inputs.append(ImageInput(f"demo-{i:04d}-{item.color}-{item.shape}.png", buffer.getvalue()))
        samples.append(item)
    return inputs, samples


def caption_accuracy(loaded, n: int = 400, seed: int = 10_000, **world) -> tuple[float, list[tuple[str, str]]]:
    """Share of n fresh images captioned exactly right (greedy), and the (truth, caption) pairs it missed."""
    inputs, samples = demo_inputs(n, seed, **world)
    truths = [item.caption for item in samples]
    results = caption_images(loaded, inputs, GenerationOptions(num_beams=1, max_new_tokens=12), batch_size=64)
    misses = [(truth, result.caption or result.error) for truth, result in zip(truths, results) if result.caption != truth]
    return 1 - len(misses) / n, misses


def qa_accuracy(loaded, n: int = 200, seed: int = 30_000, **world) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of the four demo-world questions about n fresh images answered exactly; and the misses."""
    _, samples = demo_inputs(n, seed, **world)
    rng = random.Random(seed)
    pictures, asked, truths = [], [], []
    for item in samples:
        for question, truth in questions(item.shape, item.color, rng):
            pictures.append(item.image)
            asked.append(question)
            truths.append(truth)
    said = answer_batch(loaded, pictures, asked)
    misses = [(q, t, s) for q, t, s in zip(asked, truths, said) if s != t]
    return 1 - len(misses) / len(asked), misses


def search_precision(loaded, n: int = 100, seed: int = 40_000) -> tuple[float, float, float]:
    """Precision@5 over a fresh core-world gallery of n images: (text queries, image queries, 'a red circle')."""
    gallery, shown = demo_inputs(n, seed)
    vectors = embed_images(loaded, gallery).vectors
    labels = np.array([item.caption for item in shown])
    kinds = [(color, shape) for shape in SHAPES for color in COLORS]
    queries, _ = demo_inputs(len(kinds) * 3, seed + 1)  # fresh query pictures, not in the gallery
    query_vectors = embed_images(loaded, queries).vectors
    query_labels = [item.caption for item in _]

    def precision(query: np.ndarray, label: str) -> float:
        top = np.argsort(-(vectors @ query))[:5]
        return float(np.mean(labels[top] == label))

    texts = [caption_for(color, shape) for color, shape in kinds]
    text_vectors = embed_texts(loaded, texts)
    text_p5 = float(np.mean([precision(v, t) for v, t in zip(text_vectors, texts)]))
    image_p5 = float(np.mean([precision(v, t) for v, t in zip(query_vectors, query_labels)]))
    return text_p5, image_p5, precision(text_vectors[texts.index("a red circle")], "a red circle")
