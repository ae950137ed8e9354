"""The one door every image comes through: limits before decoding, then a plain RGB picture.

Whatever goes wrong inside a decoder (Pillow raises more than a dozen exception types on hostile files)
leaves this door as one ImageError naming the input. Memory is budgeted in bytes, not pixels: each
decode reserves what its mode really costs (a 16-bit or alpha picture costs more than its pixel count
says) from one process-wide budget, so a few large files decode one after another instead of at once,
and awkward modes are converted strip by strip or after shrinking, never through full-size float copies.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 120_000_000  # a 100-megapixel camera still passes; a decompression bomb does not
MAX_DECODE_BYTES = 1 << 30  # one picture's decode and conversion; every mode of a MAX_PIXELS picture fits
DECODE_BUDGET_BYTES = 1 << 30  # all decodes in flight in this process together (one bigger picture runs alone)
# Format as Pillow names it -> the extension the bytes are stored under.
ALLOWED_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
UPLOAD_TYPES = ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "mpo"]
WHITE = (255, 255, 255)
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose does).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip
_HIGH_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")
_STRIP_BYTES = 16 << 20
# A JPEG's draft scale lands between max_side and about 3x it; the caller's own antialiased resize from there
# costs less than Pillow's shrink plus that resize, and resamples once, as the model's processor does.
CALLER_RESIZES_SLACK = 4

# The explicit pixel check in decode() runs right after the header is read, before any decoding, and
# names the declared size; Pillow's own guard would fire first, inside Image.open, with a vaguer message.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An input that is not an image the app accepts; str() names the input and the reason."""

    def __init__(self, name: str, reason: str):
        reason = " ".join(str(reason).split())  # one line, whatever a decoder put in its message
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


class DecodeBudget:
    """Bytes of decoding in flight across threads: a decode waits until its cost fits; one alone always runs."""

    def __init__(self, limit: int):
        self.limit, self.held, self.peak = limit, 0, 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, cost: int):
        with self._changed:
            self._changed.wait_for(lambda: self.held == 0 or self.held + cost <= self.limit)
            self.held += cost
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with self._changed:
                self.held -= cost
                self._changed.notify_all()


DECODE_BUDGET = DecodeBudget(DECODE_BUDGET_BYTES)


