"""The one door every image comes through: limits before decoding, then a plain RGB picture."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 120_000_000  # a 100-megapixel camera still passes; a decompression bomb does not
# Format as Pillow names it -> the extension the bytes are stored under.
ALLOWED_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
UPLOAD_TYPES = ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "mpo"]
WHITE = (255, 255, 255)

# The explicit pixel check in decode() runs right after the header is read, before any decoding, and
# names the declared size; Pillow's own guard would fire first, inside Image.open, with a vaguer message.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An input that is not an image the app accepts; str() names the input and the reason."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


@dataclass(frozen=True)
class ImageInput:
    """The bytes of one input exactly as they were uploaded or read, with a name to report it by."""

    name: str
    data: bytes

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class DecodedImage:
    """An accepted input: the RGB picture plus what is needed to store and cite the original bytes."""

    source: ImageInput
    image: Image.Image
    format: str

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]


def read_file(path: str | os.PathLike, name: str | None = None) -> ImageInput:
    """Read a file's bytes, refusing missing, unreadable and oversized files before reading them."""
    path = Path(path)
    name = name or str(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ImageError(name, "is a folder, not an image file")
        if size > MAX_FILE_BYTES:
            raise ImageError(name, f"file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
        return ImageInput(name, path.read_bytes())
    except FileNotFoundError:
        raise ImageError(name, "no such file") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as exc:
        raise ImageError(name, f"cannot be read ({exc.strerror or exc})") from None


def decode(source: ImageInput, max_side: int | None = None) -> DecodedImage:
    """Check and decode an input into an upright RGB image, at most max_side px on its longer side."""
    name, data = source.name, source.data
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(name, f"file is {len(data) / 2**20:.0f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        _check_header(name, image)
        if max_side and image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))  # JPEG decodes straight to a smaller scale
        image.load()
        fmt = image.format
        image = _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (the contents are no image format the app reads)") from None
    except (OSError, SyntaxError, EOFError, ValueError, zlib.error, IndexError, struct.error) as exc:
        raise ImageError(name, f"truncated or corrupt image data ({exc})") from None
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return DecodedImage(source, image, fmt)


def _check_header(name: str, image: Image.Image) -> None:
    if image.format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(set(ALLOWED_FORMATS) - {"MPO"}))
        raise ImageError(name, f"unsupported image format {image.format} (accepted: {allowed})")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(name, f"image has no pixels ({width} x {height})")
    if width * height > MAX_PIXELS:
        raise ImageError(
            name, f"image declares {width:,} x {height:,} px, over the {MAX_PIXELS:,}-pixel limit (refused before decoding)"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is flattened onto white, 16-bit depth scaled to 8."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 16-bit range onto 8-bit
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


Item, Prepared = TypeVar("Item"), TypeVar("Prepared")


def prefetched(
    items: Iterable[Item], prepare: Callable[[Item], Prepared], batch_size: int, workers: int | None = None
) -> Iterator[list[Prepared]]:
    """prepare(item) for every item, yielded batch by batch in input order, while worker threads already
    prepare the next two batches: image decoding runs in parallel with whatever the caller does per batch."""
    workers = workers or min(8, os.cpu_count() or 2)
    queued = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()

        def refill():
            while len(pending) < 2 * batch_size:
                item = next(queued, _END)
                if item is _END:
                    return
                pending.append(pool.submit(prepare, item))

        refill()
        while pending:
            batch = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            refill()
            yield batch


_END = object()
