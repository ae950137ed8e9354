"""How captions are generated: the options every caption request carries (no torch, no model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GenerationOptions:
    """How captions are generated; validate() names any setting that is out of range."""

    num_beams: int = 3
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    prompt: str = ""

    def validate(self) -> "GenerationOptions":
        problems = []
        if not 1 <= self.num_beams <= 10:
            problems.append(f"beams must be 1 to 10, not {self.num_beams}")
        if not 1 <= self.max_new_tokens <= 256:
            problems.append(f"max new tokens must be 1 to 256, not {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(f"min new tokens must be 0 to max new tokens ({self.max_new_tokens}), not {self.min_new_tokens}")
        if not 1.0 <= self.repetition_penalty <= 3.0:
            problems.append(f"repetition penalty must be 1.0 to 3.0, not {self.repetition_penalty}")
        if len(self.prompt) > 200:
            problems.append(f"the prompt is {len(self.prompt)} characters, over the 200 limit")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def as_dict(self) -> dict:
        return asdict(self)
