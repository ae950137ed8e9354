"""A fast BLIP caption decoder that gives HF generate's tokens, and generate itself behind the same interface.

    decoder = BlipDecoder(loaded.model, loaded.processor.tokenizer)
    if BlipDecoder.unsupported(loaded.model, options) is None:
        results = decoder.decode(pixel_values, options)
    else:
        results = generate_decoded(loaded.model, loaded.processor.tokenizer, pixel_values, options)

Both return one Decoded per image. `sequence` is what generate returns for that image (the prompt ids with BOS
first, then the generated ids up to and including the end-of-sequence token; no batch padding after it). `score`
is the mean over the generated ids (EOS included when produced) of log_softmax(raw logits)[id], with no logits
processors: the caption's confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import GenerationOptions
from .blip_loop import DecodeLoop
from .blip_search import DecodePlan, SearchRules
from .blip_support import effective_config, generate_kwargs, search_settings, unsupported_reason
from .blip_towers import TextDecoder, encode_images


@dataclass(frozen=True)
class Decoded:
    """One image's caption ids as HF generate returns them (prompt included) and its mean token log-probability."""

    sequence: list[int]
    score: float


class BlipDecoder:
    """Captions a batch with the checkpoint's own weights: SDPA towers, a preallocated cache, HF's search rules."""

    def __init__(self, model, tokenizer, *, cuda_graphs: bool = True, bucketed: bool | None = None,
                 graph_memory_limit: int | None = None):  # fmt: skip
        """bucketed pads batches to graph buckets (default: on CUDA); graph_memory_limit caps what graphs pin."""
        self.model, self.tokenizer = model, tokenizer
        self.text = TextDecoder(model.text_decoder)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        bucketed = device.type == "cuda" if bucketed is None else bucketed
        self.loop = DecodeLoop(
            self.text, device, dtype, bucketed=bucketed, cuda_graphs=cuda_graphs, memory_limit=graph_memory_limit
        )
        self._plans: dict[GenerationOptions, DecodePlan] = {}

    @property
    def stats(self) -> dict:
        """Counters: graphs captured and replayed, eager steps, batches that fell back to eager for memory."""
        return dict(self.loop.stats)

    @staticmethod
    def unsupported(model, options: GenerationOptions) -> str | None:
        """Why the fast path cannot give generate's tokens for this model and these options; None when it can."""
        return unsupported_reason(model, options)

    def plan(self, options: GenerationOptions) -> DecodePlan:
        """The prompt ids and lengths BLIP's generate would use for these options (worked out once per options)."""
        if self.model.training:
            raise ValueError("the fast BLIP decoder cannot serve this request: the model is in training mode")
        plan = self._plans.get(options)
        if plan is None:
            if len(self._plans) >= 64:
                self._plans.clear()
            plan = self._plans[options] = self._make_plan(options)
        return plan

    def _make_plan(self, options: GenerationOptions) -> DecodePlan:
        reason = self.unsupported(self.model, options)
        if reason:
            raise ValueError(f"the fast BLIP decoder cannot serve this request: {reason}")
        text = self.model.config.text_config
        prompt = prompt_ids(self.model, self.tokenizer, options)
        config = effective_config(self.model, options)
        length_penalty, early_stopping = search_settings(config)
        penalised = float(options.repetition_penalty) != 1.0
        rules = SearchRules(options.num_beams, text.sep_token_id, text.pad_token_id, penalised, early_stopping)
        return DecodePlan(
            tuple(prompt), len(prompt) + options.max_new_tokens, len(prompt) + options.min_new_tokens,
            float(options.repetition_penalty), length_penalty, rules,
        )  # fmt: skip

    def decode(self, pixel_values: torch.Tensor, options: GenerationOptions) -> list[Decoded]:
        """Caption every image of pixel_values [B, 3, H, W] (on the model's device and dtype) with one options."""
        plan = self.plan(options)
        if pixel_values.dim() != 4 or pixel_values.shape[0] == 0:
            raise ValueError(f"pixel_values must be a non-empty [B, 3, H, W] batch, not shape {tuple(pixel_values.shape)}")
        with torch.inference_mode():
            image_embeds = encode_images(self.model.vision_model, pixel_values)
            decoded = self.loop.run(image_embeds, plan)
        return [Decoded(sequence, score) for sequence, score in decoded]


def prompt_ids(model, tokenizer, options: GenerationOptions) -> list[int]:
    """What BLIP's generate starts from: the tokenised prompt with its first id made BOS and its last id dropped."""
    text = model.config.text_config
    prompt = options.prompt.strip()
    ids = list(tokenizer([prompt]).input_ids[0]) if prompt else [text.bos_token_id, text.eos_token_id]
    if len(ids) < 2:
        raise ValueError(f"the prompt {prompt!r} tokenises to {len(ids)} id(s); BLIP needs at least two")
    return [text.bos_token_id, *ids[1:-1]]


class OptionsError(ValueError):
    """Generation options this model cannot serve for any image (the whole request fails, not one image)."""


def check_fits(model, tokenizer, options: GenerationOptions) -> None:
    """OptionsError when the prompt and the new tokens every caption must have overrun the text decoder's positions
    (the demo captioner has 32): each image would fail the same way, the fast decoder's at its first step."""
    positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    if positions is None:
        return
    prompt = len(prompt_ids(model, tokenizer, options))  # BOS included, as it takes a position
    if prompt + options.min_new_tokens > positions:
        raise OptionsError(
            f"the prompt ({prompt - 1} tokens) plus min new tokens ({options.min_new_tokens}) do not fit this "
            f"captioner's {positions} text positions"
        )


def generate_decoded(model, tokenizer, pixel_values: torch.Tensor, options: GenerationOptions) -> list[Decoded]:
    """The plain HF generate path (as captioner/caption.py calls it), returning Decoded with the same score."""
    options.validate()
    batch = pixel_values.shape[0]
    kwargs = generate_kwargs(model, options)
    if options.prompt.strip():
        prompt = tokenizer([options.prompt.strip()], return_tensors="pt")
        kwargs["input_ids"] = prompt.input_ids.repeat(batch, 1).to(pixel_values.device)
        kwargs["attention_mask"] = prompt.attention_mask.repeat(batch, 1).to(pixel_values.device)
    with torch.inference_mode():
        out = model.generate(pixel_values=pixel_values, output_logits=True, return_dict_in_generate=True, **kwargs)
    prompt_len = len(prompt_ids(model, tokenizer, options))
    eos = model.config.text_config.sep_token_id
    generated = out.sequences[:, prompt_len:]
    if getattr(out, "beam_indices", None) is not None:  # beam search: the row of the beam that chose each token
        rows = out.beam_indices[:, : generated.shape[1]].clamp(min=0).long()
    else:
        rows = torch.arange(batch, device=generated.device)[:, None].expand_as(generated)
    token_logprobs = torch.stack([
        out.logits[step].float().log_softmax(dim=-1)[rows[:, step], generated[:, step]]  # raw logits, no processors
        for step in range(generated.shape[1])
    ], dim=1)  # fmt: skip
    results = []
    for ids, logprobs in zip(out.sequences.tolist(), token_logprobs.tolist()):
        length = _generated_length(ids[prompt_len:], eos)
        results.append(Decoded(ids[: prompt_len + length], sum(logprobs[:length]) / max(length, 1)))
    return results


def _generated_length(generated: list[int], eos: int) -> int:
    """How many ids generate made for this row: up to and including the first EOS (batch padding follows it)."""
    return generated.index(eos) + 1 if eos in generated else len(generated)
