"""Batched caption generation: images decode in worker threads while the model captions the batch before."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

from PIL import Image

from . import images
from .images import DecodedImage, ImageError, ImageInput
from .models import LoadedModel
from .options import GenerationOptions

DEFAULT_BATCH_SIZE = 16
THUMBNAIL_SIDE = 384


@dataclass(frozen=True)
class CaptionResult:
    """The caption of one input, or why it has none; in the order the inputs came."""

    name: str
    caption: str | None = None
    error: str | None = None
    model: str = ""
    model_version: str = ""
    source: ImageInput | None = None
    extension: str = ""
    thumbnail: Image.Image | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def caption_images(
    loaded: LoadedModel,
    inputs: Sequence[ImageInput],
    options: GenerationOptions = GenerationOptions(),
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    thumbnails: bool = False,
    workers: int | None = None,
) -> list[CaptionResult]:
    """Caption every input, one generate per batch; a bad input gets an error result and the rest go on."""
    options.validate()
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    max_side = _decode_side(loaded.processor)
    results: list[CaptionResult] = []
    prepare = partial(_prepare, loaded.processor, max_side=max_side, thumbnails=thumbnails)
    for batch in images.prefetched(inputs, prepare, batch_size, workers):
        results.extend(_caption_batch(loaded, batch, options))
        if on_progress:
            on_progress(len(results), len(inputs))
    return results


def _decode_side(processor) -> int:
    """Decode big photos at twice the model's input side at most: enough detail, far less work."""
    size = getattr(processor.image_processor, "size", None) or {}
    side = max(size.get("height", 0), size.get("width", 0), size.get("shortest_edge", 0)) or 384
    return max(512, 2 * side)


def _prepare(processor, item: ImageInput, max_side: int, thumbnails: bool):
    """Decode and preprocess one input in a worker thread; an ImageError is returned, not raised."""
    try:
        decoded = images.decode(item, max_side=max_side)
        pixels = processor.image_processor(images=decoded.image, return_tensors="pt")["pixel_values"]
    except ImageError as exc:
        return exc
    thumb = None
    if thumbnails:
        thumb = decoded.image.copy()
        thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return decoded, pixels, thumb


def _caption_batch(loaded: LoadedModel, batch: list, options: GenerationOptions) -> list[CaptionResult]:
    good = [entry for entry in batch if not isinstance(entry, ImageError)]
    captions = generate_captions(loaded, [pixels for _, pixels, _ in good], options) if good else []
    made = iter(captions)
    results = []
    for entry in batch:
        if isinstance(entry, ImageError):
            results.append(CaptionResult(entry.name, error=entry.reason, model=loaded.name, model_version=loaded.version))
            continue
        decoded, _, thumb = entry
        results.append(_result(loaded, decoded, next(made), thumb))
    return results


def _result(loaded: LoadedModel, decoded: DecodedImage, caption: str, thumb) -> CaptionResult:
    return CaptionResult(
        decoded.source.name, caption=caption, model=loaded.name, model_version=loaded.version,
        source=decoded.source, extension=decoded.extension, thumbnail=thumb,
    )  # fmt: skip


def generate_captions(loaded: LoadedModel, pixel_batches: list, options: GenerationOptions) -> list[str]:
    """One generate call for a batch of preprocessed images; captions come back in the same order."""
    import torch

    pixel_values = torch.cat(pixel_batches)
    if loaded.device.type == "cuda":
        pixel_values = pixel_values.pin_memory()
    pixel_values = pixel_values.to(loaded.device, loaded.dtype, non_blocking=True)
    kwargs = dict(
        num_beams=options.num_beams,
        max_new_tokens=options.max_new_tokens,
        min_new_tokens=options.min_new_tokens,
        repetition_penalty=options.repetition_penalty,
    )
    if getattr(loaded.model.generation_config, "min_length", 0):
        kwargs["min_length"] = 0  # a checkpoint's own minimum would override the one asked for
    if options.prompt.strip():
        prompt = loaded.processor.tokenizer([options.prompt.strip()], return_tensors="pt")
        kwargs["input_ids"] = prompt.input_ids.repeat(len(pixel_values), 1).to(loaded.device)
        kwargs["attention_mask"] = prompt.attention_mask.repeat(len(pixel_values), 1).to(loaded.device)
    with loaded.lock, torch.inference_mode():
        output = loaded.model.generate(pixel_values=pixel_values, **kwargs)
    return [text.strip() for text in loaded.processor.batch_decode(output, skip_special_tokens=True)]


def format_captions(rows: list[dict], fmt: str) -> str:
    """Rows of {path, caption, error} (+ styled, with a style) as jsonl (one object per input, in order), csv, or
    txt (captioned only)."""
    import csv
    import io
    import json

    if fmt == "jsonl":
        return "".join(
            json.dumps({"path": r["path"], "caption": r["caption"], **({"styled": r["styled"]} if "styled" in r else {}),
                        **({"error": r["error"]} if r["error"] else {})}, ensure_ascii=False) + "\n"
            for r in rows
        )  # fmt: skip
    if fmt == "csv":
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\r\n")
        styled = any("styled" in r for r in rows)  # the styled column only when a style was asked for
        writer.writerow(["path", "caption", *(["styled"] if styled else []), "error"])
        writer.writerows([[r["path"], r["caption"] or "", *([r.get("styled") or ""] if styled else []), r["error"] or ""] for r in rows])
        return out.getvalue()
    if fmt == "txt":
        return "".join(f"{r['path']}\t{r['caption']}\n" for r in rows if not r["error"])
    raise ValueError(f"unknown format {fmt!r}; use jsonl, csv or txt")


def check_captioner(loaded: LoadedModel, images_count: int = 6) -> list[str]:
    """Caption a fixed set of demo-world images; a model that errs or says nothing fails with ModelError."""
    from .demo.quality import demo_inputs
    from .models import ModelError

    inputs, _ = demo_inputs(images_count, seed=2024)
    try:
        results = caption_images(loaded, inputs, GenerationOptions(num_beams=1, max_new_tokens=20), batch_size=images_count)
    except Exception as exc:  # any failure to caption means the model is not fit to go live
        raise ModelError(f"{loaded.name} ({loaded.version}) failed the check set: {exc}") from exc
    empty = [r.name for r in results if not (r.caption or "").strip()]
    if empty:
        raise ModelError(f"{loaded.name} ({loaded.version}) failed the check set: empty captions for {len(empty)} images")
    return [r.caption for r in results]
