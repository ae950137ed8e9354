"""`python -m finetune`: approved corrections -> LoRA on the live BLIP captioner -> an evaluated, versioned model."""

from .config import FinetuneConfig
from .run import FinetuneError, main

__all__ = ["FinetuneConfig", "FinetuneError", "main"]
