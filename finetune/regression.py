"""The regression set: stored images nobody corrected, with the live model's own confident captions. It joins
training as old knowledge (held close to the live model) and, held out, shows the gate what a retrain forgot."""

from __future__ import annotations

from captioner import images
from captioner.caption import caption_images
from captioner.feedback import FeedbackLog
from captioner.options import GenerationOptions

from .data import REGRESSION, Example, uncorrected_images
from .tensors import RowTensors

CONFIDENT = 0.5  # every word of the caption had at least this probability: the live model was sure of it


def regression_examples(live, log: FeedbackLog, taken: set[str], limit: int, on_progress=None) -> list[Example]:
    """Up to `limit` stored, uncorrected images captioned (greedy) by the live model; on_progress(done, total)."""
    candidates = uncorrected_images(log, taken, limit) if limit > 0 else []
    if not candidates:
        return []
    inputs = [images.read_file(path) for path, _ in candidates]
    said = caption_images(live, inputs, GenerationOptions(num_beams=1), batch_size=32, on_progress=on_progress)
    return [Example(path, r.caption, sha, REGRESSION) for (path, sha), r in zip(candidates, said) if r.ok and r.caption]


def word_confidence(model, tensors: RowTensors, rows, batch_size: int = 64):
    """For the rows at `rows` (a device index tensor), the lowest probability the model gives any word of the
    row's caption (teacher forcing)."""
    import torch

    lowest = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            pixels, input_ids, attention, labels, _ = tensors.rows(rows[start : start + batch_size])
            pixels = pixels.to(next(model.parameters()).dtype)
            logits = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            targets = labels[:, 1:]
            chosen = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
            lowest.append(chosen.masked_fill(targets == -100, 0.0).min(dim=1).values.exp())
    return torch.cat(lowest) if lowest else torch.zeros(0, device=tensors.pixels.device)


def keep_confident(model, tensors: RowTensors) -> tuple[RowTensors, int]:
    """The rows without the regression rows the live model was unsure of; and how many were dropped."""
    import torch

    regression = torch.tensor([e.kind == REGRESSION for e in tensors.examples], device=tensors.pixels.device)
    rows = regression.nonzero()[:, 0]
    if not len(rows):
        return tensors, 0
    keep = torch.ones_like(regression)
    keep[rows] = word_confidence(model, tensors, rows) >= CONFIDENT
    return tensors.select(keep), int((~keep).sum())
