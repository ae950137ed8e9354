"""How big the engine's batches may get: rows, rows x beams (what bounds memory), and the wait for company."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GPU_MEMORY_SHARE = 0.4  # of the free memory at start: the chat and search models share the GPU
KV_TOKENS = 64  # text positions a caption's key/value cache is sized for (prompt + new tokens)


@dataclass(frozen=True)
class EngineLimits:
    """max_batch: images per model call; max_sequences: images x beams per call (what bounds memory).
    While callers are still decoding requests, a batch waits for them as long as a model call lasts (it would cost
    a call to run them separately), at least wait_ms and at most max_wait_ms. threads_beside_decoding: the
    worker's torch threads while callers decode images (None: torch's default always; see threads.py)."""

    max_batch: int = 64
    max_sequences: int = 192
    wait_ms: float = 2.0
    max_wait_ms: float = 250.0
    threads_beside_decoding: int | None = None

    def rows_for(self, num_beams: int) -> int:
        return max(1, min(self.max_batch, self.max_sequences // max(1, num_beams)))

    @classmethod
    def for_model(cls, model, device, dtype) -> "EngineLimits":
        """On a GPU, as many sequences as a share of the free memory holds. On the CPU, batches of up to 64 images,
        and while images decode beside the model it runs on half the cores: on every core, its threads and the
        decoding threads would fight over the same cores (spinning torch threads then cost up to 10x)."""
        if torch.device(device).type != "cuda":
            return cls(threads_beside_decoding=max(1, (os.cpu_count() or 2) // 2))
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        try:
            sequences = int(free * GPU_MEMORY_SHARE // sequence_bytes(model.config, dtype))
        except (AttributeError, TypeError, ZeroDivisionError):  # a config without BLIP's fields: a cautious budget
            sequences = 256
        return cls(max_batch=256, max_sequences=max(8, min(4096, sequences)), wait_ms=1.0, max_wait_ms=50.0)


def sequence_bytes(config, dtype) -> int:
    """A rough upper bound of one sequence's memory: its image's activations plus its text key/value caches
    (self-attention over KV_TOKENS, cross-attention over the image tokens), in every text layer."""
    vision, text = config.vision_config, config.text_config
    image_tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    activations = image_tokens * (vision.hidden_size + vision.intermediate_size) * element * 2
    caches = text.num_hidden_layers * 2 * (image_tokens + KV_TOKENS) * text.hidden_size * element
    return activations + caches
