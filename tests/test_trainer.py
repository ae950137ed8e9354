"""The training loop's parts: batches mixed from new and old rows, augmentation, and the GPU's bf16 path on the CPU."""

import pytest
import torch

from captioner.models import load_captioner
from captioner.settings import Settings
from finetune import FinetuneConfig
from finetune.data import CONFIRMATION, CORRECTION, Example
from finetune.tensors import to_tensors
from finetune.trainer import augment, batch_plan, bf16_frozen_weights, new_word_ids, train, with_lora


def test_every_batch_mixes_the_few_corrections_with_old_knowledge_deterministically():
    old = [False] * 3 + [True] * 40
    plan, old_columns = batch_plan(old, steps=10, batch_size=16, old_share=0.5, seed=1)
    assert plan.shape == (10, 16) and old_columns == 8
    assert (plan[:, :8] < 3).all() and (plan[:, 8:] >= 3).all()  # three corrections fill half of every batch
    assert set(plan[:, 8:].flatten().tolist()) == set(range(3, 43))  # every old row comes round
    assert torch.equal(plan, batch_plan(old, 10, 16, 0.5, seed=1)[0])
    uniform, none_old = batch_plan(old, 10, 16, old_share=0.0, seed=1)
    assert none_old == 0 and uniform.shape == (10, 16)


def test_only_words_no_old_caption_uses_get_trainable_rows(settings):
    tokenizer = load_captioner("demo", settings).processor.tokenizer
    ids = new_word_ids(tokenizer, ["a red star", "a blue star"], ["a red circle", "a blue square"])
    assert tokenizer.convert_ids_to_tokens(ids) == ["star"]


def test_augmentation_without_flip_zoom_or_shift_is_the_identity():
    pixels = torch.rand(2, 3, 16, 16)
    same = augment(pixels, torch.tensor([False, False]), torch.ones(2), torch.zeros(2, 2))
    assert torch.allclose(same, pixels, atol=1e-5)
    mirrored = augment(pixels, torch.tensor([True, False]), torch.ones(2), torch.zeros(2, 2))
    assert torch.allclose(mirrored[0], pixels[0].flip(-1), atol=1e-5)


@pytest.fixture
def rows(tiny_blip_dir, tmp_path, demo_png):
    loaded = load_captioner(str(tiny_blip_dir), Settings(home=tmp_path, device="cpu", dtype="float32"))
    examples = []
    for i, (shape, kind) in enumerate([("star", CORRECTION)] * 3 + [("circle", CONFIRMATION), ("square", CONFIRMATION)] * 3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(demo_png(shape, "red", 64 + 8 * i))
        examples.append(Example(path, f"a red {shape}", f"{i:064x}", kind, "star" if kind == CORRECTION else ""))
    tensors, problems = to_tensors(examples, loaded.processor, torch.device("cpu"), torch.float32)
    assert problems == [] and len(tensors) == 9 and tensors.old.tolist() == [False] * 3 + [True] * 6
    return loaded, tensors


def test_the_bf16_path_trains_and_gives_back_the_full_precision_weights(rows):
    """What runs on a GPU (bf16 frozen weights, bf16 autocast), run here on the CPU."""
    loaded, tensors = rows
    cfg = FinetuneConfig(epochs=3, batch_size=4)
    model = with_lora(loaded.model, loaded.processor.tokenizer, tensors, cfg)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    stats = train(model, tensors, cfg, None, bf16=True)
    assert stats["steps"] == 9 and torch.isfinite(torch.tensor([stats["first_loss"], stats["last_loss"]])).all()
    after = dict(model.named_parameters())
    assert all(after[name].dtype == torch.float32 and torch.equal(after[name], value) for name, value in frozen.items())


def test_bf16_copies_are_made_only_of_frozen_linear_weights(rows):
    loaded, _ = rows
    model = loaded.model.requires_grad_(False)
    model.text_decoder.bert.encoder.layer[0].attention.self.key.weight.requires_grad_(True)
    with bf16_frozen_weights(model, enabled=True):
        assert model.text_decoder.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
        assert model.text_decoder.bert.embeddings.word_embeddings.weight.dtype == torch.float32
        assert model.text_decoder.bert.encoder.layer[0].attention.self.key.weight.dtype == torch.float32  # trained
    assert model.text_decoder.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32


@pytest.mark.gpu
def test_training_on_cuda_syncs_with_the_host_only_every_few_steps(rows):
    """The CUDA path: rows on the GPU, bf16, fused AdamW; synchronising calls are counted by torch itself."""
    import warnings

    loaded, tensors = rows
    cuda = torch.device("cuda")
    tensors = tensors.select(torch.ones(len(tensors), dtype=torch.bool))
    for name in ("pixels", "input_ids", "attention", "labels", "old", "flippable"):
        setattr(tensors, name, getattr(tensors, name).to(cuda))
    cfg = FinetuneConfig(epochs=20, batch_size=4)
    model = with_lora(loaded.model.to(cuda), loaded.processor.tokenizer, tensors, cfg)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = train(model, tensors, cfg, None, bf16=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert stats["steps"] == 60 and len(syncs) < stats["steps"] // 2, [str(w.message) for w in syncs[:5]]


def test_one_pass_through_a_frozen_vision_tower_gives_the_full_models_logits(rows):
    from finetune.trainer import forward

    loaded, tensors = rows
    model = with_lora(loaded.model, loaded.processor.tokenizer, tensors, FinetuneConfig())
    with torch.no_grad():
        for module in model.modules():  # a trained adapter, so that the live model's logits differ
            if hasattr(module, "lora_B"):
                for weight in module.lora_B.values():
                    weight.weight.normal_(0, 0.5)
        pixels, input_ids, attention, _, _ = tensors.rows(torch.arange(len(tensors)))
        full = forward(model, model, pixels, input_ids, attention, slice(3, None), shared_vision=False)
        shared = forward(model, model, pixels, input_ids, attention, slice(3, None), shared_vision=True)
    assert torch.allclose(full[0], shared[0], atol=1e-5) and torch.allclose(full[1], shared[1], atol=1e-5)
    assert not torch.allclose(full[0][3:], full[1], atol=1e-3)  # the teacher is the model without its adapters


def test_an_image_that_cannot_be_decoded_is_left_out_and_named(rows, tmp_path):
    loaded, tensors = rows
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    examples = [tensors.examples[0], Example(broken, "a red star", "f" * 64, CORRECTION, "star"), tensors.examples[1]]
    kept, problems = to_tensors(examples, loaded.processor, torch.device("cpu"), torch.float32)
    assert [e.image_path for e in kept.examples] == [examples[0].image_path, examples[2].image_path]
    assert len(problems) == 1 and problems[0].startswith(str(broken))
    assert torch.equal(kept.pixels[1], tensors.pixels[1])
