"""Images as model-ready pixel tensors, decoded in batches on the model's device.

JPEGs go to torchvision's batch decoder on that device (nvjpeg on a GPU, libjpeg-turbo on the CPU) and are
turned upright, resized and normalised there as tensors, the way the model's own processor does it:
BLIP's image processor (resize to a fixed size, bicubic with antialiasing, rescale, normalise) and
open_clip's transform (shortest edge, centre crop, its mean and std). Every other input goes through the
image door (`images.decode`) exactly as elsewhere, so what is refused, and why, does not change; so does
any JPEG that the device decoder refuses (CMYK, a truncated or odd stream), any JPEG big enough to
decode at reduced scale (libjpeg's DCT scaling, which no device decoder offers), any over 16 MP, and any whose
orientation may come from XMP (Pillow reads it when EXIF has none). The rule that picks a
path depends on the file alone, so the CPU and a GPU give the same pixels, up to the last bit of a
decoder's rounding (see tests/test_gpu_images.py for the tolerances).
"""

from __future__ import annotations

import io
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from PIL import Image
from PIL.JpegImagePlugin import MARKER as JPEG_MARKERS

from . import images
from .images import ImageError, ImageInput

if TYPE_CHECKING:
    import torch

# PIL resample codes -> torchvision modes; PIL's nearest samples pixel centres, as torchvision's nearest-exact does
_INTERPOLATIONS = {0: "nearest-exact", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_PASS_THROUGH = {"MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb", "ConvertImageDtype"}
REDUCED_SCALE_MARGIN = 2  # a file at least twice this over the needed size decodes at reduced scale
DEVICE_MAX_PIXELS = 16_000_000  # bigger JPEGs (a long panorama) go through the door and its memory budget
STRIP_ASPECT = 32  # a picture longer than this many times its width (a 1 x 300,000 strip) is resized in steps
STRIP_PIXELS = 4_000_000  # ... when a squash's first pass would make more pixels than this (12 MB)


@dataclass(frozen=True)
class PixelSpec:
    """How a model wants its pixels."""

    height: int
    width: int
    crop: bool  # False: resize straight to (height, width) (BLIP); True: shortest edge to size, centre crop (CLIP)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_blip(cls, image_processor) -> "PixelSpec":
        """The spec of a transformers BLIP image processor (either backend); ValueError if it does more."""
        raw = image_processor.size
        size = {key: raw.get(key) if isinstance(raw, dict) else getattr(raw, key, None) for key in ("height", "width")}
        if not (size.get("height") and size.get("width")) or getattr(image_processor, "do_center_crop", False):
            raise ValueError(f"an image processor with size {size} is not a fixed-size resize")
        if not getattr(image_processor, "do_resize", True) or not getattr(image_processor, "do_rescale", True):
            raise ValueError("an image processor that does not resize and rescale")
        if abs(float(image_processor.rescale_factor) * 255 - 1) > 1e-6:
            raise ValueError(f"rescale factor {image_processor.rescale_factor} is not 1/255")
        mean, std = (0.0,) * 3, (1.0,) * 3
        if getattr(image_processor, "do_normalize", True):
            mean, std = _triple(image_processor.image_mean), _triple(image_processor.image_std)
        return cls(int(size["height"]), int(size["width"]), False, mean, std, _interpolation(image_processor.resample))

    @classmethod
    def from_open_clip(cls, preprocess) -> "PixelSpec":
        """The spec of an open_clip image transform; ValueError for a transform this path does not reproduce."""
        resize = crop = normalize = None
        for step in getattr(preprocess, "transforms", [preprocess]):
            kind = getattr(step, "__name__", type(step).__name__)
            if kind == "Resize" and getattr(step, "max_size", None) is None:
                resize = step
            elif kind == "CenterCrop":
                crop = step
            elif kind == "Normalize":
                normalize = step
            elif kind not in _PASS_THROUGH:
                raise ValueError(f"open_clip transform step {kind} is not reproduced on the device")
        if resize is None or normalize is None:
            raise ValueError("open_clip transform without a plain Resize and Normalize")
        mean, std, interpolation = _triple(normalize.mean), _triple(normalize.std), _interpolation(resize.interpolation)
        size = resize.size
        if isinstance(size, int) or len(size) == 1:  # shortest edge, then (usually) a centre crop
            side = size if isinstance(size, int) else size[0]
            height, width = _pair(crop.size) if crop is not None else (side, side)
            if (height, width) != (side, side):
                raise ValueError(f"a resize to {side} then a crop to {height} x {width} is not reproduced")
            return cls(height, width, True, mean, std, interpolation)
        if crop is not None and _pair(crop.size) != _pair(size):
            raise ValueError("a squash resize followed by a smaller crop is not reproduced")
        return cls(*_pair(size), False, mean, std, interpolation)

    def scale_needed(self, width: int, height: int) -> float:
        """The factor a picture of this size is resized by (the larger one, for a squash)."""
        if self.crop:
            return self.height / min(width, height)
        return max(self.height / height, self.width / width)


@dataclass
class PixelBatch:
    """Model-ready pixels of the inputs that decoded, and why each other one did not.
    On CUDA the pixels are complete (their stream was synchronised); a consumer on another stream calls
    pixels.record_stream(its stream) before freeing them."""

    pixels: "torch.Tensor"  # [len(ok), 3, height, width] on the device, in dtype
    ok: list[int]  # input positions that decoded, in order
    errors: dict[int, ImageError]  # input position -> why it did not


@dataclass(frozen=True)
class _DeviceJpeg:
    """A JPEG for the device decoder: upright after this EXIF orientation."""

    orientation: int


def load_pixels(inputs: Sequence[ImageInput], spec: PixelSpec, device, dtype) -> PixelBatch:
    """Decode and preprocess a batch of inputs on device (JPEGs in one device decode, the rest through the door)."""
    import torch

    device = torch.device(device)
    plans = list(_pool().map(lambda item: _plan(item, spec), inputs))
    pictures: dict[int, torch.Tensor] = {}
    errors: dict[int, ImageError] = {}
    jpegs = [i for i, plan in enumerate(plans) if isinstance(plan, _DeviceJpeg)]
    side_stream = _side_stream(device)
    with torch.cuda.stream(side_stream) if side_stream is not None else nullcontext():
        decoded = _decode_jpegs([inputs[i] for i in jpegs], device)
        refused = [i for i, tensor in zip(jpegs, decoded) if tensor is None]
        for i, tensor in zip(jpegs, decoded):
            if tensor is not None:
                tensor = orient(tensor, plans[i].orientation)
                pictures[i] = (tensor, (tensor.shape[-1], tensor.shape[-2]))
        for i, plan in zip(refused, _pool().map(lambda i: _through_the_door(inputs[i], spec), refused)):
            plans[i] = plan  # what the door says about a JPEG the device decoder refused
        for i, plan in enumerate(plans):
            if isinstance(plan, ImageError):
                errors[i] = plan
            elif not isinstance(plan, _DeviceJpeg):
                tensor, full_size = plan
                pictures[i] = (tensor.to(device, non_blocking=True), full_size)
        ok = sorted(pictures)
        pixels = _preprocess([pictures[i] for i in ok], spec, device, dtype)
    if side_stream is not None:
        side_stream.synchronize()
    return PixelBatch(pixels, ok, errors)


def _plan(item: ImageInput, spec: PixelSpec):
    """Read the header: a _DeviceJpeg, or (for every other input) what _through_the_door gives."""
    header = jpeg_header(item.data)
    if header is not None:
        width, height, orientation = header
        small = spec.scale_needed(width, height) * REDUCED_SCALE_MARGIN > 0.5  # DCT scaling would not halve it
        if small and width * height <= DEVICE_MAX_PIXELS and _ends_with_eoi(item.data):
            return _DeviceJpeg(orientation)
    return _through_the_door(item, spec)


_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive Huffman: what every JPEG decoder reads
_XMP = b"http://ns.adobe.com/xap/1.0/\0"  # the APP1 segment Pillow reads XMP from


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a plain 8-bit gray or YCbCr JPEG, read from its markers up to the
    scan (no decoding, no Pillow); None for anything else (CMYK, arithmetic coding, MPO, an orientation in XMP
    alone, odd or broken files), which then goes through the image door."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    at, size, orientation, exif_seen, xmp_orientation = 2, None, None, False, False
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        known = JPEG_MARKERS.get(0xFF00 | marker)
        if known is None:
            return None  # a marker Pillow does not know: the door refuses the file, so the device must not take it
        if known[2] is None:  # a marker without a segment (as Pillow reads it)
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        segment = data[at + 4 : at + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            if orientation is None and xmp_orientation:
                return None  # Pillow turns it by its XMP: the door decodes it, so both paths turn it alike
            return (*size, orientation or 1) if size else None
        if marker in _SOF:
            if size or len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3):
                return None
            size = (int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big"))
            if min(size) < 1:
                return None
        elif 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # lossless, hierarchical or arithmetic-coded
        elif not _pillow_reads(marker, segment):
            return None
        elif marker == 0xE1 and segment[:6] == b"Exif\0\0" and not exif_seen:  # the first one counts, as in Pillow
            orientation, exif_seen = _exif_orientation(segment), True
        elif marker == 0xE1 and segment.startswith(_XMP) and b"Orientation" in segment:
            xmp_orientation = True
        elif marker == 0xE2 and segment[:4] == b"MPF\0":
            return None  # a multi-picture file: Pillow reads it as MPO
        elif marker == 0xEE and segment[:5] == b"Adobe" and len(segment) > 11 and segment[11] == 0:
            return None  # Adobe transform 0: RGB stored as is, not YCbCr
        at += 2 + length
    return None


def _pillow_reads(marker: int, segment: bytes) -> bool:
    """Whether Pillow's handler for this segment accepts it (it refuses the whole file when one raises)."""
    if marker == 0xDB:  # quantization tables: 1 + 64 or 1 + 128 bytes each
        while segment:
            length = 1 + (64 if segment[0] < 16 else 128)
            if len(segment) < length:
                return False
            segment = segment[length:]
        return True
    if (marker, segment[:4]) == (0xE0, b"JFIF") or (marker, segment[:5]) == (0xEE, b"Adobe"):
        return len(segment) >= 7
    if (marker, segment[:12]) == (0xE2, b"ICC_PROFILE\0"):
        return len(segment) >= 14
    return True


def _exif_orientation(segment: bytes) -> int | None:
    """The orientation in an APP1 Exif segment, read by Pillow's own EXIF reader (as images.decode reads it);
    None when the segment has no orientation tag or cannot be read."""
    try:
        exif = Image.Exif()
        exif.load(segment)
        if 0x0112 not in exif:
            return None  # Pillow then looks for one in XMP
        value = int(exif[0x0112])
    except Exception:  # a broken EXIF block does not make the picture unusable
        return None
    return value if value in images.ORIENTATION_TRANSPOSE else 1


def _through_the_door(item: ImageInput, spec: PixelSpec):
    """images.decode's verdict: its ImageError, or its uint8 [3, H, W] tensor with the upright full size, which
    the resize is computed from (a picture decoded at reduced scale ends up exactly as big as a full one)."""
    import numpy as np
    import torch

    width = height = max_side = None
    try:
        with Image.open(io.BytesIO(item.data)) as header:
            width, height = header.size
        scale = spec.scale_needed(width, height) * REDUCED_SCALE_MARGIN
        max_side = math.ceil(max(width, height) * scale) if 0 < scale <= 0.5 else None
    except Exception:
        pass  # not even a header: decode() names the problem
    try:
        picture = images.decode(item, max_side=max_side).image
    except ImageError as exc:
        return exc
    full_size = picture.size
    if max_side:  # EXIF may have turned it: compare the aspect of what came out with the header's
        turned = (picture.width > picture.height) != (width > height) and picture.width != picture.height
        full_size = (height, width) if turned else (width, height)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1), full_size


def _ends_with_eoi(data: bytes) -> bool:
    """A complete JPEG stream ends with the EOI marker; anything else (cut, or trailing data) is the door's."""
    end = len(data)
    while end > 2 and data[end - 1] == 0:  # zero padding after the end is harmless
        end -= 1
    return data[end - 2 : end] == b"\xff\xd9"


def _decode_jpegs(items: list[ImageInput], device) -> list:
    """One batch decode on the device; if it refuses the batch, one by one; None for each it refuses."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not items:
        return []
    data = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    decoded = []
    for tensor in data:
        try:
            decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded.append(None)
    return decoded


def orient(picture: "torch.Tensor", orientation: int) -> "torch.Tensor":
    """Apply an EXIF orientation (1-8) to a [C, H, W] tensor, as ImageOps.exif_transpose does to a picture."""
    import torch

    if orientation == 2:
        return picture.flip(-1)
    if orientation == 3:
        return picture.flip(-2, -1)
    if orientation == 4:
        return picture.flip(-2)
    if orientation == 5:
        return picture.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(picture, -1, (-2, -1))
    if orientation == 7:
        return picture.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(picture, 1, (-2, -1))
    return picture


def resized_size(spec: PixelSpec, width: int, height: int) -> list[int]:
    """[height, width] a picture of this full size is resized to, before any crop (torchvision's arithmetic)."""
    if not spec.crop:
        return [spec.height, spec.width]
    short, long = sorted((width, height))
    new_long = int(spec.height * long / short)
    return [new_long, spec.height] if height >= width else [spec.height, new_long]


def _preprocess(pictures: list, spec: PixelSpec, device, dtype) -> "torch.Tensor":
    """(uint8 [3, H, W], full size) pairs -> [N, 3, height, width] in dtype (resize_picture, then normalise)."""
    import torch

    if not pictures:
        return torch.zeros((0, 3, spec.height, spec.width), device=device, dtype=dtype)
    return normalise(torch.stack([resize_picture(picture, full_size, spec) for picture, full_size in pictures]), spec, dtype)


def resize_picture(picture: "torch.Tensor", full_size: tuple[int, int], spec: PixelSpec) -> "torch.Tensor":
    """uint8 [3, H, W] -> uint8 [3, height, width]: resized to the size the full picture would get (as
    transformers' torchvision backend and torchvision's Resize do, antialiased), then cropped."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = InterpolationMode(spec.interpolation)
    size = resized_size(spec, *full_size)
    height, width = picture.shape[-2:]
    if max(height, width) >= STRIP_ASPECT * min(height, width):
        return _resize_strip(picture, size, spec, mode)
    picture = F.resize(picture, size, interpolation=mode, antialias=True)
    return F.center_crop(picture, [spec.height, spec.width]) if spec.crop else picture


def _resize_strip(picture: "torch.Tensor", size: list[int], spec: PixelSpec, mode) -> "torch.Tensor":
    """resize_picture for a strip far longer than wide (a 1 x 300,000 PNG), which in one step would go through an
    intermediate of gigabytes (its short side scaled up along the whole long side). A squash shrinks the long side
    alone first (the first pass of the same separable resize). A shortest-side resize scales up only the middle
    the centre crop keeps (and the filter's reach), cut where the source and output pixel grids line up."""
    import torch
    from torchvision.transforms.v2 import functional as F

    axis, across = (-2, -1) if picture.shape[-2] >= picture.shape[-1] else (-1, -2)
    length, target = picture.shape[axis], size[axis]
    if not spec.crop:
        if length > target and length * size[across] > STRIP_PIXELS:  # kept in fp32 between the passes
            shape = list(picture.shape[-2:])
            shape[axis] = target
            picture = F.resize(picture.float(), shape, interpolation=mode, antialias=True)
            return F.resize(picture, size, interpolation=mode, antialias=True).round().clamp(0, 255).to(torch.uint8)
        return F.resize(picture, size, interpolation=mode, antialias=True)
    ratio = target / length  # output pixels per source pixel
    offset = int(round((target - spec.height) / 2.0))  # where torchvision's centre crop starts
    reach = math.ceil(3 + 3 / ratio)  # source pixels a bicubic (antialiased when shrinking) output pixel reads
    span = min(64, max(1, math.ceil(32 / ratio)))  # source pixels searched for a cut on the output grid
    low = max(0, math.floor(offset / ratio) - reach)
    first = min(range(max(0, low - span), low + 1), key=lambda a: abs(a * ratio - round(a * ratio)))
    high = min(length, math.ceil((offset + spec.height) / ratio) + reach)
    last = min(range(high, min(length, high + span) + 1), key=lambda b: abs((b - first) * ratio - round((b - first) * ratio)))
    strip = picture.narrow(axis, first, last - first)
    shape = list(size)
    shape[axis] = max(1, round((last - first) * ratio))
    strip = F.resize(strip, shape, interpolation=mode, antialias=True)
    return strip.narrow(axis, offset - round(first * ratio), spec.height)


def normalise(batch: "torch.Tensor", spec: PixelSpec, dtype) -> "torch.Tensor":
    """uint8 [N, 3, height, width] -> rescaled and normalised in fp32 on the batch's device, then cast to dtype."""
    import torch

    mean = torch.tensor(spec.mean, device=batch.device) * 255.0
    std = torch.tensor(spec.std, device=batch.device) * 255.0
    return ((batch.to(torch.float32) - mean[:, None, None]) / std[:, None, None]).to(dtype)


def _triple(values) -> tuple[float, float, float]:
    values = [float(v) for v in (values if hasattr(values, "__len__") else [values] * 3)]
    if len(values) != 3:
        raise ValueError(f"expected three channel values, got {values}")
    return tuple(values)


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))


def _interpolation(resample) -> str:
    name = getattr(resample, "value", resample)
    name = _INTERPOLATIONS.get(name, name) if isinstance(name, int) else str(name).lower()
    if name not in ("bicubic", "bilinear", "nearest", "nearest-exact"):
        raise ValueError(f"interpolation {resample} is not reproduced on the device")
    return name


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()
_STREAMS = threading.local()


def _pool() -> ThreadPoolExecutor:
    """One process-wide pool for header reads and door decodes (Pillow releases the GIL while it decodes)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(min(16, os.cpu_count() or 2), thread_name_prefix="pixels"))
        return _POOL[0]


def _side_stream(device):
    """A CUDA stream of this thread's own, so decoding overlaps the model's work on the default stream."""
    if device.type != "cuda":
        return None
    import torch

    streams = _STREAMS.__dict__.setdefault("by_device", {})
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return streams[device]
