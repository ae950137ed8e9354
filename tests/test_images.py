"""The image door: every bad input refused with one clear reason, every awkward good one made plain RGB."""

import hashlib
import io

import numpy as np
import pytest
from PIL import Image, ImageFile

import images_zoo as zoo
from captioner import images
from captioner.images import ImageError, ImageInput


def decode(name, data, **kwargs):
    return images.decode(ImageInput(name, data), **kwargs)


def refused(name, data) -> str:
    with pytest.raises(ImageError) as caught:
        decode(name, data)
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    return caught.value.reason


def test_empty_file_is_refused():
    assert "empty file" in refused("empty.png", b"")


def test_text_named_jpg_is_refused():
    assert "not an image" in refused("notes.jpg", b"shopping list: eggs, milk\n" * 20)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(fmt):
    data = zoo.encode(zoo.demo(side=300), fmt)
    assert "truncated or corrupt" in refused(f"cut.{fmt.lower()}", zoo.truncated(data))


def test_huge_declared_size_is_refused_before_decoding(monkeypatch):
    def no_decoding(self, *args):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    reason = refused("bomb.png", zoo.png_declaring(50_000, 50_000))
    assert "50,000 x 50,000" in reason and "limit" in reason


def test_unsupported_format_is_refused():
    data = zoo.encode(zoo.demo(side=64), "ICO")
    assert "unsupported image format ICO" in refused("icon.png", data)


def test_missing_file_and_folder_name_the_path(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        images.read_file(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="folder") as refused_folder:
        images.read_file(tmp_path)
    assert str(refused_folder.value) == f"{tmp_path}: is a folder, not an image file"  # named once, not twice


def test_a_pipe_or_a_device_is_refused_before_it_is_opened(tmp_path):
    import os

    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)  # opening it would wait forever for a writer
    with pytest.raises(ImageError, match="not a regular file"):
        images.read_file(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        images.read_file("/dev/zero")  # its size says 0, and a read never ends


def test_cmyk_jpeg_becomes_rgb_with_its_colors():
    decoded = decode("cmyk.jpg", zoo.cmyk_jpeg("square", "red"))
    assert decoded.image.mode == "RGB" and decoded.format == "JPEG"
    r, g, b = decoded.image.getpixel((80, 80))
    assert r > 180 and g < 80 and b < 80
    assert decoded.image.getpixel((2, 2)) > (240, 240, 240)


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    decoded = decode("gray16.png", zoo.gray16_png(level=128))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((75, 75)) == (128, 128, 128)
    assert decoded.image.getpixel((2, 2)) == (255, 255, 255)


def test_palette_png_transparency_is_flattened_onto_white():
    decoded = decode("palette.png", zoo.palette_png_with_transparency("square", "blue"))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((2, 2)) == (255, 255, 255)
    r, g, b = decoded.image.getpixel((80, 80))
    assert b > 150 and r < 100


def test_exif_orientation_6_is_applied():
    upright = Image.new("RGB", (200, 100), (220, 30, 30))
    upright.paste((40, 70, 220), (0, 0, 200, 50))  # top half blue
    decoded = decode("rotated.jpg", zoo.jpeg_with_orientation_6(upright))
    assert decoded.image.size == (200, 100)
    top, bottom = decoded.image.getpixel((100, 10)), decoded.image.getpixel((100, 90))
    assert top[2] > 150 and bottom[0] > 150


def test_animated_gif_gives_its_first_frame():
    decoded = decode("anim.gif", zoo.animated_gif(100))
    assert Image.open(io.BytesIO(decoded.source.data)).n_frames == 100
    r, g, b = decoded.image.getpixel((80, 80))
    assert r > 180 and g > 150 and b < 80  # yellow


def test_one_pixel_image_is_accepted():
    decoded = decode("dot.png", zoo.encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert decoded.image.size == (1, 1) and decoded.image.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("mode, fmt", [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                       ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "TIFF"), ("RGBA", "WEBP")])
def test_every_mode_becomes_rgb(mode, fmt):
    image = zoo.demo("circle", "green").convert(mode)
    decoded = decode(f"{mode}.{fmt.lower()}", zoo.encode(image, fmt))
    assert decoded.image.mode == "RGB" and decoded.image.size == image.size
    assert decoded.image.getpixel((2, 2)) == (255, 255, 255)


def test_big_jpeg_is_decoded_small_when_asked():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8))
    decoded = decode("photo.jpg", zoo.encode(photo, "JPEG", quality=80), max_side=768)
    assert max(decoded.image.size) == 768 and decoded.image.size[0] > decoded.image.size[1]


def test_a_caller_that_resizes_gets_the_jpeg_draft_as_decoded_and_big_pictures_still_shrunk():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 700, 3), dtype=np.uint8))
    drafted = decode("photo.jpg", zoo.encode(photo, "JPEG", quality=80), max_side=128, caller_resizes=True)
    assert drafted.image.size == (350, 250)  # JPEG's 1/2 scale, the smallest that keeps both sides >= 128
    assert max(decode("photo.jpg", zoo.encode(photo, "JPEG", quality=80), max_side=128).image.size) <= 128  # shrunk
    assert decode("photo.png", zoo.encode(photo, "PNG"), max_side=200, caller_resizes=True).image.size == (700, 500)
    assert max(decode("photo.png", zoo.encode(photo, "PNG"), max_side=100, caller_resizes=True).image.size) <= 100
    upright = decode("rotated.jpg", zoo.jpeg_with_orientation_6(Image.new("RGB", (800, 400), (9, 9, 9))), max_side=128,
                     caller_resizes=True)  # fmt: skip
    assert upright.image.size == (400, 200)  # the stored 400 x 800 drafted at 1/2, then turned upright


