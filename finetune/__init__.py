"""`python -m finetune`: approved corrections -> LoRA on the live BLIP captioner -> an evaluated, versioned model."""

from .config import FinetuneConfig
from .errors import FinetuneError, Refused
from .run import main

__all__ = ["FinetuneConfig", "FinetuneError", "Refused", "main"]