def read_file(path: str | os.PathLike, name: str | None = None) -> ImageInput:
    """Read a file's bytes, refusing missing, unreadable and oversized files before reading them."""
    path = Path(path)
    name = name or str(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(name, "is a folder, not an image file")
        if not stat.S_ISREG(mode):  # a pipe would block, a device (/dev/zero) never ends: neither is opened
            raise ImageError(name, "is not a regular file (a pipe, socket or device)")
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size  # the file opened, not whatever the path names by now
            if size > MAX_FILE_BYTES:
                raise ImageError(name, f"file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
            data = handle.read(MAX_FILE_BYTES + 1)  # bounded, whatever the size said (a file still growing)
        if len(data) > MAX_FILE_BYTES:
            raise ImageError(name, f"file is over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
        return ImageInput(name, data)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(name, "no such file") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as exc:
        raise ImageError(name, f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # e.g. a path with a NUL byte in it
        raise ImageError(name, f"cannot be read ({exc})") from None


def decode(source: ImageInput, max_side: int | None = None, *, caller_resizes: bool = False) -> DecodedImage:
    """Check and decode an input into an upright RGB image, at most max_side px on its longer side (caller_resizes:
    at most CALLER_RESIZES_SLACK times that, as decoded: a caller that resizes anyway is spared a second resample).
    Any failure, whatever raised it, is an ImageError naming the input."""
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
        fmt = image.format
        with DECODE_BUDGET.reserve(_check_cost(name, image, max_side)):
            image.load()
            image = _upright_rgb(image, max_side, CALLER_RESIZES_SLACK if caller_resizes else 1)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (the contents are no image format the app reads)") from None
    except MemoryError:
        raise ImageError(name, "not enough memory to decode this image") from None
    except Exception as exc:  # the door's promise: a decoder's surprise is this file's error, nothing more
        raise ImageError(name, f"truncated or corrupt image data ({type(exc).__name__}: {_first_line(exc)})") from None
    return DecodedImage(source, image, fmt)


def thumbnail_jpeg(source: ImageInput, side: int = 256) -> bytes:
    """A small JPEG of an input (at most side px), to show it without sending the original to a browser."""
    buffer = io.BytesIO()
    decode(source, max_side=side).image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else repr(exc))[:200]


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


def bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel in memory for a mode (multi-band modes take 4 bytes, RGB included)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decode_cost(image: Image.Image, max_side: int | None) -> int:
    """Bytes a decode of this opened (not yet loaded) picture holds at its peak: the decoded pixels, plus
    the RGB result (4 bytes a pixel) while it is full size, unless the decoded picture is that result already;
    a shrunk result is small beside the source."""
    pixels = image.size[0] * image.size[1]
    shrinks = bool(max_side) and max(image.size) > max_side
    result = 1 if shrinks else 0 if _is_plain(image) and image.mode == "RGB" else 4
    return pixels * (bytes_per_pixel(image.mode) + result)


def _check_cost(name: str, image: Image.Image, max_side: int | None) -> int:
    cost = decode_cost(image, max_side)
    if cost > MAX_DECODE_BYTES:
        width, height = image.size
        raise ImageError(
            name, f"image of {width:,} x {height:,} px in mode {image.mode} needs {cost / 2**20:,.0f} MiB to decode, "
            f"over the {MAX_DECODE_BYTES / 2**20:,.0f} MiB limit (refused before decoding)",
        )  # fmt: skip
    return cost


def _is_plain(image: Image.Image) -> bool:
    """RGB or 8-bit gray with nothing to flatten: Pillow's own resize and convert give its RGB picture."""
    return image.mode in ("RGB", "L") and "transparency" not in image.info  # a colour key (PNG tRNS) is flattened


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8) of a loaded picture; 1 (upright) when absent or unreadable."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block does not make the picture unusable
        return 1
    return value if value in ORIENTATION_TRANSPOSE else 1


def fitted_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size Image.thumbnail((max_side, max_side)) gives a picture of this size (unchanged if it fits)."""
    width, height = size
    if not max_side or max(size) <= max_side:
        return size
    aspect = width / height
    if aspect >= 1:
        candidates = (math.floor(max_side / aspect), math.ceil(max_side / aspect))
        return max_side, max(min(candidates, key=lambda n: 0 if n == 0 else abs(aspect - max_side / n)), 1)
    candidates = (math.floor(max_side * aspect), math.ceil(max_side * aspect))
    return max(min(candidates, key=lambda n: abs(aspect - n / max_side)), 1), max_side


def _upright_rgb(image: Image.Image, max_side: int | None, slack: int = 1) -> Image.Image:
    """A loaded picture of any mode -> upright RGB at most max_side px (left as it is up to slack x max_side).
    Plain RGB and L shrink as Pillow does; every other mode is converted strip by strip (and shrunk on the way), so no
    full-size copy is made of a picture that ends up small. Shrinking before the transpose is exact: the two
    commute."""
    orientation = exif_orientation(image)
    size = image.size if max_side and max(image.size) <= slack * max_side else fitted_size(image.size, max_side)
    if _is_plain(image):
        if size != image.size:
            image.thumbnail(size, Image.Resampling.BICUBIC)
        image = image.convert("RGB") if image.mode == "L" else image
    else:
        image = _convert_by_strips(image, size)
    if orientation != 1:
        image = image.transpose(ORIENTATION_TRANSPOSE[orientation])
    return image


def _convert_by_strips(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Any mode -> RGB of the given size, one strip of rows at a time: each strip is made RGB (alpha flattened
    onto white) or 8-bit gray (16/32-bit gray scaled) and box-reduced, as Image.thumbnail reduces before it
    resizes."""
    width, height = image.size
    factor_x, factor_y = (max(1, int(old / new / 2.0)) for old, new in zip(image.size, size))  # thumbnail's reducing_gap
    scale = _gray_scale(image) if image.mode in _HIGH_BIT_GRAY else None
    canvas = Image.new("RGB" if scale is None else "L", (-(-width // factor_x), -(-height // factor_y)))
    step = max(factor_y, _STRIP_BYTES // max(1, width * 4) // factor_y * factor_y)
    for top in range(0, height, step):
        strip = _strip_to_rgb(image.crop((0, top, width, min(height, top + step))), scale)
        if factor_x > 1 or factor_y > 1:
            strip = strip.reduce((factor_x, factor_y))
        canvas.paste(strip, (0, top // factor_y))
    if canvas.size != size:
        canvas = canvas.resize(size, Image.Resampling.BICUBIC, box=(0, 0, width / factor_x, height / factor_y))
    return canvas.convert("RGB") if canvas.mode == "L" else canvas


def _gray_scale(image: Image.Image) -> np.float32:
    """What a 16/32-bit gray picture's samples are multiplied by to give 8-bit levels: set by its mode, not by how
    bright it happens to be (one white pixel must not darken the rest)."""
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):  # older Pillow: 16-bit PNG as I
        return np.float32(1 / 257)  # 0..65535 onto 0..255
    if image.mode == "F" and image.getextrema()[1] <= 1.0:
        return np.float32(255)  # floats in 0..1, the usual convention; any sample past 1 means 8-bit levels (clipped)
    return np.float32(1)  # 32-bit integers and larger floats: 8-bit levels, clipped, as Pillow's convert("L") does


def _strip_to_rgb(strip: Image.Image, scale) -> Image.Image:
    if scale is not None:
        return _gray_levels(strip, scale)
    if strip.mode in _ALPHA or "transparency" in strip.info:  # an alpha channel, a palette's or a colour key
        rgba = strip.convert("RGBA")
        flat = Image.new("RGB", strip.size, WHITE)
        flat.paste(rgba, mask=rgba)
        return flat
    return strip.convert("RGB")


def _gray_levels(strip: Image.Image, scale) -> Image.Image:
    """A 16/32-bit gray strip as 8-bit gray: samples scaled and clipped, the colour-keyed one (PNG tRNS) white."""
    values = np.asarray(strip)
    key = strip.info.get("transparency")
    key = key if isinstance(key, int) else None
    if values.dtype.itemsize == 2:  # 16-bit samples: one table lookup each
        table = np.clip(np.rint(np.arange(65536, dtype=np.float32) * scale), 0, 255).astype(np.uint8)
        if key is not None and 0 <= key < len(table):
            table[key] = 255
        return Image.fromarray(np.take(table, values), "L")
    levels = np.clip(np.rint(values.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    if key is not None:
        levels[values == key] = 255
    return Image.fromarray(levels, "L")


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
