"""What one caption request gives back."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from ..images import ImageInput


@dataclass(frozen=True)
class CaptionResult:
    """The caption of one input, or why it has none, with the model that made it; in the order the inputs came."""

    name: str
    caption: str | None = None
    error: str | None = None
    model: str = ""
    model_version: str = ""
    source: ImageInput | None = field(default=None, repr=False)
    extension: str = ""
    thumbnail: Image.Image | None = field(default=None, repr=False)
    score: float | None = None  # mean log-probability of the caption's tokens: the model's confidence (0 is certain)

    @property
    def ok(self) -> bool:
        return self.error is None
