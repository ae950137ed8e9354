"""`python -m demo_training` (or `python -m captioner demo build`): retrain every embedded demo model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from captioner.demo import MODELS_DIR

from .captioner import CaptionRecipe, build_captioner
from .clip import ClipRecipe, build_clip_model
from .qa import QARecipe, build_qa_model
from .rewriter import RewriterRecipe, build_rewriter


def build_all(out_dir: Path | None = None, seed: int = 0, steps: int | None = None, log: Callable = print) -> dict:
    """Retrain every demo model into out_dir (default: the package's own); returns their metrics."""
    out_dir = Path(out_dir) if out_dir else MODELS_DIR
    recipes = [CaptionRecipe(), QARecipe(), ClipRecipe(), RewriterRecipe()]
    if steps is not None:
        recipes = [replace(recipe, steps=steps) for recipe in recipes]
    caption_recipe, qa_recipe, clip_recipe, rewriter_recipe = recipes
    metrics = {"caption": build_captioner(out_dir / "caption", caption_recipe, seed, log)}
    metrics["qa"] = build_qa_model(out_dir / "qa", out_dir / "caption", qa_recipe, seed, log)
    metrics["search"] = build_clip_model(out_dir / "search", clip_recipe, seed, log)
    metrics["style"] = build_rewriter(out_dir / "style", out_dir / "caption", out_dir / "qa", rewriter_recipe, seed, log)
    return metrics
