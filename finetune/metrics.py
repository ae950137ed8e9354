"""Caption quality on a set of examples: exact match (what the gate decides on), smoothed BLEU-4 and CIDEr."""

from __future__ import annotations

import math
import re
from collections import Counter


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: how captions are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", (text or "").lower()).split())


def smoothed_bleu4(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 with add-one smoothing of the 2- to 4-gram precisions (Lin and Och 2004, "BLEU+1").

    Plain BLEU-4 of a three-word caption is 0 by construction (it has no 4-grams); with this smoothing an
    exact three-word match scores 1.0 and a caption with one wrong word of three about 0.5."""
    hypothesis, truth = prediction.split(), reference.split()
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, 5):
        made = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        wanted = Counter(tuple(truth[i : i + n]) for i in range(len(truth) - n + 1))
        matched, total = sum((made & wanted).values()), max(len(hypothesis) - n + 1, 0)
        smoothing = 0 if n == 1 else 1
        if matched + smoothing == 0:
            return 0.0
        log_precision += math.log((matched + smoothing) / (total + smoothing)) / 4
    brevity = min(0.0, 1 - len(truth) / len(hypothesis))
    return math.exp(log_precision + brevity)


def caption_scores(predictions: list[str], references: list[str]) -> dict:
    """exact_match, bleu4 (smoothed sentence BLEU-4, averaged) and cider of predictions against one reference each."""
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        return {"exact_match": None, "bleu4": None, "cider": None, "count": 0}
    said, truths = [normalise(p) for p in predictions], [normalise(r) for r in references]
    cider = None  # CIDEr weighs n-grams by how few references hold them: over one image every weight is 0
    if len(said) > 1:  # pycocoevalcap expects pre-tokenised text; an empty hypothesis is one placeholder token
        score, _ = Cider().compute_score({i: [t] for i, t in enumerate(truths)}, {i: [s or "<empty>"] for i, s in enumerate(said)})
        cider = round(float(score), 4)
    exact = sum(s == t for s, t in zip(said, truths)) / len(said)
    bleu = sum(smoothed_bleu4(s, t) for s, t in zip(said, truths)) / len(said)
    return {"exact_match": round(exact, 4), "bleu4": round(bleu, 4), "cider": cider, "count": len(said)}


def worse(after: dict, before: dict) -> bool:
    """Is `after` worse than `before`: lower exact match, or equal and lower CIDEr."""
    if not after.get("count"):
        return False
    return (after["exact_match"], after["cider"] or 0.0) < (before["exact_match"], (before["cider"] or 0.0) - 1e-9)
