"""Image preprocessing throughput: the device image path (captioner/gpu_images.py) against PIL decoding plus
the model's own processor, on the same JPEG files, in one run; and the caption engine's CPU image stage.

    python -m bench.pixel_throughput                                   # CPU, BLIP-base's processor and ViT-B-32's
    python -m bench.pixel_throughput --device cuda --images 2048

"PIL + processor" decodes with the image door in worker threads (JPEG draft mode for big files, as the
caption path does) and hands the batch to transformers' BlipImageProcessor (its torchvision backend, the
default in transformers 5, and its PIL backend) or to open_clip's transform. "gpu_images" decodes the
JPEGs in one batch on the device (libjpeg-turbo on the CPU, nvjpeg on a GPU) and resizes them there.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np


from captioner import images
from captioner.demo.world import sample
from captioner.engine.pixels import CpuImageStage
from captioner.gpu_images import PixelSpec, load_pixels, normalise, resize_picture
from captioner.images import ImageInput


TWO_RESAMPLES = "engine CPU stage, Pillow shrink then torch resize"
ONE_RESAMPLE = "engine CPU stage (JPEG draft, one torch resize)"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="/work/shared/blip-base", help="a BLIP folder (its preprocessor config)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    return parser.parse_args()


def jpegs(n: int) -> list[ImageInput]:
    def one(i: int) -> ImageInput:
        picture = sample(random.Random(i), min_side=480, max_side=1024).image
        import io

        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        return ImageInput(f"{i}.jpg", buffer.getvalue())

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(n)))


def timed(run, inputs, batch_size) -> float:
    run(inputs[:batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(inputs), batch_size):
        run(inputs[start : start + batch_size])
    return len(inputs) / (time.perf_counter() - started)


def main():
    import open_clip
    import torch
    from transformers import AutoImageProcessor
    from transformers.models.blip import BlipImageProcessor, BlipImageProcessorPil

    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if Path(args.config).is_dir():
        blip = AutoImageProcessor.from_pretrained(args.config)
    else:
        blip = BlipImageProcessor(size={"height": 384, "width": 384})
    blip_pil = BlipImageProcessorPil(size={"height": blip.size.height, "width": blip.size.width})
    clip = open_clip.image_transform(224, is_train=False)
    inputs = jpegs(args.images)
    pool = ThreadPoolExecutor(os.cpu_count(), thread_name_prefix="decode")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def pil_then(process, max_side, batch):
        pictures = [decoded.image for decoded in pool.map(partial(images.decode, max_side=max_side), batch)]
        process(pictures).to(device)
        sync()

    def ours(spec, batch):
        load_pixels(batch, spec, device, torch.float32)
        sync()

    def engine_stage(stage, batch):
        stage.collate([prepared.pixels for prepared in stage.prepare(batch, thumbnails=False)])
        sync()

    def shrunk_then_resized(spec, batch):  # the engine's CPU stage before it let the torch resize do all the shrinking
        def one(item):
            picture = images.decode(item, max_side=768).image
            return resize_picture(torch.from_numpy(np.array(picture, dtype=np.uint8)).permute(2, 0, 1), picture.size, spec)

        normalise(torch.stack(list(pool.map(one, batch))), spec, torch.float32).to(device)
        sync()

    blip_spec = PixelSpec.from_blip(blip)
    cpu_stage = CpuImageStage(SimpleNamespace(image_processor=blip), device, torch.float32, workers=os.cpu_count())

    ways = [
        ("BLIP", "PIL + BlipImageProcessor (torchvision backend)",
         partial(pil_then, lambda p: blip(images=p, return_tensors="pt")["pixel_values"], 768)),
        ("BLIP", "PIL + BlipImageProcessorPil",
         partial(pil_then, lambda p: blip_pil(images=p, return_tensors="pt")["pixel_values"], 768)),
        ("BLIP", f"gpu_images.load_pixels on {device.type}", partial(ours, blip_spec)),
        ("BLIP", TWO_RESAMPLES, partial(shrunk_then_resized, blip_spec)),
        ("BLIP", ONE_RESAMPLE, partial(engine_stage, cpu_stage)),
        ("CLIP ViT-B-32", "PIL + open_clip transform", partial(pil_then, lambda p: torch.stack([clip(x) for x in p]), 448)),
        ("CLIP ViT-B-32", f"gpu_images.load_pixels on {device.type}", partial(ours, PixelSpec.from_open_clip(clip))),
    ]  # fmt: skip
    print(f"{len(inputs)} JPEG files of 480-1024 px, batches of {args.batch_size}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"{'model':<15}{'way':<52}{'images/s':>10}")
    rates = {}
    for model, way, run in ways:
        rates[(model, way)] = rate = timed(run, inputs, args.batch_size)
        print(f"{model:<15}{way:<52}{rate:>10.1f}")
    for model, base in (("BLIP", "PIL + BlipImageProcessor (torchvision backend)"), ("CLIP ViT-B-32", "PIL + open_clip transform")):
        print(f"{model}: gpu_images is {rates[(model, f'gpu_images.load_pixels on {device.type}')] / rates[(model, base)]:.1f}x {base}")
    single, double = rates[("BLIP", ONE_RESAMPLE)], rates[("BLIP", TWO_RESAMPLES)]
    print(f"BLIP: the engine's CPU stage resampling once is {single / double:.2f}x resampling twice")
    cpu_stage.close()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
