"""Hostile files at the image door: a mutation fuzz, decoder surprises, and memory bombs under the pixel cap."""

import json
import sys
import threading
import time

import numpy as np
import pytest

import images_zoo as zoo
from captioner import images
from captioner.images import DecodeBudget, ImageError, ImageInput
from conftest import ROOT, child_env

FUZZ_SECONDS = 8.0  # a guard on a busy machine; the seeded run is FUZZ_INPUTS long
FUZZ_INPUTS = 5000


@pytest.mark.filterwarnings("ignore")
def test_a_mutation_fuzz_lets_only_image_errors_out_of_the_door():
    seeds = zoo.fuzz_seeds()
    assert {name.rsplit(".", 1)[1] for name in seeds} == {"png", "jpg", "gif", "tiff", "webp", "bmp"}
    for name, data in seeds.items():  # every seed itself is a good picture
        assert images.decode(ImageInput(name, data)).image.mode == "RGB"
    rng = np.random.default_rng(20240611)
    names, tried, refused = sorted(seeds), 0, 0
    deadline = time.monotonic() + FUZZ_SECONDS
    while tried < FUZZ_INPUTS and time.monotonic() < deadline:
        name = names[tried % len(names)]
        data = zoo.mutate(rng, seeds[name])
        try:
            decoded = images.decode(ImageInput(name, data), max_side=64 if tried % 2 else None)
        except ImageError as exc:
            refused += 1
            assert str(exc).startswith(f"{name}: ") and "\n" not in str(exc), (name, data.hex())
        except BaseException as exc:  # anything else is the bug this test exists for
            pytest.fail(f"{type(exc).__name__} escaped the door for a mutated {name}: {exc}; bytes {data.hex()}")
        else:
            assert decoded.image.mode == "RGB" and min(decoded.image.size) >= 1
        tried += 1
    assert tried >= 500 and refused > tried // 10  # it really ran, and really fed it broken files


@pytest.mark.parametrize("field_type, was", [(16, "OverflowError"), (5, "TypeError")])
def test_tiffs_that_crashed_pillow_are_one_line_errors(field_type, was):
    """Found by the fuzz: a StripOffsets tag of type LONG8 or RATIONAL made Pillow raise OverflowError/TypeError."""
    data = zoo.tiff_with_tag_type(zoo.fuzz_seeds()["raw.tiff"], tag=273, new_type=field_type)
    with pytest.raises(ImageError) as caught:
        images.decode(ImageInput("odd.tiff", data))
    assert str(caught.value).startswith("odd.tiff: truncated or corrupt image data") and was in str(caught.value)


def test_memory_cost_counts_bytes_not_pixels():
    opened = lambda data: images.Image.open(images.io.BytesIO(data))  # noqa: E731
    gray16 = opened(zoo.big_png(2000, 1000))
    rgba = opened(zoo.big_png(2000, 1000, "rgba"))
    assert images.decode_cost(gray16, None) == 2000 * 1000 * (2 + 4)  # 16-bit samples, then the RGB result
    assert images.decode_cost(rgba, 768) == 2000 * 1000 * (4 + 1)  # shrunk: the result is small
    keyed = opened(zoo.encode(images.Image.new("RGB", (200, 100)), "PNG", transparency=(0, 0, 0)))
    assert images.decode_cost(keyed, None) == 200 * 100 * (4 + 4)  # its colour key is flattened into a new picture


def test_a_picture_too_costly_to_decode_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 4_000_000)
    with pytest.raises(ImageError, match=r"wide.png: image of 2,000 x 1,000 px in mode I;16 needs 11 MiB to decode"):
        images.decode(ImageInput("wide.png", zoo.big_png(2000, 1000)))


def test_the_budget_lets_large_decodes_through_one_at_a_time():
    budget, seen = DecodeBudget(limit=100), []

    def decode_like(cost):
        with budget.reserve(cost):
            seen.append((cost, budget.held))
            time.sleep(0.05)

    threads = [threading.Thread(target=decode_like, args=(cost,)) for cost in (70, 70, 150, 10, 20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(seen) == 5 and budget.held == 0
    assert all(held <= 100 or held == cost for cost, held in seen), seen  # 150 is over the limit: it ran alone
    assert budget.peak > 70  # small ones did run beside a large one


def test_large_16_bit_and_alpha_pngs_decode_in_strips():
    gray = images.decode(ImageInput("gray16.png", zoo.big_png(3000, 2000)), max_side=300).image
    assert gray.size == (300, 200) and gray.getpixel((10, 10)) == (128, 128, 128)  # 0x8080 / 257
    red = images.decode(ImageInput("rgba.png", zoo.big_png(3000, 2000, "rgba"))).image
    assert red.size == (3000, 2000) and red.getpixel((5, 5)) == (237, 142, 142)  # half-transparent red on white


PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.stdout, end="")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""
DECODE_BOTH = """
import sys
from functools import partial
from captioner import images
inputs = [images.read_file(path) for path in sys.argv[1:]]
for batch in images.prefetched(inputs, partial(images.decode, max_side=768), batch_size=len(inputs)):
    print(*[decoded.image.size for decoded in batch])
"""


def peak_rss(command: list[str], home) -> tuple[list[str], int]:
    """Run a command in a fresh process; its stdout lines and its peak resident memory in bytes."""
    import subprocess

    env = child_env(CAPTIONER_HOME=str(home), OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)  # fmt: skip
    *lines, peak = done.stdout.strip().splitlines()
    return lines, int(peak)


@pytest.fixture(scope="module")
def two_bombs(tmp_path_factory):
    """Two 263 kB 16-bit PNGs of 10,000 x 12,000 (the issue's files)."""
    folder = tmp_path_factory.mktemp("bombs")
    bomb = zoo.big_png(10_000, 12_000)
    assert len(bomb) < 300_000
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(bomb)
    return [folder / "a.png", folder / "b.png"]


def test_two_16_bit_bombs_decoded_at_once_stay_under_1_gb(two_bombs, tmp_path):
    """Both decoded in parallel threads, as caption and embed do: 240 MB of samples each, no float copies."""
    lines, peak = peak_rss([sys.executable, "-c", DECODE_BOTH, *map(str, two_bombs)], tmp_path)
    assert lines == ["(640, 768) (640, 768)"]
    assert peak < 10**9, f"peak RSS {peak / 1e9:.2f} GB"


@pytest.mark.slow
def test_two_16_bit_bombs_in_one_caption_call_stay_under_2_gb(two_bombs, tmp_path):
    """The issue's case end to end: the caption CLI with both files (it peaked at 6.5 GB)."""
    command = [sys.executable, "-m", "captioner", "caption", *map(str, two_bombs), "--model", "demo", "--num-beams", "1"]
    lines, peak = peak_rss(command, tmp_path)
    assert len(lines) == 2 and all(json.loads(line)["caption"] for line in lines)
    assert peak < 2 * 10**9, f"peak RSS {peak / 1e9:.2f} GB"
