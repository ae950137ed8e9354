"""Training rows as tensors: each image decoded and preprocessed once, each caption tokenized once, all kept
on the training device for the whole run (no data loader, no per-step copies)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from captioner import images
from captioner.images import ImageError

from .data import DataError, Example

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
    examples: list[Example]

    def __len__(self) -> int:
        return len(self.examples)

    def select(self, keep) -> "RowTensors":
        """The rows where keep (a bool device tensor) is true."""
        chosen = [e for e, k in zip(self.examples, keep.tolist()) if k]
        return RowTensors(self.pixels[keep], self.input_ids[keep], self.attention[keep], self.labels[keep], self.old[keep],
                          self.flippable[keep], chosen)  # fmt: skip

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


def to_tensors(examples: list[Example], processor, device, dtype, workers: int | None = None) -> tuple[RowTensors, list[str]]:
    """Every example's image decoded (worker threads) and preprocessed once into one (pinned, on a GPU machine)
    host tensor, moved to the device in one copy.
    Returns the tensors and one line per image that could not be decoded (that row is left out)."""
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
    if not kept:
        raise DataError("none of the approved rows' images can be decoded: " + "; ".join(problems[:3]))
    examples, pixels = kept, pixels[: len(kept)]
    input_ids, attention, labels = caption_tokens(processor.tokenizer, [e.caption for e in examples])
    old = torch.tensor([e.is_old for e in examples], dtype=torch.bool)
    flippable = torch.tensor([not SIDED.search(e.caption) for e in examples], dtype=torch.bool)
    tensors = RowTensors(pixels.to(device, non_blocking=True), input_ids.to(device), attention.to(device),
                         labels.to(device), old.to(device), flippable.to(device), examples)  # fmt: skip
    return tensors, problems
