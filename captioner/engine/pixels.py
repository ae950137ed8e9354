"""The image stage: raw inputs -> pixel tensors, pluggable; the CPU stage (images.decode in threads) is the default.

A stage has two halves. prepare() runs in the callers' threads and its own pool, ahead of the model, so decoding
overlaps model work; collate() runs in the engine's worker and turns one batch of prepared pixels into the
model's input [B, 3, H, W] on its device and dtype (stack once, move once). The device stage (nvjpeg, on a GPU)
is in device_pixels.py.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .. import images
from ..gpu_images import PixelSpec, normalise, resize_picture
from ..images import ImageError, ImageInput
from .threads import use_torch_threads

THUMBNAIL_SIDE = 384


@dataclass(frozen=True)
class PreparedImage:
    """One accepted input, ready for collate(): its pixels in the stage's own form, and what a result shows."""

    source: ImageInput
    extension: str
    pixels: torch.Tensor
    thumbnail: Image.Image | None = None


class ImageStage(Protocol):
    def prepare(self, items: Sequence[ImageInput], thumbnails: bool) -> Iterator[PreparedImage | ImageError]:
        """Each item's PreparedImage, or the ImageError saying why not, in input order; later items are worked on
        while the caller consumes earlier ones. Closing the iterator abandons the rest."""

    def collate(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """One batch of prepared pixels as the model's pixel_values, on its device and dtype."""

    def close(self) -> None:
        """Stop the stage's threads (the engine calls it when it stops)."""

    def describe(self) -> str:
        """Where pixels are made, in a few words (benches print it)."""


def pixel_spec(image_processor) -> PixelSpec | None:
    """The processor's steps as a PixelSpec when they are a plain resize + rescale + normalise (BLIP's); else None,
    and the processor itself is called (unusual configs)."""
    try:
        return PixelSpec.from_blip(image_processor)
    except (ValueError, AttributeError, TypeError):
        return None


class CpuImageStage:
    """images.decode (draft mode for big JPEGs) in threads, then gpu_images' torch resize; normalised per batch in
    collate() with gpu_images' normalise (one implementation of the model's preprocessing for both stages)."""

    def __init__(self, processor, device, dtype, workers: int | None = None, lookahead: int = 64):
        self.image_processor, self.device, self.dtype = processor.image_processor, torch.device(device), dtype
        self.spec = pixel_spec(self.image_processor)
        # big photos decode (JPEGs in draft mode) to twice the model's side: enough detail, far less work
        self.decode_side = 2 * model_side(self.image_processor)
        self._pool_lock = threading.Lock()
        self.workers, self.lookahead = workers or min(8, os.cpu_count() or 2), max(1, lookahead)
        self._pool: ThreadPoolExecutor | None = None

    def prepare(self, items: Sequence[ImageInput], thumbnails: bool) -> Iterator[PreparedImage | ImageError]:
        if len(items) == 1:  # a single upload decodes in the caller's own thread: no hand-off
            yield self.prepare_one(items[0], thumbnails)
            return
        with self._pool_lock:
            if self._pool is None:
                # one torch thread each: the decoding threads share the cores among themselves, not within a resize
                self._pool = ThreadPoolExecutor(self.workers, "decode", initializer=use_torch_threads, initargs=(1,))
            pool = self._pool
        queued = iter(items)
        window = deque(pool.submit(self.prepare_one, item, thumbnails) for item in islice(queued, self.lookahead))
        try:
            while window:
                done = window.popleft().result()
                window.extend(pool.submit(self.prepare_one, item, thumbnails) for item in islice(queued, 1))
                yield done
        finally:
            for pending in window:
                pending.cancel()

    def prepare_one(self, item: ImageInput, thumbnails: bool) -> PreparedImage | ImageError:
        """Decode and resize one input; any failure becomes that input's ImageError, returned, not raised."""
        try:
            decoded = images.decode(item, max_side=self.decode_side, caller_resizes=self.spec is not None)
            if self.spec is not None:
                chw = torch.from_numpy(np.array(decoded.image, dtype=np.uint8)).permute(2, 0, 1)
                pixels = resize_picture(chw, decoded.image.size, self.spec)
            else:
                pixels = self.image_processor(images=decoded.image, return_tensors="pt")["pixel_values"][0]
            thumbnail = thumbnail_of(item, decoded.image if self.decode_side >= THUMBNAIL_SIDE else None) if thumbnails else None
        except ImageError as exc:
            return exc
        except Exception as exc:  # a decoder bug on one odd file must fail that file only
            return ImageError(item.name, f"cannot be decoded ({type(exc).__name__}: {exc})")
        return PreparedImage(item, decoded.extension, pixels, thumbnail)

    def collate(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(pixels)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)  # uint8 crosses the bus: 4x fewer bytes
        if self.spec is not None:
            return normalise(batch, self.spec, self.dtype)
        return batch.to(self.device, self.dtype, non_blocking=True)

    def describe(self) -> str:
        resize = "torch resize" if self.spec is not None else "the image processor"
        return f"images.decode in {self.workers} threads (big JPEGs in draft mode), {resize} on the CPU"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def thumbnail_of(item: ImageInput, decoded: Image.Image | None = None) -> Image.Image:
    """What a result shows: the picture at most THUMBNAIL_SIDE px, from a decode that is big enough, else decoded
    again in draft mode (a small model's decode is too small to show)."""
    picture = decoded if decoded is not None else images.decode(item, max_side=THUMBNAIL_SIDE).image
    thumbnail = picture.copy()
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return thumbnail


def model_side(image_processor) -> int:
    """The longer side of the model's input, as its image processor resizes to."""
    size = getattr(image_processor, "size", None) or {}
    return max(size.get("height") or 0, size.get("width") or 0, size.get("shortest_edge") or 0) or 384
