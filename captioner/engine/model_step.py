"""The model step the engine's worker runs on one batch: the fast BLIP decoder where it serves, else HF generate."""

from __future__ import annotations

import logging

import torch

from ..options import GenerationOptions
from .blip_decoder import BlipDecoder, Decoded, check_fits, generate_decoded

log = logging.getLogger(__name__)


class ModelStep:
    """Pixels of one batch (one options) -> (captions, scores). Only the engine's worker calls it."""

    def __init__(self, model, tokenizer, *, cuda_graphs: bool = True):
        self.model, self.tokenizer, self.cuda_graphs = model, tokenizer, cuda_graphs
        self._fast: BlipDecoder | None = None
        self._fast_broken: str | None = None  # why the fast decoder could not be built for this model
        self.last_path = ""  # "fast" or "generate: <reason>", for benches and tests

    @property
    def stats(self) -> dict:
        """The fast decoder's counters (graphs captured and replayed, eager steps...); empty before it ran."""
        return self._fast.stats if self._fast is not None else {}

    def run(self, pixel_values: torch.Tensor, options: GenerationOptions) -> tuple[list[str], list[float]]:
        check_fits(self.model, self.tokenizer, options)  # OptionsError: before any work, for the whole batch
        decoded = self._decode(pixel_values, options)
        if len(decoded) != len(pixel_values):
            raise RuntimeError(f"the decoder returned {len(decoded)} captions for {len(pixel_values)} images")
        texts = self.tokenizer.batch_decode([d.sequence for d in decoded], skip_special_tokens=True)
        return [text.strip() for text in texts], [float(d.score) for d in decoded]

    def _decode(self, pixel_values: torch.Tensor, options: GenerationOptions) -> list[Decoded]:
        reason = self._fast_broken or BlipDecoder.unsupported(self.model, options)
        if reason is None and self.model.training:  # finetune may hand over a model still in training mode
            reason = "the model is in training mode"
        if reason is None and self._fast is None:
            try:
                self._fast = BlipDecoder(self.model, self.tokenizer, cuda_graphs=self.cuda_graphs)
            except Exception as exc:  # an unusual checkpoint: serve it with generate rather than not at all
                reason = self._fast_broken = f"the fast decoder cannot be built ({type(exc).__name__}: {exc})"
                log.warning("%s; captioning with transformers generate", reason)
        self.last_path = "fast" if reason is None else f"generate: {reason}"
        with torch.inference_mode():
            if reason is None:
                return self._fast.decode(pixel_values, options)
            return generate_decoded(self.model, self.tokenizer, pixel_values, options)
