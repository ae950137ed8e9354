"""What the caption page keeps of its results between reruns: bounded, one thumbnail per image."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter

from captioner.caption import CaptionResult
from captioner.images import ImageInput

# Results kept per image for other settings or model versions, so switching back is instant; the rest is dropped,
# since every result holds a thumbnail and a session may hold hundreds of uploads.
KEPT_PER_IMAGE = 3


def image_key(item: ImageInput) -> tuple[str, str]:
    return item.sha256, item.name


def card_key(result: CaptionResult) -> str:
    """The key of a result's widgets on the caption page: its image, name and caption."""
    return hashlib.sha1(f"{result.source.sha256}|{result.name}|{result.caption}".encode()).hexdigest()[:16]


def picture_key(result: CaptionResult) -> str:
    """The key of what was saved for a result: its picture and caption. Copies of one picture under other names share
    it: the log holds the picture once, and Looks right on a copy would log the caption just corrected over the fix."""
    return hashlib.sha1(f"{result.source.sha256}|{result.caption}".encode()).hexdigest()[:16]


def remember(captions: dict, thumbnails: dict, key, item: ImageInput, result: CaptionResult) -> CaptionResult:
    """Store a fresh result under key; its image's first thumbnail is kept and shared by all its results."""
    if result.thumbnail is not None:
        thumbnails.setdefault(image_key(item), result.thumbnail)
    result = dataclasses.replace(result, thumbnail=thumbnails.get(image_key(item)))
    captions[key] = result
    return result


def recall(captions: dict, key) -> CaptionResult:
    """A stored result, marked as the latest used (what forget() keeps longest)."""
    captions[key] = captions.pop(key)
    return captions[key]


def forget(captions: dict, thumbnails: dict, inputs: list[ImageInput]) -> None:
    """Drop results and thumbnails of images no longer on the page, and all but the KEPT_PER_IMAGE latest used
    results of each image. Keys start with image_key()."""
    present = {image_key(item) for item in inputs}
    kept: Counter = Counter()
    for key in reversed(list(captions)):
        image = tuple(key[:2])
        kept[image] += 1
        if image not in present or kept[image] > KEPT_PER_IMAGE:
            del captions[key]
    for image in [image for image in thumbnails if image not in present]:
        del thumbnails[image]


def progress_text(outcomes: Counter, total: int) -> str:
    """The caption page's progress, the images captioned and those that failed counted apart, so that they add up to
    the cards and errors shown. outcomes counts outcome() of the results so far."""
    said = [f"{outcomes['captioned']} of {total} captioned"]
    if outcomes["unreadable"]:
        said.append(f"{outcomes['unreadable']} could not be read")
    if outcomes["failed"]:
        said.append(f"{outcomes['failed']} failed")
    return ", ".join(said)


def outcome(result: CaptionResult) -> str:
    """captioned; unreadable (the file is not a usable image: no source was prepared); or failed (the model failed)."""
    if result.ok:
        return "captioned"
    return "unreadable" if result.source is None else "failed"


def needs_thumbnails(thumbnails: dict, todo: list[ImageInput]) -> bool:
    """Whether the engine should make thumbnails for these: some image has none yet."""
    return any(image_key(item) not in thumbnails for item in todo)
