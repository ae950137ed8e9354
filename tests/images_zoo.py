"""Builders for the awkward and hostile image files the image door must handle (shared by several tests)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from captioner.demo.world import BACKGROUND, render


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def demo(shape="circle", color="red", side=160) -> Image.Image:
    return render(shape, color, side, (side * 0.2, side * 0.15, side * 0.8, side * 0.75))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height pixels (a decompression bomb's shape)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def cmyk_jpeg(shape="circle", color="red") -> bytes:
    return encode(demo(shape, color).convert("CMYK"), "JPEG", quality=95)


def gray16_png(shape="square", level: int = 128) -> bytes:
    """A 16-bit grayscale PNG of a shape at an 8-bit level (so level 128 reads as the demo world's gray)."""
    rgb = np.asarray(render(shape, "gray", 160, (30, 30, 120, 120)))
    gray = np.where(rgb[..., 0] == BACKGROUND[0], 65535, level * 257).astype(np.uint16)
    return encode(Image.fromarray(gray), "PNG")


def palette_png_with_transparency(shape="square", color="blue") -> bytes:
    """A palette PNG whose background is a fully transparent palette entry (black underneath)."""
    image = demo(shape, color).convert("RGB")
    pixels = np.asarray(image)
    mask = (pixels == BACKGROUND).all(axis=-1)
    pixels = pixels.copy()
    pixels[mask] = 0
    palette_image = Image.fromarray(pixels).quantize(colors=4)
    transparent = palette_image.getpixel((0, 0))  # the corner is background
    return encode(palette_image, "PNG", transparency=transparent)


def jpeg_with_orientation_6(upright: Image.Image) -> bytes:
    """The upright image stored sideways in a JPEG with EXIF orientation 6 (rotate 90° clockwise to view)."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: undone by orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif(frames: int = 100) -> bytes:
    """A 100-frame GIF whose first frame is a yellow circle and the rest other shapes."""
    first = demo("circle", "yellow")
    others = [demo(("square", "triangle")[i % 2], "blue") for i in range(frames - 1)]
    return encode(first, "GIF", save_all=True, append_images=others, duration=40, loop=0)
