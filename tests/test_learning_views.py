"""What a retrain learns from a few corrections: every one of them is trained on, and a recoloured view of a
shape correction teaches the shape, never a colour."""

import hashlib
import io

import torch
from PIL import Image

from captioner.demo.quality import demo_inputs
from captioner.models import load_captioner
from captioner.settings import Settings
from finetune.data import CONFIRMATION, CORRECTION, Example, heldout_images, is_heldout, trained_only
from finetune.tensors import to_tensors
from finetune.views import recolour, view_caption, with_views


def examples(kind: str, concept: str, count: int, start: int, fraction: float, on_heldout_side: bool) -> list[Example]:
    """count examples whose image hashes all fall on the chosen side of the hash split."""
    made, i = [], start
    while len(made) < count:
        sha = hashlib.sha256(f"{kind}{i}".encode()).hexdigest()
        if is_heldout(sha, fraction) == on_heldout_side:
            caption = f"a red {concept}" if kind == CORRECTION else "a red circle"
            made.append(Example(f"{sha}.png", caption, sha, kind, concept if kind == CORRECTION else ""))
        i += 1
    return made


def test_a_concept_corrected_three_times_trains_on_all_three_even_when_the_hash_would_hold_them_out():
    stars = examples(CORRECTION, "star", 3, 0, 0.15, on_heldout_side=True)
    confirmations = examples(CONFIRMATION, "", 40, 0, 0.15, on_heldout_side=False)
    confirmations += examples(CONFIRMATION, "", 20, 10_000, 0.15, on_heldout_side=True)
    held = heldout_images(stars + confirmations, 0.15)
    assert not held & {e.sha256 for e in stars}
    assert len(held) == 9  # 15% of the 60 confirmations, all of them hash-chosen
    assert trained_only(stars + confirmations, held) == {"star": 3}


def test_many_corrections_of_a_concept_hold_out_at_most_their_share_chosen_by_hash_the_same_every_time():
    hearts = examples(CORRECTION, "heart", 20, 0, 0.15, on_heldout_side=True)
    hearts += examples(CORRECTION, "heart", 80, 1_000, 0.15, on_heldout_side=False)
    held = heldout_images(hearts, 0.15)
    assert len(held) == 15 and all(is_heldout(sha, 0.15) for sha in held)
    assert heldout_images(list(reversed(hearts)), 0.15) == held
    assert trained_only(hearts, held) == {}


def yellow_star():
    inputs, _ = demo_inputs(1, seed=3, shapes=("star",), colors=("yellow",))
    return inputs[0]


def test_a_recoloured_yellow_star_is_an_equally_vivid_blue_one_on_the_same_white(tmp_path):
    processor = load_captioner("demo", Settings(home=tmp_path, device="cpu")).processor
    mean, std = (torch.tensor(getattr(processor.image_processor, n)).view(3, 1, 1) for n in ("image_mean", "image_std"))
    picture = processor.image_processor(images=Image.open(io.BytesIO(yellow_star().data)), return_tensors="pt")["pixel_values"]
    out = recolour(picture, torch.tensor([0.5]), mean, std)
    rgb = (out * std + mean).clamp(0, 1)
    before = (picture[0] * std + mean).clamp(0, 1)
    shape = (before[0] > 0.85) & (before[1] > 0.7) & (before[2] < 0.15)  # the yellow pixels (235, 200, 20)
    assert shape.sum() > 50
    turned = rgb[0][:, shape].mean(dim=1)
    assert turned[2] > 0.85 and turned[0] < 0.15 and turned[1] < 0.35  # blue, as vivid as the yellow was
    background = (before > 0.999).all(dim=0)
    assert torch.allclose(rgb[0][:, background], before[:, background], atol=1e-4)  # white stays white


def test_only_a_correction_that_teaches_no_colour_is_recoloured_and_only_its_taught_words_are_learned_there(tmp_path):
    processor = load_captioner("demo", Settings(home=tmp_path, device="cpu")).processor
    path = tmp_path / "star.png"
    path.write_bytes(yellow_star().data)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    rows = [
        Example(path, "a yellow star", sha, CORRECTION, "star"),  # the shape was wrong
        Example(path, "a yellow circle", sha, CORRECTION, "yellow"),  # the colour was wrong
        Example(path, "a yellow circle", sha, CONFIRMATION),
    ]
    tensors, problems = to_tensors(rows, processor, torch.device("cpu"), torch.float32)
    assert not problems and tensors.recolourable.tolist() == [True, False, False]
    star = processor.tokenizer.convert_tokens_to_ids("star")
    taught = tensors.taught[0][tensors.taught[0] != -100].tolist()
    assert taught == [star]
    assert (tensors.taught[1:] == -100).all()


def test_recolouring_turns_hues_as_torchvision_adjust_hue_does():
    from torchvision.transforms.functional import adjust_hue

    torch.manual_seed(0)
    pictures = torch.rand(4, 3, 8, 8)
    mean, std = torch.tensor([0.48, 0.46, 0.41]).view(3, 1, 1), torch.tensor([0.27, 0.26, 0.28]).view(3, 1, 1)
    shifts = torch.tensor([0.0, 0.25, 0.7, 0.5])
    ours = recolour((pictures - mean) / std, shifts, mean, std) * std + mean
    theirs = torch.stack([adjust_hue(p, float((s + 0.5) % 1 - 0.5)) for p, s in zip(pictures, shifts)])
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_view_is_called_in_the_live_models_words_up_to_what_the_correction_taught():
    star = Example("s.png", "a yellow star", "0" * 64, CORRECTION, "star")
    assert view_caption("a blue triangle", star) == "a blue star"
    donkey = Example("d.png", "A man riding a donkey.", "1" * 64, CORRECTION, "donkey")
    assert view_caption("a person on a horse", donkey) == "a person on a donkey."


def test_three_yellow_star_corrections_get_views_in_other_colours_named_by_the_live_model(tmp_path, monkeypatch):
    loaded = load_captioner("demo", Settings(home=tmp_path, device="cpu"))
    inputs, _ = demo_inputs(3, seed=5, shapes=("star",), colors=("yellow",))
    rows = []
    for i, item in enumerate(inputs):
        path = tmp_path / f"{i}.png"
        path.write_bytes(item.data)
        rows.append(Example(path, "a yellow star", hashlib.sha256(item.data).hexdigest(), CORRECTION, "star"))
    confirmation = tmp_path / "c.png"
    confirmation.write_bytes(demo_inputs(1, seed=6, shapes=("circle",), colors=("red",))[0][0].data)
    rows.append(Example(confirmation, "a red circle", "2" * 64, CONFIRMATION))
    tensors, _ = to_tensors(rows, loaded.processor, torch.device("cpu"), torch.float32)
    grown, added = with_views(loaded.model, loaded.processor.tokenizer, tensors, per_row=6)
    assert added == 18 and len(grown) == 22
    views = grown.examples[4:]
    colours = {view.caption.split()[1] for view in views}
    assert {"red", "green", "blue"} <= colours and all(view.caption.endswith(" star") for view in views)
    star = loaded.processor.tokenizer.convert_tokens_to_ids("star")
    learned = grown.labels[4:]
    assert ((learned == star) | (learned == -100)).all() and (learned == star).sum(dim=1).eq(1).all()
    assert torch.equal(grown.labels[:4, : tensors.labels.shape[1]], tensors.labels)  # the real rows are untouched
    monkeypatch.setattr("finetune.views.MAX_VIEWS", 7)  # fewer views per correction when there are many
    assert with_views(loaded.model, loaded.processor.tokenizer, tensors, per_row=6)[1] == 6
