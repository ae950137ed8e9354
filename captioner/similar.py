"""Fix similar: once a caption is corrected, the look-alikes whose captions make the same mistake, each with the
fix applied, from this session's images and the gallery (CLIP-nearest first); and confirming one as a feedback row
linked to the original correction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Sequence

import numpy as np

from .caption import caption_images
from .embed import embed_images
from .engine import CaptionResult
from .feedback import FeedbackLog, FeedbackRow
from .gallery_scan import gallery_file
from .images import ImageError, ImageInput, read_file
from .index_store import GalleryIndex
from .models import LoadedModel
from .options import GenerationOptions

# Cosine of CLIP image vectors: a look-alike sits above it. A wrong caption shared by a picture that does not look
# alike is often right there (a real triangle called "a triangle"), so nothing below it is proposed.
MIN_SIMILARITY = 0.75
MAX_PROPOSALS = 8
GALLERY_POOL = 16  # the nearest gallery images captioned to look for the same mistake (captioning costs)


@dataclass(frozen=True)
class Candidate:
    """A look-alike of a corrected image whose caption makes the same mistake, with the fix applied to it."""

    result: CaptionResult  # its current caption, bytes, extension and the model that captioned it
    similarity: float  # cosine of its CLIP vector with the corrected image's
    proposed: str  # its caption with the correction applied
    origin: str  # "session" (uploaded or made here) or "gallery" (its path relative to the gallery is the name)

    @property
    def name(self) -> str:
        return self.result.name


def mistake_edits(model_output: str, correction: str) -> list[tuple[str, str]]:
    """What a correction changed, word by word: (wrong words, right words) pairs, each widened by the unchanged word
    either side when there is one, so that "a red circle" -> "a red star" is the mistake "red circle" -> "red star"
    (every circle is not a star)."""
    wrong, right = model_output.split(), correction.split()
    if not wrong or wrong == right:
        return []
    spans: list[tuple[int, int, int, int]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, wrong, right, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        lo, jlo = (i1 - 1, j1 - 1) if i1 > 0 and j1 > 0 else (i1, j1)
        hi, jhi = (i2 + 1, j2 + 1) if i2 < len(wrong) and j2 < len(right) else (i2, j2)
        if spans and lo < spans[-1][1]:  # shares a neighbouring word with the edit before: one edit
            lo, _, jlo, _ = spans.pop()
        spans.append((lo, hi, jlo, jhi))
    return [(" ".join(wrong[lo:hi]), " ".join(right[jlo:jhi])) for lo, hi, jlo, jhi in spans]


def propose(caption: str, edits: list[tuple[str, str]]) -> str | None:
    """The caption with every edit applied, when it makes every one of the mistakes (whole words, any case, any
    spacing); None when it does not, or when the fix would change nothing."""
    if not edits or not caption:
        return None
    patterns = [r"(?<!\w)" + r"\s+".join(map(re.escape, wrong.split())) + r"(?!\w)" for wrong, _ in edits]
    if not all(re.search(p, caption, re.IGNORECASE) for p in patterns):
        return None
    either = re.compile("|".join(f"({p})" for p in patterns), re.IGNORECASE)
    fixed = either.sub(lambda m: edits[m.lastindex - 1][1], caption)  # one pass: a fix is never fixed again
    return fixed if fixed.casefold() != caption.casefold() else None


def find_similar(
    embedder: LoadedModel,
    captioner: LoadedModel,
    corrected: ImageInput,
    model_output: str,
    correction: str,
    session: Sequence[CaptionResult] = (),
    index: GalleryIndex | None = None,
    options: GenerationOptions = GenerationOptions(),
    *,
    follow_links: bool = False,
    min_similarity: float = MIN_SIMILARITY,
    limit: int = MAX_PROPOSALS,
    gallery_pool: int = GALLERY_POOL,
    vectors: dict | None = None,
) -> list[Candidate]:
    """The images nearest to the corrected one (this session's captioned images, then the gallery's nearest,
    captioned now with the same options) whose captions make the same mistake, most similar first.

    vectors: a dict kept between calls (e.g. per session) so that an image is embedded once per search model."""
    edits = mistake_edits(model_output, correction)
    if not edits or limit < 1:
        return []
    vectors = {} if vectors is None else vectors
    mine = [r for r in session if r.ok and r.caption and r.source is not None and r.source.sha256 != corrected.sha256]
    mine = list({r.source.sha256: r for r in mine}.values())
    _embed(embedder, [corrected, *(r.source for r in mine)], vectors)
    query = vectors.get(_key(embedder, corrected.sha256))
    if query is None:
        return []  # the corrected image does not decode for the search model: nothing can be near it
    found: list[Candidate] = []
    for result in mine:
        vector = vectors.get(_key(embedder, result.source.sha256))
        similarity = float(query @ vector) if vector is not None else -1.0
        fixed = propose(result.caption, edits) if similarity >= min_similarity else None
        if fixed:
            found.append(Candidate(result, similarity, fixed, "session"))
    if index is not None and len(index):
        seen = {corrected.sha256, *(r.source.sha256 for r in mine)}
        found += _gallery_candidates(captioner, index, query, edits, seen, options, follow_links, min_similarity, gallery_pool)
    found.sort(key=lambda c: -c.similarity)
    return found[:limit]


def _gallery_candidates(captioner, index, query, edits, seen, options, follow_links, min_similarity, pool) -> list[Candidate]:
    near = [h for h in index.search(query, pool) if h.score >= min_similarity and h.sha256 not in seen]
    inputs, scores = [], []
    for hit in near:
        relative = Path(hit.path).relative_to(index.gallery).as_posix()
        try:
            item = read_file(gallery_file(index.gallery, relative, follow_links), name=relative)
        except ImageError:
            continue  # gone, unreadable or now a link out of the gallery since it was indexed: not offered
        if item.sha256 not in seen:
            seen.add(item.sha256)
            inputs.append(item)
            scores.append(hit.score)
    found = []
    for result, score in zip(caption_images(captioner, inputs, options, thumbnails=True) if inputs else [], scores):
        fixed = propose(result.caption, edits) if result.ok else None
        if fixed:
            found.append(Candidate(result, score, fixed, "gallery"))
    return found


def _key(embedder: LoadedModel, sha256: str) -> tuple:
    return embedder.name, embedder.version, sha256


def _embed(embedder: LoadedModel, items: list[ImageInput], vectors: dict) -> None:
    todo = list({item.sha256: item for item in items if _key(embedder, item.sha256) not in vectors}.values())
    if not todo:
        return
    embedded = embed_images(embedder, todo)
    for row, position in enumerate(embedded.ok):
        vectors[_key(embedder, todo[position].sha256)] = np.asarray(embedded.vectors[row], dtype=np.float32)


def confirm(log: FeedbackLog, candidate: Candidate, original: FeedbackRow, options: GenerationOptions) -> tuple[FeedbackRow, bool]:
    """Log the proposed fix of one look-alike as its own correction linked to the original (its image stored in
    data/images like any upload's); (row, False) when that event is already logged, so a second press adds nothing."""
    result = candidate.result
    return log.record(
        result.source.data, result.extension, task="caption", model_output=result.caption,
        correction=candidate.proposed, prompt=options.prompt, model=result.model, model_version=result.model_version,
        settings=options.as_dict(), score=result.score, linked_to=original.id,
    )  # fmt: skip
