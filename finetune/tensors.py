"""Training rows as tensors: each image decoded and preprocessed once, each caption tokenized once, all kept
on the training device for the whole run (no data loader, no per-step copies)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from captioner import images
from captioner.images import ImageError

from .data import COLOUR_WORDS, CORRECTION, REWORDED, DataError, Example

# A mirrored picture of "a dog left of a car" shows a dog right of a car: such captions are never flipped.
SIDED = re.compile(r"\b(left|right)\b", re.IGNORECASE)


@dataclass
class RowTensors:
    """Rows of (pixels, caption tokens) on one device, with what kind of knowledge each row holds."""

    pixels: object  # [rows, 3, H, W], the training dtype
    input_ids: object  # [rows, tokens]: [DEC] caption [SEP] padding
    attention: object  # [rows, tokens]
    labels: object  # input_ids with padding as -100 (no loss there)
    old: object  # [rows] bool: the live model's knowledge (confirmations, regression set), distilled
    flippable: object  # [rows] bool: a mirror image still fits the caption
    taught: object  # labels kept only where the caption says a taught word (the rest -100): what a recoloured view teaches
    recolourable: object  # [rows] bool: a correction whose taught words name no colour, so any hue still shows them
    pixel_mean: object  # [3, 1, 1]: the processor's normalisation, to recolour normalised pixels
    pixel_std: object
    examples: list[Example]

    def __len__(self) -> int:
        return len(self.examples)

    def select(self, keep) -> "RowTensors":
        """The rows where keep (a bool device tensor) is true."""
        chosen = [e for e, k in zip(self.examples, keep.tolist()) if k]
        rows = (self.pixels, self.input_ids, self.attention, self.labels, self.old, self.flippable, self.taught, self.recolourable)
        return RowTensors(*(t[keep] for t in rows), self.pixel_mean, self.pixel_std, chosen)

    def rows(self, index):
        """(pixels, input_ids, attention, labels, old) of the rows at index (a device tensor)."""
        return self.pixels[index], self.input_ids[index], self.attention[index], self.labels[index], self.old[index]


def decode_side(processor) -> int:
    """Decode at twice the model's input side at most, as the caption engine does: training sees what captioning sees."""
    size = getattr(processor.image_processor, "size", None) or {}
    side = max(size.get("height", 0), size.get("width", 0), size.get("shortest_edge", 0)) or 384
    return max(512, 2 * side)


def _pixels(processor, max_side: int, dtype, example: Example):
    try:
        picture = images.decode(images.read_file(example.image_path), max_side=max_side).image
    except ImageError as exc:
        return exc
    return processor.image_processor(images=picture, return_tensors="pt")["pixel_values"][0].to(dtype)


def caption_tokens(tokenizer, captions: list[str]):
    """Decoder inputs and labels: BLIP's decoder starts at [DEC] (its BOS), and padding carries no loss."""
    encoded = tokenizer(captions, padding="longest", return_tensors="pt")
    input_ids = encoded.input_ids.clone()
    input_ids[:, 0] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else input_ids[0, 0]
    return input_ids, encoded.attention_mask, input_ids.masked_fill(encoded.attention_mask == 0, -100)


def to_tensors(examples: list[Example], processor, device, dtype, workers: int | None = None,
               on_progress=None) -> tuple[RowTensors, list[str]]:  # fmt: skip
    """Every example's image decoded (worker threads) and preprocessed once into one (pinned, on a GPU machine)
    host tensor, moved to the device in one copy.
    on_progress(done, total) is called after each batch of images. Returns the tensors and one line per image that
    could not be decoded (that row is left out)."""
    import torch

    prepare = partial(_pixels, processor, decode_side(processor), dtype)  # in the training dtype at once: half the memory in bf16
    pixels, kept, problems = None, [], []
    for batch in images.prefetched(examples, prepare, 64, workers):
        for picture in batch:
            example = examples[len(kept) + len(problems)]
            if isinstance(picture, ImageError):
                problems.append(f"{example.image_path}: {picture.reason}")
                continue
            if pixels is None:
                pixels = torch.empty((len(examples), *picture.shape), dtype=dtype, pin_memory=device.type == "cuda")
            pixels[len(kept)] = picture
            kept.append(example)
        if on_progress:
            on_progress(len(kept) + len(problems), len(examples))
    if not kept:
        raise DataError("none of the approved rows' images can be decoded: " + "; ".join(problems[:3]))
    examples, pixels = kept, pixels[: len(kept)]
    input_ids, attention, labels = caption_tokens(processor.tokenizer, [e.caption for e in examples])
    old = torch.tensor([e.is_old for e in examples], dtype=torch.bool)
    flippable = torch.tensor([not SIDED.search(e.caption) for e in examples], dtype=torch.bool)
    taught, recolourable = taught_labels(processor.tokenizer, examples, labels)
    mean, std = (torch.tensor(getattr(processor.image_processor, name), dtype=torch.float32).view(3, 1, 1)
                 for name in ("image_mean", "image_std"))  # fmt: skip
    on_device = (t.to(device) for t in (input_ids, attention, labels, old, flippable, taught, recolourable, mean, std))
    return RowTensors(pixels.to(device, non_blocking=True), *on_device, examples), problems


def concat(first: RowTensors, second: RowTensors, pad_id: int) -> RowTensors:
    """The rows of both, their token columns padded to the longer (padding: no attention, no loss)."""
    import torch
    import torch.nn.functional as F

    width = max(first.input_ids.shape[1], second.input_ids.shape[1])

    def joined(a, b, fill):
        return torch.cat([F.pad(t, (0, width - t.shape[1]), value=fill) for t in (a, b)])

    return RowTensors(
        torch.cat([first.pixels, second.pixels]), joined(first.input_ids, second.input_ids, pad_id),
        joined(first.attention, second.attention, 0), joined(first.labels, second.labels, -100),
        torch.cat([first.old, second.old]), torch.cat([first.flippable, second.flippable]),
        joined(first.taught, second.taught, -100), torch.cat([first.recolourable, second.recolourable]),
        first.pixel_mean, first.pixel_std, first.examples + second.examples,
    )  # fmt: skip


def taught_labels(tokenizer, examples: list[Example], labels):
    """Per row, the labels of the words its correction taught (elsewhere -100), and whether a recoloured view of
    its picture still shows them (a correction that taught no colour word)."""
    import torch

    taught = torch.full_like(labels, -100)
    recolourable = torch.zeros(len(examples), dtype=torch.bool)
    for i, example in enumerate(examples):
        words = example.concept.split() if example.kind == CORRECTION and example.concept != REWORDED else []
        if not words or any(word in COLOUR_WORDS for word in words):
            continue
        ids = torch.tensor(tokenizer(" ".join(words), add_special_tokens=False).input_ids, dtype=labels.dtype)
        where = torch.isin(labels[i], ids)
        taught[i] = torch.where(where, labels[i], taught[i])
        recolourable[i] = bool(where.any())
    return taught, recolourable
