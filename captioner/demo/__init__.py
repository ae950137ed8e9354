"""The embedded demo world (world, vocab, quality checks) and its small models' weights (models/, tokenizer/).

Training them lives outside the library: `python -m demo_training` (or `python -m captioner demo build`).
"""

from pathlib import Path

from ..models import DEMO_MODELS_DIR as MODELS_DIR
from ..models import demo_model_dir

TOKENIZER_DIR = Path(__file__).parent / "tokenizer"

__all__ = ["MODELS_DIR", "TOKENIZER_DIR", "demo_model_dir"]
