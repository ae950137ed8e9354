"""How well caption styles keep what the caption says, on fresh demo-world images (the demo rewriter's bar)."""

from __future__ import annotations

import re

from ..caption import GenerationOptions, caption_images
from ..restyle import detail_facts, restyle_batch
from ..styles import INSTRUCTIONS, style_for
from .quality import demo_inputs
from .world import ALL_COLORS, ALL_SHAPES

NAMED = set(ALL_COLORS) | set(ALL_SHAPES)


def keeps_words(text: str, color: str, shape: str) -> bool:
    """The styled text names the image's colour and shape, and no other colour or shape."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return color in words and shape in words and not (words & NAMED) - {color, shape}


def style_accuracy(captioner, qa, rewriter, n: int = 200, seed: int = 50_000) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of styled captions (n fresh images, every built-in style but plain) that keep the right colour and
    shape words: image -> captioner -> (Q&A facts for detailed) -> rewriter. And the (style, truth, text) misses."""
    inputs, samples = demo_inputs(n, seed)
    results = caption_images(captioner, inputs, GenerationOptions(num_beams=1, max_new_tokens=12), batch_size=64)
    captions = [result.caption or "" for result in results]
    facts = detail_facts(qa, [item.image for item in samples])
    misses, total = [], 0
    for name in INSTRUCTIONS:
        styled = restyle_batch(rewriter, captions, style_for(name), facts if name == "detailed" else None)
        for item, text in zip(samples, styled):
            total += 1
            if not keeps_words(text, item.color, item.shape):
                misses.append((name, item.caption, text))
    return 1 - len(misses) / total, misses
