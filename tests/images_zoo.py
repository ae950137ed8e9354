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


def fuzz_seeds() -> dict[str, bytes]:
    """Small valid files of every accepted format, in the modes and codecs a mutation fuzz should start from."""
    picture = demo("triangle", "green", side=24).resize((24, 18))
    exif = Image.Exif()
    exif[0x0112] = 6
    gray16 = Image.fromarray((np.arange(24 * 18, dtype=np.uint16).reshape(18, 24) * 150))
    seeds = {
        "rgb.png": encode(picture, "PNG"),
        "rgba.png": encode(picture.convert("RGBA"), "PNG"),
        "palette.png": palette_png_with_transparency(),
        "gray16.png": encode(gray16, "PNG"),
        "baseline.jpg": encode(picture, "JPEG", quality=80, exif=exif.tobytes()),
        "progressive.jpg": encode(picture, "JPEG", quality=80, progressive=True),
        "gray.jpg": encode(picture.convert("L"), "JPEG"),
        "cmyk.jpg": encode(picture.convert("CMYK"), "JPEG"),
        "anim.gif": encode(picture, "GIF", save_all=True, append_images=[demo("circle", "red", 24).resize((24, 18))]),
        "raw.tiff": encode(picture, "TIFF"),
        "lzw.tiff": encode(picture, "TIFF", compression="tiff_lzw"),
        "deflate.tiff": encode(picture, "TIFF", compression="tiff_adobe_deflate"),
        "packbits.tiff": encode(picture.convert("L"), "TIFF", compression="packbits"),
        "gray16.tiff": encode(gray16, "TIFF"),
        "float.tiff": encode(picture.convert("F"), "TIFF"),
        "cmyk.tiff": encode(picture.convert("CMYK"), "TIFF"),
        "bilevel.tiff": encode(picture.convert("1"), "TIFF", compression="group4"),
        "lossy.webp": encode(picture, "WEBP", quality=70),
        "lossless.webp": encode(picture.convert("RGBA"), "WEBP", lossless=True),
        "rgb.bmp": encode(picture, "BMP"),
        "palette.bmp": encode(picture.convert("P"), "BMP"),
        "gray.bmp": encode(picture.convert("L"), "BMP"),
    }
    return seeds


def tiff_with_tag_type(data: bytes, tag: int, new_type: int) -> bytes:
    """A little-endian TIFF with one IFD entry's field type changed (how the fuzz broke Pillow's TIFF reader)."""
    out = bytearray(data)
    first_ifd = struct.unpack("<I", out[4:8])[0]
    for k in range(struct.unpack("<H", out[first_ifd : first_ifd + 2])[0]):
        at = first_ifd + 2 + 12 * k
        if struct.unpack("<H", out[at : at + 2])[0] == tag:
            out[at + 2 : at + 4] = struct.pack("<H", new_type)
            return bytes(out)
    raise ValueError(f"no tag {tag}")


def big_png(width: int, height: int, kind: str = "gray16") -> bytes:
    """A PNG of width x height that compresses to a few hundred kB: 16-bit gray ("gray16") or 8-bit RGBA
    ("rgba"), built row by row so the test itself never holds the pixels."""
    color_type, depth, pixel = {"gray16": (0, 16, b"\x80\x80"), "rgba": (6, 8, bytes([220, 30, 30, 128]))}[kind]
    row = b"\x00" + pixel * width  # filter byte, then one mid-gray (or half-transparent red) pixel after another
    packer = zlib.compressobj(6)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x40)


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One mutation of a file: bit flips, interesting bytes (mostly in the header), a moved or repeated block,
    an insertion, or a cut; a few of them stacked."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if not out:
            break
        kind = int(rng.integers(0, 6))
        header = min(len(out), 96)
        at = int(rng.integers(0, header)) if rng.random() < 0.6 else int(rng.integers(0, len(out)))
        if kind == 0:
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            out[at] = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
        elif kind == 2:  # a 16- or 32-bit field set to an extreme
            width = 2 if rng.random() < 0.5 else 4
            out[at : at + width] = bytes([0xFF if rng.random() < 0.5 else 0x00] * width)
        elif kind == 3:
            start = int(rng.integers(0, len(out)))
            block = out[start : start + int(rng.integers(1, 64))]
            out[at:at] = block
        elif kind == 4:
            out[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        else:
            out = out[: max(1, int(len(out) * rng.random()))]
    return bytes(out)
