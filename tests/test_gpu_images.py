"""The device image path: the model's own preprocessing within a stated tolerance, EXIF, and the door's errors.

Tolerances, in normalised pixel units (one 8-bit level is about 0.015 after CLIP/BLIP's std):
- BLIP, JPEG at full scale: identical to transformers' BlipImageProcessor (torchvision backend), and within
  2 levels of its PIL backend (BlipImageProcessorPil), which rounds between its two resize passes.
- open_clip, JPEG or any other file at full scale: within 1 level of open_clip's transform on a PIL picture.
- a JPEG at least 4x the model's input decodes at reduced scale: mean difference at most 0.02 (about 1.3 levels).
- CUDA against CPU: within 1 level (nvjpeg's and libjpeg-turbo's IDCTs may round differently).
- a strip (one side 32x the other or more): open_clip as above; a BLIP squash so big that its long side is shrunk
  first (a 1 x 300,000 PNG), within 3 levels.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import images_zoo as zoo
from captioner import gpu_images, images
from captioner.gpu_images import PixelSpec, load_pixels
from captioner.images import ImageError, ImageInput

LEVEL = 1 / 255 / 0.26  # one 8-bit level in normalised units (the smallest std of either model)


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like picture: smooth colour fields with fine grain."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)).astype(int)
    return Image.fromarray(np.clip(smooth + rng.integers(-6, 7, (height, width, 3)), 0, 255).astype(np.uint8))


def jpeg(picture: Image.Image, **kwargs) -> bytes:
    return zoo.encode(picture, "JPEG", quality=90, **kwargs)


@pytest.fixture(scope="module")
def jpegs():
    sizes = [(130, 97), (97, 130), (150, 150), (181, 120), (121, 200)]
    return [ImageInput(f"{i}.jpg", jpeg(photo(w, h, i))) for i, (w, h) in enumerate(sizes)]


@pytest.fixture(scope="module")
def blip_processor():
    from transformers.models.blip import BlipImageProcessor

    return BlipImageProcessor(size={"height": 64, "width": 48})


@pytest.fixture(scope="module")
def clip_transform():
    import open_clip

    return open_clip.image_transform(56, is_train=False)


def test_specs_are_read_from_the_models_own_processors(blip_processor, clip_transform):
    blip = PixelSpec.from_blip(blip_processor)
    assert (blip.height, blip.width, blip.crop, blip.interpolation) == (64, 48, False, "bicubic")
    assert blip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    clip = PixelSpec.from_open_clip(clip_transform)
    assert (clip.height, clip.width, clip.crop, clip.interpolation) == (56, 56, True, "bicubic")
    import open_clip

    with pytest.raises(ValueError, match="not reproduced"):
        PixelSpec.from_open_clip(open_clip.image_transform(56, is_train=False, resize_mode="longest"))


def test_blip_pixels_equal_the_image_processor(jpegs, blip_processor):
    from transformers.models.blip import BlipImageProcessorPil

    spec = PixelSpec.from_blip(blip_processor)
    batch = load_pixels(jpegs, spec, "cpu", torch.float32)
    assert batch.ok == list(range(len(jpegs))) and batch.errors == {} and batch.pixels.shape == (5, 3, 64, 48)
    pictures = [images.decode(item).image for item in jpegs]
    expected = blip_processor(images=pictures, return_tensors="pt")["pixel_values"]
    assert torch.equal(batch.pixels, expected)
    pil_backend = BlipImageProcessorPil(size={"height": 64, "width": 48})
    expected = pil_backend(images=pictures, return_tensors="pt")["pixel_values"]
    assert (batch.pixels - expected).abs().max() <= 2 * LEVEL + 1e-6


def test_clip_pixels_match_open_clips_transform(jpegs, clip_transform):
    spec = PixelSpec.from_open_clip(clip_transform)
    inputs = jpegs + [ImageInput("demo.png", zoo.encode(zoo.demo("square", "blue", 90), "PNG"))]
    batch = load_pixels(inputs, spec, "cpu", torch.float32)
    expected = torch.stack([clip_transform(images.decode(item).image) for item in inputs])
    assert batch.pixels.shape == (6, 3, 56, 56)
    assert (batch.pixels - expected).abs().max() <= LEVEL + 1e-6


def test_big_jpegs_decode_at_reduced_scale_within_tolerance(clip_transform, monkeypatch):
    spec = PixelSpec.from_open_clip(clip_transform)
    big = ImageInput("big.jpg", jpeg(photo(900, 640, 7)))  # over 4x the 56 px input: DCT scaling applies
    asked = []
    decode = images.decode
    monkeypatch.setattr(images, "decode", lambda item, max_side=None: asked.append(max_side) or decode(item, max_side))
    pixels = load_pixels([big], spec, "cpu", torch.float32).pixels
    assert asked and asked[0] is not None and asked[0] < 900  # through the door, asking for a smaller decode
    expected = clip_transform(decode(big).image)[None]
    assert (pixels - expected).abs().mean() <= 0.02


@pytest.mark.parametrize("size", [(8, 1000), (1000, 8), (3, 200)])
def test_a_long_strip_matches_the_models_transform_and_is_never_blown_up(size, clip_transform, blip_processor, monkeypatch):
    from torchvision.transforms.v2 import functional as F

    strip = ImageInput("strip.png", zoo.encode(photo(*size, 3), "PNG"))
    made, resize = [], F.resize
    monkeypatch.setattr(F, "resize", lambda picture, shape, **kw: made.append(shape[0] * shape[1]) or resize(picture, shape, **kw))
    clip = load_pixels([strip], PixelSpec.from_open_clip(clip_transform), "cpu", torch.float32).pixels
    expected = clip_transform(images.decode(strip).image)[None]
    assert (clip - expected).abs().mean() <= 0.02  # the same middle of the strip, within a fraction of a pixel
    assert max(made) <= 56 * 56 * 6  # only that middle was scaled up (in one step: 56 x 7,000)
    blip, expected = (
        load_pixels([strip], PixelSpec.from_blip(blip_processor), "cpu", torch.float32).pixels,
        torch.from_numpy(blip_processor(images.decode(strip).image, return_tensors="np")["pixel_values"]),
    )  # fmt: skip
    assert (blip - expected).abs().max() <= 1e-6  # a strip this small is squashed in one step, exactly
    monkeypatch.setattr(gpu_images, "STRIP_PIXELS", 0)  # as if it were 1 x 300,000: the long side shrinks first
    made.clear()
    blip = load_pixels([strip], PixelSpec.from_blip(blip_processor), "cpu", torch.float32).pixels
    assert (blip - expected).abs().max() <= 3 * LEVEL and max(made) <= 64 * 48


def test_a_one_pixel_strip_of_300000_costs_no_more_than_a_photo(clip_transform):
    strip = ImageInput("thin.png", zoo.encode(Image.new("RGB", (1, 300_000), (255, 0, 0)), "PNG"))
    batch = load_pixels([strip], PixelSpec.from_open_clip(clip_transform), "cpu", torch.float32)  # was 45 GB at 224 px
    assert batch.ok == [0] and torch.allclose(batch.pixels[0, 0], batch.pixels[0, 0, 0, 0])  # all red, as the strip


def test_the_header_reader_sends_only_plain_jpegs_to_the_device():
    picture = photo(120, 80, 3)
    assert gpu_images.jpeg_header(jpeg(picture)) == (120, 80, 1)
    assert gpu_images.jpeg_header(jpeg(picture, progressive=True)) == (120, 80, 1)
    assert gpu_images.jpeg_header(jpeg(picture.convert("L"))) == (120, 80, 1)
    assert gpu_images.jpeg_header(zoo.cmyk_jpeg()) is None  # CMYK: Pillow's conversion, through the door
    assert gpu_images.jpeg_header(zoo.encode(picture, "MPO", save_all=True, append_images=[picture])) is None
    assert gpu_images.jpeg_header(zoo.encode(picture, "PNG")) is None
    assert gpu_images.jpeg_header(zoo.truncated(jpeg(picture), 0.01)) is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_the_tensor(orientation, blip_processor):
    exif = Image.Exif()
    exif[0x0112] = orientation
    item = ImageInput(f"o{orientation}.jpg", jpeg(photo(120, 80, orientation), exif=exif.tobytes()))
    assert isinstance(gpu_images._plan(item, PixelSpec.from_blip(blip_processor)), gpu_images._DeviceJpeg)
    pixels = load_pixels([item], PixelSpec.from_blip(blip_processor), "cpu", torch.float32).pixels
    upright = images.decode(item).image  # Pillow's exif_transpose
    assert torch.equal(pixels, blip_processor(images=[upright], return_tensors="pt")["pixel_values"])


def xmp_orientation(orientation: int) -> bytes:
    """An XMP packet that says how to turn the picture, as photo editors write it."""
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>'
        % orientation
    )


@pytest.mark.parametrize("exif_orientation, xmp", [(None, 6), (None, 3), (6, 3), (1, 8)])
def test_a_jpeg_turned_by_xmp_is_as_upright_on_the_device_path_as_through_the_door(exif_orientation, xmp, blip_processor):
    exif = Image.Exif()
    if exif_orientation is not None:
        exif[0x0112] = exif_orientation  # when EXIF has an orientation, Pillow ignores XMP's
    item = ImageInput("xmp.jpg", jpeg(photo(120, 80, xmp), exif=exif.tobytes(), xmp=xmp_orientation(xmp)))
    upright = images.decode(item).image
    assert upright.size == ((80, 120) if (exif_orientation or xmp) in (6, 8) else (120, 80))
    pixels = load_pixels([item], PixelSpec.from_blip(blip_processor), "cpu", torch.float32).pixels
    assert torch.equal(pixels, blip_processor(images=[upright], return_tensors="pt")["pixel_values"])
    on_device = None if exif_orientation is None else (120, 80, exif_orientation)  # XMP alone: through the door
    assert gpu_images.jpeg_header(item.data) == on_device


def test_bad_inputs_get_the_doors_own_errors(jpegs, blip_processor):
    good = jpegs[0].data
    inputs = [
        jpegs[0],
        ImageInput("cut.jpg", zoo.truncated(good)),
        ImageInput("notes.jpg", b"shopping list\n" * 30),
        ImageInput("cmyk.jpg", zoo.cmyk_jpeg("square", "red")),
        ImageInput("trailing.jpg", good + b"extra bytes after the end"),
        ImageInput("empty.png", b""),
        ImageInput("bomb.png", zoo.png_declaring(50_000, 50_000)),
        jpegs[1],
    ]
    batch = load_pixels(inputs, PixelSpec.from_blip(blip_processor), "cpu", torch.float32)
    assert batch.ok == [0, 3, 4, 7] and sorted(batch.errors) == [1, 2, 5, 6]
    for position, error in batch.errors.items():
        with pytest.raises(ImageError) as door:
            images.decode(inputs[position])
        assert str(error) == str(door.value)
    cmyk = batch.pixels[1] * torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    assert cmyk[0, 32, 24] > cmyk[1, 32, 24] + 0.5  # the red square came through the door as red


def test_a_jpeg_the_device_decoder_refuses_goes_through_the_door(jpegs, blip_processor, monkeypatch):
    import torchvision.io

    real = torchvision.io.decode_jpeg

    def picky(data, **kwargs):
        if isinstance(data, list):
            raise RuntimeError("batch refused")
        if data.numel() == len(jpegs[1].data):
            raise RuntimeError("this one refused")
        return real(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    batch = load_pixels(jpegs[:3], PixelSpec.from_blip(blip_processor), "cpu", torch.float32)
    assert batch.ok == [0, 1, 2] and not batch.errors
    expected = blip_processor(images=[images.decode(x).image for x in jpegs[:3]], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch.pixels, expected)


def test_nothing_decodes_gives_an_empty_batch_of_the_right_shape(blip_processor):
    batch = load_pixels([ImageInput("x.jpg", b"no")], PixelSpec.from_blip(blip_processor), "cpu", torch.bfloat16)
    assert batch.pixels.shape == (0, 3, 64, 48) and batch.pixels.dtype == torch.bfloat16 and list(batch.errors) == [0]


@pytest.mark.gpu
def test_cuda_pixels_equal_cpu_pixels(jpegs, blip_processor, clip_transform):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    inputs = jpegs + [ImageInput("big.jpg", jpeg(photo(900, 640, 7))), ImageInput("demo.png", zoo.encode(zoo.demo(), "PNG"))]
    for spec in (PixelSpec.from_blip(blip_processor), PixelSpec.from_open_clip(clip_transform)):
        on_cpu = load_pixels(inputs, spec, "cpu", torch.float32)
        on_gpu = load_pixels(inputs, spec, "cuda", torch.float32)
        assert on_gpu.pixels.device.type == "cuda" and on_gpu.ok == on_cpu.ok
        assert (on_gpu.pixels.cpu() - on_cpu.pixels).abs().max() <= LEVEL + 1e-5
        assert load_pixels(inputs, spec, "cuda", torch.bfloat16).pixels.dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore")
def test_mutated_jpegs_are_refused_by_the_device_path_exactly_when_the_door_refuses_them():
    """A seeded fuzz: the cheap header reader must never send the device decoder a file the door refuses."""
    from transformers.models.blip import BlipImageProcessor

    spec = PixelSpec.from_blip(BlipImageProcessor(size={"height": 16, "width": 16}))
    seeds = {name: data for name, data in zoo.fuzz_seeds().items() if name.endswith(".jpg")}
    rng, names = np.random.default_rng(7), sorted(seeds)
    for n in range(1500):
        item = ImageInput(names[n % len(names)], zoo.mutate(rng, seeds[names[n % len(names)]]))
        try:
            images.decode(item)
            door = None
        except ImageError as exc:
            door = str(exc)
        batch = load_pixels([item], spec, "cpu", torch.float32)
        assert (batch.ok == [0]) == (door is None), (door, item.data.hex())
        assert door is None or str(batch.errors[0]) == door
        header = gpu_images.jpeg_header(item.data)
        if header is not None:  # whatever the header reader says, Pillow says too
            opened = Image.open(io.BytesIO(item.data))
            assert (*opened.size, images.exif_orientation(opened)) == header and opened.mode in ("RGB", "L")
