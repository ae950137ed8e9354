"""The device image stage: JPEGs decoded in batches on the model's device (nvjpeg on a GPU) and preprocessed there.

It is gpu_images.load_pixels behind the engine's ImageStage: the same header rule, the same door for every other
input and for any JPEG the device decoder refuses, so a bad file fails only its own request with the door's one-line
ImageError. prepare() runs in the caller's thread chunk by chunk (the first chunks small, so the first batch starts
soon): while the worker runs the model on one chunk's requests on the default stream, the caller decodes the next
chunk on its own CUDA stream (gpu_images' side stream). Header reads and door decodes run in gpu_images' threads.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import torch
from PIL import Image

from ..gpu_images import PixelSpec, jpeg_header, load_pixels
from ..images import ALLOWED_FORMATS, ImageError, ImageInput
from .pixels import PreparedImage, thumbnail_of

FIRST_CHUNK = 8  # images in the first device decode of a job; each next chunk doubles, up to the stage's chunk


class DeviceImageStage:
    """gpu_images' device path as an engine stage; with device "cpu" it is the same code on libjpeg-turbo (the CPU
    fallback the tests compare with the CPU stage)."""

    def __init__(self, spec: PixelSpec, device, dtype, chunk: int = 64, workers: int | None = None):
        self.spec, self.device, self.dtype = spec, torch.device(device), dtype
        self.chunk = max(1, chunk)
        self._thumbnails = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 2), "thumbnail")

    def prepare(self, items: Sequence[ImageInput], thumbnails: bool) -> Iterator[PreparedImage | ImageError]:
        start, size = 0, min(FIRST_CHUNK, self.chunk)
        while start < len(items):
            chunk = list(items[start : start + size])
            yield from self._prepare_chunk(chunk, thumbnails)
            start, size = start + len(chunk), min(2 * size, self.chunk)

    def _prepare_chunk(self, chunk: list[ImageInput], thumbnails: bool) -> list[PreparedImage | ImageError]:
        shown = self._thumbnails.map(_thumbnail_or_none, chunk) if thumbnails else iter([None] * len(chunk))
        rows, errors = self._load(chunk)
        prepared: list[PreparedImage | ImageError] = []
        for i, (item, thumbnail) in enumerate(zip(chunk, shown)):
            if i in rows:
                prepared.append(PreparedImage(item, _extension(item), rows[i], thumbnail))
            else:
                prepared.append(errors.get(i) or ImageError(item.name, "cannot be decoded"))
        return prepared

    def _load(self, chunk: list[ImageInput]) -> tuple[dict[int, torch.Tensor], dict[int, ImageError]]:
        """Each input's pixels (rows of one device batch) or error; if the batch as a whole fails (a decoder bug,
        out of memory), each input alone, so only the input that fails gets an error."""
        try:
            batch = load_pixels(chunk, self.spec, self.device, self.dtype)
            return dict(zip(batch.ok, batch.pixels)), batch.errors
        except Exception as exc:
            if len(chunk) == 1:
                return {}, {0: _decode_failure(chunk[0], exc)}
        rows, errors = {}, {}
        for i, item in enumerate(chunk):
            alone, error = self._load([item])  # one input: at most one row or one error, under key 0
            if 0 in alone:
                rows[i] = alone[0]
            if 0 in error:
                errors[i] = error[0]
        return rows, errors

    def collate(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        if self.device.type == "cuda":  # made on the caller's decode stream, read on the worker's
            stream = torch.cuda.current_stream(self.device)
            for row in pixels:
                row.record_stream(stream)
        return torch.stack(pixels).to(self.device, self.dtype, non_blocking=True)

    def close(self) -> None:
        self._thumbnails.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        decoder = "nvjpeg" if self.device.type == "cuda" else "libjpeg-turbo"
        return f"JPEGs batch-decoded by {decoder} and resized on {self.device}, other files through the image door"


def _thumbnail_or_none(item: ImageInput) -> Image.Image | None:
    try:
        return thumbnail_of(item)
    except Exception:
        return None  # a file the door refuses: its pixels' own decode reports why


def _extension(item: ImageInput) -> str:
    """The extension the door would store these bytes under (read from the header only)."""
    if jpeg_header(item.data) is not None:
        return "jpg"
    try:
        with Image.open(io.BytesIO(item.data)) as header:
            return ALLOWED_FORMATS.get(header.format or "", "bin")
    except Exception:
        return "bin"


def _decode_failure(item: ImageInput, exc: Exception) -> ImageError:
    reason = (str(exc).strip().splitlines() or [""])[0]
    return ImageError(item.name, f"cannot be decoded ({type(exc).__name__}: {reason})")
