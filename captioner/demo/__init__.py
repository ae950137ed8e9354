"""The embedded demo models: small models this project trains on its synthetic demo world."""

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
TOKENIZER_DIR = Path(__file__).parent / "tokenizer"


def demo_model_dir(kind: str) -> Path:
    """The folder of the embedded demo model of a kind (caption, qa, search)."""
    return MODELS_DIR / kind
