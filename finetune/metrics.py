"""Caption quality on a set of examples: exact match, BLEU-4 and CIDEr (pycocoevalcap, the COCO caption metrics)."""

from __future__ import annotations

import re


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: how captions are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", (text or "").lower()).split())


def caption_scores(predictions: list[str], references: list[str]) -> dict:
    """exact_match, bleu4 and cider of predictions against one reference each."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        return {"exact_match": None, "bleu4": None, "cider": None, "count": 0}
    # pycocoevalcap expects pre-tokenised text; an empty hypothesis is scored as a single placeholder token.
    hypotheses = {i: [normalise(p) or "<empty>"] for i, p in enumerate(predictions)}
    truths = {i: [normalise(r)] for i, r in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(truths, hypotheses, verbose=0)
    cider, _ = Cider().compute_score(truths, hypotheses)
    exact = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references)) / len(predictions)
    return {"exact_match": round(exact, 4), "bleu4": round(float(bleu[3]), 4), "cider": round(float(cider), 4), "count": len(predictions)}


def worse(after: dict, before: dict) -> bool:
    """Is `after` worse than `before` on the held-out split: lower exact match, or equal and lower CIDEr."""
    if not after.get("count"):
        return False
    return (after["exact_match"], after["cider"]) < (before["exact_match"], before["cider"] - 1e-9)
