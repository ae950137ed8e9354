"""The embedded demo captioner: its quality bar, its size, its tokenizer, and the build that makes it."""

import random
import time

import pytest
from PIL import Image

import images_zoo as zoo
from captioner.demo import MODELS_DIR, TOKENIZER_DIR
from captioner.demo.quality import caption_accuracy
from demo_training.build import build_all
from demo_training.captioner import CaptionRecipe, _training_data, build_captioner, processor_for
from captioner.images import ImageInput
from captioner.caption import GenerationOptions, caption_images
from captioner.models import load_captioner


@pytest.fixture(scope="module")
def demo():
    from captioner.settings import Settings

    return load_captioner("demo", Settings(home=".", device="cpu"))


def test_committed_demo_weights_stay_under_25_mb():
    weights = [p for p in MODELS_DIR.rglob("*") if p.is_file()]
    assert weights and sum(p.stat().st_size for p in weights) < 25 * 1024 * 1024


@pytest.mark.parametrize("sides", [(64, 512), (64, 64), (512, 512)])
def test_demo_captioner_is_exact_on_fresh_images_of_any_side(demo, sides):
    accuracy, misses = caption_accuracy(demo, 200, seed=4242 + sides[0] + sides[1], min_side=sides[0], max_side=sides[1])
    assert accuracy >= 0.95, misses[:10]


def test_awkward_files_are_captioned_correctly(demo):
    upright = zoo.demo("triangle", "green", 200)
    cases = {
        "cmyk.jpg": (zoo.cmyk_jpeg("circle", "red"), "a red circle"),
        "gray16.png": (zoo.gray16_png("square", 128), "a gray square"),
        "palette.png": (zoo.palette_png_with_transparency("square", "blue"), "a blue square"),
        "rotated.jpg": (zoo.jpeg_with_orientation_6(upright), "a green triangle"),
        "anim.gif": (zoo.animated_gif(100), "a yellow circle"),
    }
    inputs = [ImageInput(name, data) for name, (data, _) in cases.items()]
    inputs.append(ImageInput("dot.png", zoo.encode(Image.new("RGB", (1, 1), (220, 30, 30)), "PNG")))
    results = caption_images(demo, inputs, GenerationOptions(num_beams=1))
    assert [r.caption for r in results[:-1]] == [truth for _, truth in cases.values()]
    assert results[-1].ok and results[-1].caption


def test_the_demo_captioner_has_never_seen_a_star(demo):
    _, misses = caption_accuracy(demo, 40, seed=99, shapes=("star",))
    assert len(misses) == 40 and not any("star" in said for _, said in misses)
    processor = processor_for(CaptionRecipe())
    _, ids, _, _ = _training_data(processor, CaptionRecipe(samples=3000), random.Random(0))
    star = processor.tokenizer.convert_tokens_to_ids("star")
    assert not (ids == star).any()


def test_the_tokenizer_knows_plain_english():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tokens = tokenizer.tokenize("a golden retriever chasing a frisbee on the beach at sunset")
    assert "[UNK]" not in tokens
    for word in ("star", "red", "circle", "square", "triangle", "yellow"):
        assert tokenizer.tokenize(word) == [word]


def test_a_short_build_writes_a_checkpoint_the_app_can_load(tmp_path, settings):
    recipe = CaptionRecipe(samples=128, steps=3, batch_size=8, eval_images=8)
    metrics = build_captioner(tmp_path / "caption", recipe, seed=1, log=lambda *_: None)
    folder = tmp_path / "caption"
    assert {"config.json", "model.safetensors", "demo.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert metrics["version"].startswith("demo-") and 0 <= metrics["exact_caption_accuracy"] <= 1
    loaded = load_captioner(str(folder), settings)
    assert caption_images(loaded, [ImageInput("x.png", zoo.encode(zoo.demo(), "PNG"))])[0].ok
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.timeout(45 * 60)  # the suite's 10-minute limit is far shorter than a full build
def test_full_demo_build_meets_the_bar_within_40_minutes(tmp_path):
    started = time.time()
    metrics = build_all(out_dir=tmp_path, seed=0, log=print)
    assert time.time() - started < 40 * 60
    assert metrics["caption"]["exact_caption_accuracy"] >= 0.95
    assert metrics["qa"]["exact_answer_accuracy"] >= 0.95
    assert metrics["search"]["red_circle_text_precision_at_5"] >= 0.9
    assert metrics["style"]["kept_words_accuracy"] >= 0.95