def test_sha256_and_extension_name_the_original_bytes():
    data = zoo.encode(zoo.demo(), "PNG")
    decoded = decode("x.png", data)
    assert decoded.extension == "png" and decoded.source.data == data
    assert decoded.source.sha256 == hashlib.sha256(data).hexdigest()


def test_a_thumbnail_is_a_small_jpeg_of_the_upright_picture():
    upright = Image.new("RGB", (800, 400), (220, 30, 30))
    small = Image.open(io.BytesIO(images.thumbnail_jpeg(ImageInput("big.jpg", zoo.jpeg_with_orientation_6(upright)))))
    assert small.format == "JPEG" and small.size == (256, 128)


def keyed_picture() -> tuple[Image.Image, np.ndarray]:
    """A red square on a background of pure black that is meant to be transparent, and that background's mask."""
    picture = Image.new("RGB", (120, 90), (0, 0, 0))
    picture.paste((200, 30, 30), (30, 20, 90, 70))
    return picture, (np.asarray(picture) == 0).all(axis=-1)


@pytest.mark.parametrize("max_side", [None, 40])
def test_a_colour_keyed_png_decodes_onto_white_like_the_same_picture_with_alpha(max_side):
    picture, clear = keyed_picture()
    rgba = np.dstack([np.asarray(picture), np.where(clear, 0, 255).astype(np.uint8)])
    alpha = decode("alpha.png", zoo.encode(Image.fromarray(rgba), "PNG"), max_side=max_side).image
    keyed = decode("keyed.png", zoo.encode(picture, "PNG", transparency=(0, 0, 0)), max_side=max_side).image
    assert keyed.getpixel((0, 0)) == (255, 255, 255)
    assert np.array_equal(np.asarray(keyed), np.asarray(alpha))
    webp = decode("alpha.webp", zoo.encode(Image.fromarray(rgba), "WEBP", lossless=True), max_side=max_side).image
    assert np.array_equal(np.asarray(keyed), np.asarray(webp))


@pytest.mark.parametrize("bits", [8, 16])
def test_a_colour_keyed_gray_png_decodes_onto_white(bits):
    picture, clear = keyed_picture()
    gray = np.asarray(picture.convert("L"))
    gray_alpha = Image.fromarray(np.dstack([gray, np.where(clear, 0, 255).astype(np.uint8)]), "LA")
    samples = Image.fromarray(gray.astype(np.uint16) * 257) if bits == 16 else Image.fromarray(gray)
    keyed = decode(f"keyed{bits}.png", zoo.encode(samples, "PNG", transparency=0)).image
    assert keyed.getpixel((0, 0)) == (255, 255, 255)
    assert np.array_equal(np.asarray(keyed), np.asarray(decode("la.png", zoo.encode(gray_alpha, "PNG")).image))


def test_16_bit_gray_brightness_follows_the_samples_not_the_brightest_pixel():
    flat = np.full((64, 64), 250 * 257, np.uint16)
    spot = flat.copy()
    spot[0, 0] = 65535  # one white pixel does not darken the rest
    dark = np.linspace(10, 200, 64 * 64).reshape(64, 64).astype(np.uint16)  # nearly black in 16 bits
    for fmt in ("PNG", "TIFF"):
        assert decode("flat", zoo.encode(Image.fromarray(flat), fmt)).image.getpixel((9, 9)) == (250, 250, 250)
        assert decode("spot", zoo.encode(Image.fromarray(spot), fmt)).image.getpixel((9, 9)) == (250, 250, 250)
        assert decode("dark", zoo.encode(Image.fromarray(dark), fmt)).image.getextrema() == ((0, 1),) * 3
    low = np.full((64, 64), 250, np.uint16)  # 250 of 65535: black, with or without one sample of 256
    bumped = low.copy()
    bumped[0, 0] = 256
    assert decode("low.png", zoo.encode(Image.fromarray(low), "PNG")).image.getpixel((9, 9)) == (1, 1, 1)
    assert decode("bumped.png", zoo.encode(Image.fromarray(bumped), "PNG")).image.getpixel((9, 9)) == (1, 1, 1)


def test_a_float_tiff_in_0_to_1_is_scaled_and_one_past_1_is_clipped_as_8_bit_levels():
    unit = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    decoded = decode("unit.tiff", zoo.encode(Image.fromarray(unit, "F"), "TIFF")).image
    assert decoded.getpixel((0, 0)) == (0, 0, 0) and decoded.getpixel((63, 63)) == (255, 255, 255)
    assert decoded.getpixel((0, 32)) == (round(unit[32, 0] * 255),) * 3
    levels = np.full((64, 64), 128.0, np.float32)
    levels[0, 0] = 300.0
    decoded = decode("levels.tiff", zoo.encode(Image.fromarray(levels, "F"), "TIFF")).image
    assert decoded.getpixel((9, 9)) == (128, 128, 128) and decoded.getpixel((0, 0)) == (255, 255, 255)
