"""The synthetic demo world: one filled shape on a white background, with its caption and Q&A."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

BACKGROUND = (255, 255, 255)
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
# The broader world the demo models also learn from: more words for a correction to build on later.
EXTRA_COLORS = {
    "orange": (245, 130, 20),
    "purple": (130, 50, 170),
    "pink": (240, 110, 180),
    "black": (30, 30, 30),
    "gray": (128, 128, 128),
    "brown": (140, 85, 40),
}
EXTRA_SHAPES = ("diamond", "hexagon", "cross", "ring", "heart")
HELD_OUT_SHAPE = "star"  # never shown to the demo models while they train
ALL_COLORS = {**COLORS, **EXTRA_COLORS}
ALL_SHAPES = SHAPES + EXTRA_SHAPES + (HELD_OUT_SHAPE,)
MIN_SIDE, MAX_SIDE = 64, 512
BOX_FRACTION = (0.35, 0.70)


@dataclass(frozen=True)
class Sample:
    """One demo-world image with what it shows."""

    image: Image.Image
    shape: str
    color: str

    @property
    def caption(self) -> str:
        return caption_for(self.color, self.shape)


def caption_for(color: str, shape: str) -> str:
    """The demo world's caption for a shape of a color."""
    return f"a {color} {shape}"


def _regular_polygon(cx, cy, radius, sides, start_deg):
    return [
        (cx + radius * math.cos(math.radians(start_deg + i * 360 / sides)),
         cy + radius * math.sin(math.radians(start_deg + i * 360 / sides)))
        for i in range(sides)
    ]


def _star(cx, cy, outer):
    inner = 0.4 * outer
    points = []
    for i in range(10):
        radius = outer if i % 2 == 0 else inner
        angle = math.radians(-90 + i * 36)  # first point straight up
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """Draw one filled shape inside the box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, half), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, half, 6, 0), fill=fill)
    elif shape == "cross":
        arm = half / 3
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        inner = 0.55 * half
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=BACKGROUND)
    elif shape == "heart":
        lobe = half / 2
        draw.ellipse((x0, y0, cx, y0 + 2 * lobe), fill=fill)
        draw.ellipse((cx, y0, x1, y0 + 2 * lobe), fill=fill)
        draw.polygon([(x0 + 0.05 * half, y0 + 1.3 * lobe), (x1 - 0.05 * half, y0 + 1.3 * lobe), (cx, y1)], fill=fill)
    else:
        raise ValueError(f"unknown demo shape {shape!r}; known: {', '.join(ALL_SHAPES)}")


def render(shape: str, color: str, side: int, box: tuple[float, float, float, float]) -> Image.Image:
    """A side x side white RGB image with one shape of the color filling the box."""
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw_shape(ImageDraw.Draw(image), shape, box, ALL_COLORS[color])
    return image


def sample(rng: random.Random, shapes=SHAPES, colors=tuple(COLORS), min_side=MIN_SIDE, max_side=MAX_SIDE) -> Sample:
    """A random image of the demo world: side, shape, color, box size and place all drawn from rng."""
    side = rng.randint(min_side, max_side)
    shape, color = rng.choice(tuple(shapes)), rng.choice(tuple(colors))
    extent = rng.uniform(*BOX_FRACTION) * side
    x0, y0 = rng.uniform(0, side - extent), rng.uniform(0, side - extent)
    return Sample(render(shape, color, side, (x0, y0, x0 + extent, y0 + extent)), shape, color)


# Other ways people ask the same four things: the demo Q&A model learns them too, the quality bar uses the first.
PARAPHRASES = {
    "what color is the shape?": ["what colour is the shape?", "what color is it?", "which color is the shape?",
                                 "what is the color of the shape?"],
    "what shape is it?": ["what shape is this?", "which shape is it?", "what is the shape?", "what kind of shape is it?"],
    "is the shape {}?": ["is it {}?", "is this shape {}?"],
    "is it a {}?": ["is this a {}?", "is the shape a {}?"],
}  # fmt: skip


def paraphrase(question: str, rng: random.Random) -> str:
    """Another wording of one of the demo world's canonical questions."""
    for template, variants in PARAPHRASES.items():
        head, _, tail = template.partition("{}")
        if question == template or ("{}" in template and question.startswith(head) and question.endswith(tail)):
            slot = question[len(head) : len(question) - len(tail)] if "{}" in template else ""
            return rng.choice(variants).format(slot)
    return question


def questions(shape: str, color: str, rng: random.Random, colors=tuple(COLORS), shapes=SHAPES) -> list[tuple[str, str]]:
    """The demo world's questions about one image with their answers (yes/no ones balanced)."""
    other_color = rng.choice([c for c in colors if c != color] or [color])
    other_shape = rng.choice([s for s in shapes if s != shape] or [shape])
    asked_color = color if rng.random() < 0.5 else other_color
    asked_shape = shape if rng.random() < 0.5 else other_shape
    return [
        ("what color is the shape?", color),
        ("what shape is it?", shape),
        (f"is the shape {asked_color}?", "yes" if asked_color == color else "no"),
        (f"is it a {asked_shape}?", "yes" if asked_shape == shape else "no"),
    ]


def write_images(outdir, n: int, seed: int, shapes=SHAPES, colors=tuple(COLORS), fmt: str = "png") -> list[dict]:
    """Write n demo-world images to outdir with a captions.jsonl beside them; returns its records."""
    import json
    from pathlib import Path

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        item = sample(rng, shapes=shapes, colors=colors)
        name = f"{i:04d}-{item.color}-{item.shape}.{fmt}"
        item.image.save(outdir / name, quality=95) if fmt == "jpg" else item.image.save(outdir / name)
        records.append({"file": name, "caption": item.caption, "shape": item.shape, "color": item.color})
    with open(outdir / "captions.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return records
