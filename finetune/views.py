"""Recoloured views of shape corrections: a correction of one colour also teaches its new word in every other
hue, in the live model's own words, so that three yellow stars teach "star", not "yellow star"."""

from __future__ import annotations

from dataclasses import replace

from .data import CORRECTION, VIEW, Example
from .metrics import normalise
from .tensors import SIDED, RowTensors, caption_tokens, concat, taught_labels

MAX_VIEWS = 600  # about 0.5 GiB of bf16 pixels at BLIP's 384 px


def recolour(pixels, hue_shift, mean, std):
    """The pictures with every hue turned by hue_shift (a share of the colour circle, per picture):
    saturation and brightness kept, so a yellow star becomes an equally vivid red, green or blue one.
    pixels are normalised; the result is too."""
    import torch

    rgb = (pixels.float() * std + mean).clamp(0, 1)
    high, _ = rgb.max(dim=1)
    low, _ = rgb.min(dim=1)
    spread = high - low
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    r, g, b = rgb.unbind(1)
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = (hue / 6 + hue_shift[:, None, None]) % 1.0
    # hsv -> rgb: each channel from its own phase of the hue circle
    k = (torch.tensor([5.0, 3.0, 1.0], device=pixels.device)[None, :, None, None] + hue[:, None] * 6) % 6
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    turned = high[:, None] - spread[:, None] * ramp
    return ((turned - mean) / std).to(pixels.dtype)


def view_caption(said: str, example: Example) -> str:
    """What a recoloured view should be called: the live model's own words up to where the correction taught
    something, the correction's words from there on ("a blue triangle" + "a yellow star" -> "a blue star")."""
    taught = set(example.concept.split())
    words = example.caption.split()
    first = next((i for i, word in enumerate(words) if taught & set(normalise(word).split())), None)
    if first is None:
        return example.caption
    return " ".join(said.split()[:first] + words[first:])


def with_views(model, tokenizer, rows: RowTensors, per_row: int, batch_size: int = 64) -> tuple[RowTensors, int]:
    """rows plus per_row recoloured views of each recolourable correction (hues evenly around the circle), each
    captioned by the model before training and learned only at the taught words. Returns (rows, views added).
    At most MAX_VIEWS in all: views matter when a concept has few corrections; many bring their own colours."""
    import torch

    picked = rows.recolourable.nonzero().flatten()
    per_row = min(per_row, MAX_VIEWS // max(1, len(picked)))
    if per_row <= 0 or not len(picked):
        return rows, 0
    index = picked.repeat_interleave(per_row)
    shifts = (torch.arange(1, per_row + 1, device=index.device) / (per_row + 1)).repeat(len(picked))
    pixels = recolour(rows.pixels[index], shifts, rows.pixel_mean, rows.pixel_std)
    said, dtype = [], next(model.parameters()).dtype  # on a GPU the rows are bf16 and the model full precision
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size].to(dtype)
            ids = model.generate(pixel_values=chunk, max_new_tokens=30, num_beams=1)
            said += tokenizer.batch_decode(ids, skip_special_tokens=True)
    originals = [rows.examples[i] for i in index.tolist()]
    examples = [replace(e, caption=view_caption(s, e), kind=VIEW) for s, e in zip(said, originals)]
    input_ids, attention, labels = caption_tokens(tokenizer, [e.caption for e in examples])
    taught, _ = taught_labels(tokenizer, [replace(e, kind=CORRECTION) for e in examples], labels)
    device = rows.pixels.device
    none = torch.zeros(len(examples), dtype=torch.bool, device=device)
    flippable = torch.tensor([not SIDED.search(e.caption) for e in examples], dtype=torch.bool, device=device)
    views = RowTensors(pixels, input_ids.to(device), attention.to(device), taught.to(device), none, flippable,
                       taught.to(device), none, rows.pixel_mean, rows.pixel_std, examples)  # fmt: skip
    return concat(rows, views, tokenizer.pad_token_id), len(examples)
