"""The fast BLIP decoder gives HF generate's tokens and scores (generate is the oracle), and says what it cannot do."""

from __future__ import annotations

import pytest
import torch

from captioner.caption import caption_images
from captioner.demo.quality import demo_inputs
from captioner.engine import engine_for
from captioner.engine.blip_decoder import BlipDecoder, generate_decoded
from captioner.engine.model_step import ModelStep
from captioner.images import decode
from captioner.models import load_captioner
from captioner.options import GenerationOptions as Options
from captioner.settings import Settings

CASES = {
    "greedy": Options(num_beams=1, max_new_tokens=20),
    "3 beams": Options(num_beams=3, max_new_tokens=20),
    "10 beams": Options(num_beams=10, max_new_tokens=20),
    "prompt prefix": Options(num_beams=3, max_new_tokens=12, prompt="A picture of"),
    "min new tokens": Options(num_beams=3, max_new_tokens=14, min_new_tokens=9),
    "greedy min new tokens": Options(num_beams=1, max_new_tokens=14, min_new_tokens=9),
    "repetition penalty": Options(num_beams=4, max_new_tokens=16, min_new_tokens=6, repetition_penalty=1.6),
    "greedy repetition penalty": Options(num_beams=1, max_new_tokens=16, min_new_tokens=6, repetition_penalty=2.0),
    "max length, no EOS": Options(num_beams=3, max_new_tokens=3),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The embedded demo captioner and six preprocessed demo-world images of mixed sizes, shapes and colours."""
    torch.set_num_threads(1)
    loaded = load_captioner("demo", Settings(home=tmp_path_factory.mktemp("home"), device="cpu"))
    return loaded, demo_pixels(loaded, 6, seed=7)


def demo_pixels(loaded, n: int, seed: int):
    """n fresh demo-world images through the checkpoint's image processor, as the caption page prepares them."""
    inputs, _ = demo_inputs(n, seed=seed)
    return loaded.processor.image_processor(images=[decode(i).image for i in inputs], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_blip_dir):
    """The tiny random BLIP from disk, sharpened so that captions differ per image and end (EOS) at varied lengths.

    As saved, its near-zero vision weights make every image look alike and its flat logits never pick EOS; wider
    random weights and a raised EOS logit give long, varied sequences and every way a beam search can end.
    """
    torch.set_num_threads(1)
    loaded = load_captioner(str(tiny_blip_dir), Settings(home=tmp_path_factory.mktemp("home"), device="cpu"))
    model, generator = loaded.model, torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1 or "embedding" in name:
                param.normal_(0, 0.2, generator=generator)
        model.text_decoder.cls.predictions.bias[model.config.text_config.sep_token_id] += 3.0
    return loaded, torch.randn(6, 3, 32, 32, generator=generator)


def assert_same_as_generate(loaded, pixels, options, decoder=None):
    decoder = decoder or BlipDecoder(loaded.model, loaded.processor.tokenizer)
    expected = generate_decoded(loaded.model, loaded.processor.tokenizer, pixels, options)
    got = decoder.decode(pixels, options)
    assert [d.sequence for d in got] == [d.sequence for d in expected]
    assert [d.score for d in got] == pytest.approx([d.score for d in expected], abs=1e-4)
    return expected


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("which", ["demo", "tiny"])
def test_same_tokens_and_scores_as_generate(which, case, request):
    loaded, pixels = request.getfixturevalue(which)
    options = CASES[case]
    expected = assert_same_as_generate(loaded, pixels, options)
    prompt_len = 4 if options.prompt else 1
    eos = loaded.model.config.text_config.sep_token_id
    lengths = [len(d.sequence) - prompt_len for d in expected]
    assert all(options.min_new_tokens <= n <= options.max_new_tokens for n in lengths)
    assert all(d.score <= 0 for d in expected)
    if case == "max length, no EOS":
        assert any(n == 3 and eos not in d.sequence for n, d in zip(lengths, expected))


def test_tiny_model_makes_varied_sequences_that_end_every_way(tiny):
    """The oracle tests above are only as good as the variety they see."""
    loaded, pixels = tiny
    for options in (CASES["greedy"], CASES["3 beams"]):
        sequences = [d.sequence for d in generate_decoded(loaded.model, loaded.processor.tokenizer, pixels, options)]
        assert len({tuple(s) for s in sequences}) >= 4
        ended = [s[-1] == loaded.model.config.text_config.sep_token_id for s in sequences]
        assert any(ended) and not all(ended)
        assert max(map(len, sequences)) >= 10


@pytest.mark.parametrize(
    "length_penalty, early_stopping", [(2.0, False), (0.0, True), (2.0, "never"), (-1.0, "never"), (0.5, True)]
)
def test_checkpoint_length_penalty_and_early_stopping(tiny, length_penalty, early_stopping):
    loaded, pixels = tiny
    model = loaded.model
    saved = [(c, c.length_penalty, c.early_stopping) for c in (model.generation_config, model.text_decoder.generation_config)]
    try:
        for config, *_ in saved:
            config.length_penalty, config.early_stopping = length_penalty, early_stopping
        assert BlipDecoder.unsupported(model, CASES["3 beams"]) is None
        assert_same_as_generate(loaded, pixels, Options(num_beams=5, max_new_tokens=16))
    finally:
        for config, penalty, stopping in saved:
            config.length_penalty, config.early_stopping = penalty, stopping


def test_each_image_gets_what_it_gets_alone(tiny):
    loaded, pixels = tiny
    decoder = BlipDecoder(loaded.model, loaded.processor.tokenizer)
    batch = decoder.decode(pixels, CASES["3 beams"])
    alone = [decoder.decode(pixels[i : i + 1], CASES["3 beams"])[0] for i in range(len(pixels))]
    assert [d.sequence for d in batch] == [d.sequence for d in alone]


def test_bucketed_buffers_as_on_a_gpu_give_the_same_tokens(tiny, demo):
    """The CUDA layout run on the CPU: batches padded to graph buckets, shared buffers that grow, masked attention,
    and steps that go on after the search is done (a GPU reads the stop flag only now and then)."""
    for loaded, pixels in (tiny, demo):
        decoder = BlipDecoder(loaded.model, loaded.processor.tokenizer, bucketed=True)
        decoder.loop.check_every = 1000  # never look: every step up to max_new_tokens runs
        for options in (CASES["3 beams"], CASES["greedy repetition penalty"], CASES["prompt prefix"]):
            assert_same_as_generate(loaded, pixels[:3], options, decoder)  # 3 images padded to 4
            assert_same_as_generate(loaded, pixels, options, decoder)  # 6 padded to 8: the buffers grow
        assert decoder.stats["eager_steps"] > 0 and decoder.stats["graph_replays"] == 0
        # a CUDA graph replays into fixed addresses: steps must update the state in place, never rebind it
        slot = next(iter(decoder.loop.slots.values()))
        before = {name: t.data_ptr() for name, t in vars(slot.state).items() if isinstance(t, torch.Tensor)}
        with torch.inference_mode():
            slot.step()
        assert {name: t.data_ptr() for name, t in vars(slot.state).items() if isinstance(t, torch.Tensor)} == before


def test_captions_are_what_caption_py_writes(demo):
    loaded, pixels = demo
    options = CASES["prompt prefix"]
    decoded = BlipDecoder(loaded.model, loaded.processor.tokenizer).decode(pixels, options)
    captions = [loaded.processor.tokenizer.decode(d.sequence, skip_special_tokens=True).strip() for d in decoded]
    tokenizer = loaded.processor.tokenizer
    one_by_one = [generate_decoded(loaded.model, tokenizer, pixels[i : i + 1], options)[0] for i in range(len(pixels))]
    assert captions == [tokenizer.decode(d.sequence, skip_special_tokens=True).strip() for d in one_by_one]
    assert captions == ModelStep(loaded.model, tokenizer).run(pixels, options)[0]  # what the caption engine writes
    assert all(c.startswith("a picture of ") for c in captions)


def test_prompt_and_length_beyond_the_models_positions_is_a_clear_error(demo):
    loaded, pixels = demo
    options = Options(num_beams=3, max_new_tokens=40, min_new_tokens=35, prompt="a picture of")
    with pytest.raises(Exception):  # noqa: B017 (plain generate fails its own way; ours is checked below)
        generate_decoded(loaded.model, loaded.processor.tokenizer, pixels[:1], options)
    with pytest.raises(ValueError, match="positions"):
        BlipDecoder(loaded.model, loaded.processor.tokenizer).decode(pixels[:1], options)
    # the same long limits are fine when the caption ends before the positions run out, as with generate
    assert_same_as_generate(loaded, pixels[:2], Options(num_beams=3, max_new_tokens=40, prompt="a picture of"))


def test_uses_the_checkpoints_own_weights(demo):
    loaded, _ = demo
    decoder = BlipDecoder(loaded.model, loaded.processor.tokenizer)
    assert decoder.text.layers[0] is loaded.model.text_decoder.bert.encoder.layer[0]
    words = loaded.model.text_decoder.bert.embeddings.word_embeddings.weight
    assert decoder.text.head.decoder.weight.data_ptr() == words.data_ptr()


def test_unsupported_names_what_the_fast_path_does_not_cover(demo, tiny_blip_dir):
    loaded, pixels = demo
    model = loaded.model
    assert BlipDecoder.unsupported(model, Options()) is None
    config = model.text_decoder.generation_config
    for key, value, said in (("no_repeat_ngram_size", 2, "no_repeat_ngram_size=2"), ("do_sample", True, "do_sample"),
                             ("num_return_sequences", 2, "num_return_sequences"), ("suppress_tokens", [7], "suppress_tokens")):
        old = getattr(config, key)
        setattr(config, key, value)
        try:
            assert said in BlipDecoder.unsupported(model, Options())
            with pytest.raises(ValueError, match=said):
                BlipDecoder(model, loaded.processor.tokenizer).decode(pixels[:1], Options())
        finally:
            setattr(config, key, old)
    model.generation_config.length_penalty = 3.0  # in generation_config.json, but not what the text decoder uses
    try:
        assert "length_penalty=3.0" in BlipDecoder.unsupported(model, Options())
    finally:
        model.generation_config.length_penalty = None
    model.train()
    try:
        assert "training" in BlipDecoder.unsupported(model, Options())
    finally:
        model.eval()
    assert "beams must be 1 to 10" in BlipDecoder.unsupported(model, Options(num_beams=11))
    from transformers import BlipForQuestionAnswering

    vqa = BlipForQuestionAnswering(model.config).eval()
    assert "BlipForQuestionAnswering" in BlipDecoder.unsupported(vqa, Options())


def test_unsupported_refuses_adapter_layers(tiny):
    from peft import LoraConfig, get_peft_model

    loaded, _ = tiny
    import copy

    wrapped = get_peft_model(copy.deepcopy(loaded.model), LoraConfig(r=2, target_modules=["query", "value"]))
    assert "PeftModel" in BlipDecoder.unsupported(wrapped, Options())
    assert "adapter" in BlipDecoder.unsupported(wrapped.base_model.model, Options())


def test_bf16_on_the_cpu_agrees_with_generate_and_fp32_and_the_engine_captions_in_it(tmp_path):
    """CAPTIONER_DTYPE=bfloat16 on the CPU (fast where it has AMX): the bf16 decode the GPU runs, bucket padding
    included, minus the graphs. Captions agree with bf16 generate's and fp32's on >= 99% of fresh images."""
    loaded = load_captioner("demo", Settings(home=tmp_path, device="cpu", dtype="bfloat16"))
    fp32 = load_captioner("demo", Settings(home=tmp_path, device="cpu", dtype="float32"))
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16
    tokenizer = loaded.processor.tokenizer
    pixels = demo_pixels(loaded, 200, seed=20_262)
    decoder = BlipDecoder(loaded.model, tokenizer, bucketed=True)  # batches padded up to buckets, as on a GPU

    def captions(decoded):
        return [tokenizer.decode(d.sequence, skip_special_tokens=True) for d in decoded]

    for options in (Options(num_beams=3, max_new_tokens=30), Options(num_beams=1, max_new_tokens=20)):
        fast, bf16, reference = [], [], []
        for start in range(0, len(pixels), 48):  # 48: not a bucket size, so the padding rows are exercised
            chunk = pixels[start : start + 48]
            fast += captions(decoder.decode(chunk.to(torch.bfloat16), options))
            bf16 += captions(generate_decoded(loaded.model, tokenizer, chunk.to(torch.bfloat16), options))
            reference += captions(generate_decoded(fp32.model, tokenizer, chunk, options))
        for other in (bf16, reference):
            assert sum(a == b for a, b in zip(fast, other)) >= 0.99 * len(pixels), options
    inputs, truths = demo_inputs(24, seed=20_263)
    results = caption_images(loaded, inputs, Options(num_beams=3))
    assert sum(r.caption == t.caption for r, t in zip(results, truths)) >= 23 and all(r.score <= 0 for r in results)
    assert engine_for(loaded).step.last_path == "fast"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_on_cuda_agrees_with_generate_and_graphs_match_eager(tmp_path):
    """On a GPU in bf16, near-ties may flip: captions must still agree with generate's on >= 99% of fresh images."""
    loaded = load_captioner("demo", Settings(home=tmp_path, device="cuda", dtype="bfloat16"))
    tokenizer = loaded.processor.tokenizer
    pixels = demo_pixels(loaded, 448, seed=20_261).to("cuda", torch.bfloat16)

    def caption(decoded):
        return tokenizer.decode(decoded.sequence, skip_special_tokens=True)

    graphs = BlipDecoder(loaded.model, tokenizer)
    eager = BlipDecoder(loaded.model, tokenizer, cuda_graphs=False)
    for options in (Options(num_beams=3, max_new_tokens=30), Options(num_beams=1, max_new_tokens=20)):
        same = 0
        for start in range(0, len(pixels), 64):
            chunk = pixels[start : start + 64]
            expected = generate_decoded(loaded.model, tokenizer, chunk, options)
            fast = graphs.decode(chunk, options)
            same += sum(caption(a) == caption(b) for a, b in zip(expected, fast))
            assert [d.sequence for d in eager.decode(chunk, options)] == [d.sequence for d in fast]
        assert same >= 0.99 * len(pixels), f"{same} of {len(pixels)} captions agree ({options})"
    assert graphs.stats["graph_captures"] > 0 and graphs.stats["graph_replays"] > 0
    assert eager.stats["graph_replays"] == 0 and eager.stats["eager_steps"] > 0
    odd = graphs.decode(pixels[:5], Options(num_beams=3))  # a batch padded up to its bucket
    assert [d.sequence for d in odd] == [d.sequence for d in graphs.decode(pixels[:8], Options(num_beams=3))[:5]]
    bounded = BlipDecoder(loaded.model, tokenizer, graph_memory_limit=1)  # no room to pin buffers or graphs
    expected = [d.sequence for d in graphs.decode(pixels[:8], Options(num_beams=3))]
    assert [d.sequence for d in bounded.decode(pixels[:8], Options(num_beams=3))] == expected
    assert bounded.stats["graph_captures"] == 0 and bounded.stats["eager_fallbacks"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_setting_replayed_from_cuda_graphs_gives_generates_tokens_in_fp32(tmp_path):
    """Each case (10 beams, prefix, min tokens, repetition penalty) through captured graphs, in buckets that grow
    (3 images padded to 4, then 6 to 8: the arena's buffers are made again and the graphs with them)."""
    loaded = load_captioner("demo", Settings(home=tmp_path, device="cuda", dtype="float32"))
    decoder = BlipDecoder(loaded.model, loaded.processor.tokenizer)
    pixels = demo_pixels(loaded, 6, seed=41).to("cuda")
    for name, options in CASES.items():
        replays = decoder.stats["graph_replays"]
        for images in (pixels[:3], pixels):
            assert_same_as_generate(loaded, images, options, decoder)
        assert decoder.stats["graph_replays"] > replays, f"{name} was not served from a graph"
    assert decoder.stats["eager_fallbacks"] == 0


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]),
])  # fmt: skip
def test_weights_given_new_memory_are_read_there_not_where_the_slots_were_made(tmp_path, device):
    """finetune's merge of trained token rows gives the word embeddings new memory: the bucket slots made before (on
    CUDA, graphs that read the old memory) must go, and the next captions come from the new weights."""
    loaded = load_captioner("demo", Settings(home=tmp_path, device=device, dtype="float32"))
    tokenizer = loaded.processor.tokenizer
    decoder = BlipDecoder(loaded.model, tokenizer, bucketed=True)
    pixels = demo_pixels(loaded, 4, seed=31).to(device)
    for options in (Options(num_beams=1, max_new_tokens=12), Options(num_beams=3, max_new_tokens=12)):
        decoder.decode(pixels, options)
    words = loaded.model.text_decoder.bert.embeddings.word_embeddings
    with torch.no_grad():
        words.weight.data = words.weight.data.roll(1, dims=0)  # new memory and new values, as the merge does
    for options in (Options(num_beams=1, max_new_tokens=12), Options(num_beams=3, max_new_tokens=12)):
        expected = generate_decoded(loaded.model, tokenizer, pixels, options)
        assert [d.sequence for d in decoder.decode(pixels, options)] == [d.sequence for d in expected]
    assert decoder.stats["weight_moves"] == 1
    if device == "cuda":
        assert decoder.stats["graph_captures"] == 4 and decoder.stats["graph_replays"] > 0


def test_greedy_breaks_ties_and_meets_nan_as_generates_argmax():
    """Equal best scores pick the first, as torch.argmax in HF's greedy search; a NaN row picks what argmax picks."""
    from captioner.engine.blip_search import DecodePlan, GreedyState, SearchRules, greedy_step

    rules = SearchRules(beams=1, eos=3, pad=0, penalised=False, early_stopping=False)
    logits = torch.zeros(3, 16)
    logits[0, [5, 9]] = 2.0
    logits[1, [11, 2, 7]] = 1.0
    logits[2, 4] = float("nan")
    state = GreedyState(3, 8, "cpu")
    state.start(torch.tensor([[1]] * 3), DecodePlan((1,), 8, 0, 1.0, 1.0, rules))
    greedy_step(state, logits, rules)
    assert state.last.tolist() == logits.argmax(dim=-1).tolist() == [5, 2, 4]
