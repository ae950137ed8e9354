"""STAND-IN for captioner/engine/blip_decoder.py (branch `decoder`), with its exact interface, over plain HF generate.

When the decoder branch merges, the integrator deletes this file and changes the one import in model_step.py
(`from .hf_generate import ...` -> `from .blip_decoder import ...`). Nothing else imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import GenerationOptions


@dataclass(frozen=True)
class Decoded:
    """One image's generated token ids (prompt included) and the mean log-probability of the generated ones."""

    sequence: list[int]
    score: float


class BlipDecoder:
    """Stand-in for the fast decoder: the same calls, answered by generate_decoded."""

    def __init__(self, model, tokenizer, *, cuda_graphs: bool = True):
        self.model, self.tokenizer = model, tokenizer

    @staticmethod
    def unsupported(model, options: GenerationOptions) -> str | None:
        if type(model).__name__ != "BlipForConditionalGeneration":
            return f"{type(model).__name__} is not a BLIP captioner"
        if getattr(model, "is_quantized", False):
            return "the model is quantized"
        return None

    def decode(self, pixel_values, options: GenerationOptions) -> list[Decoded]:
        return generate_decoded(self.model, self.tokenizer, pixel_values, options)


def generate_decoded(model, tokenizer, pixel_values, options: GenerationOptions) -> list[Decoded]:
    """Plain HF generate for one batch of one options, with each sequence's mean raw token log-probability."""
    kwargs = dict(
        num_beams=options.num_beams, max_new_tokens=options.max_new_tokens, min_new_tokens=options.min_new_tokens,
        repetition_penalty=options.repetition_penalty, return_dict_in_generate=True, output_logits=True,
    )  # fmt: skip
    if getattr(model.generation_config, "min_length", 0):
        kwargs["min_length"] = 0  # a checkpoint's own minimum would override the one asked for
    prompt_length = 1  # BLIP starts every caption with its BOS token
    if options.prompt.strip():
        prompt = tokenizer([options.prompt.strip()], return_tensors="pt")
        kwargs["input_ids"] = prompt.input_ids.repeat(len(pixel_values), 1).to(pixel_values.device)
        kwargs["attention_mask"] = prompt.attention_mask.repeat(len(pixel_values), 1).to(pixel_values.device)
        prompt_length = prompt.input_ids.shape[1] - 1  # BLIP drops the prompt's trailing SEP
    out = model.generate(pixel_values=pixel_values, **kwargs)
    scores = _mean_logprobs(out, prompt_length, model.config.text_config.sep_token_id)
    return [Decoded(seq, score) for seq, score in zip(out.sequences.tolist(), scores.tolist())]


def _mean_logprobs(out, prompt_length: int, eos: int) -> torch.Tensor:
    generated = out.sequences[:, prompt_length:]
    batch, steps = generated.shape
    beams = getattr(out, "beam_indices", None)
    rows = beams[:, :steps].long() if beams is not None else torch.arange(batch, device=generated.device)[:, None].expand(batch, steps)
    picked = torch.stack(
        [torch.log_softmax(out.logits[t].float(), -1)[rows[:, t].clamp(min=0), generated[:, t]] for t in range(steps)], 1
    )
    is_eos = (generated == eos).int()
    valid = (rows >= 0) & ((is_eos.cumsum(1) - is_eos) == 0)  # up to and including the first EOS
    return (picked * valid).sum(1) / valid.sum(1).clamp(min=1)
