"""Caption styles: what each style asks of the rewriting chat model, and the request it gets (no model here:
the CLI parses styles without importing torch; restyle.py runs the rewriter)."""

from __future__ import annotations

from dataclasses import dataclass

PLAIN, CUSTOM, DETAILED = "plain", "custom", "detailed"
INSTRUCTIONS = {
    DETAILED: "Rewrite the image caption as a detailed description of the image in two or three sentences, "
    "using the facts given. Say nothing that the caption and the facts do not say.",
    "alt-text": "Rewrite the image caption as alt text for a screen reader: one short, plain sentence that "
    "does not start with 'image of'.",
    "social": "Rewrite the image caption as a short, upbeat social media post with two or three hashtags.",
    "poetic": "Rewrite the image caption as a short poem of two lines.",
}
STYLES = (PLAIN, *INSTRUCTIONS)
MAX_INSTRUCTION_CHARS = 500
# What `detailed` asks the Q&A model: general questions, or the demo world's own for the demo Q&A model.
DETAIL_QUESTIONS = ("what is in the picture?", "what colors stand out?", "where is this?", "what is happening?")
DEMO_DETAIL_QUESTIONS = ("what color is the shape?", "what shape is it?")


class StyleError(ValueError):
    """A style that cannot be used; the message says why."""


@dataclass(frozen=True)
class Style:
    """A caption style: a built-in one by name, or `custom` with the user's own instruction."""

    name: str
    instruction: str = ""

    @property
    def plain(self) -> bool:
        return self.name == PLAIN

    @property
    def label(self) -> str:
        """What the feedback log keeps as the prompt of a styled caption's correction."""
        return self.instruction if self.name == CUSTOM else self.name


def style_for(name: str | None = None, instruction: str | None = None) -> Style:
    """A built-in style by name, or a custom one from an instruction (not both)."""
    if instruction is not None:
        if name not in (None, CUSTOM):
            raise StyleError("give a style name or your own instruction, not both")
        text = " ".join(instruction.split())
        if not text:
            raise StyleError("the style instruction is empty")
        if len(text) > MAX_INSTRUCTION_CHARS:
            raise StyleError(f"the style instruction is {len(text)} characters, over the {MAX_INSTRUCTION_CHARS} limit")
        return Style(CUSTOM, text)
    name = name or PLAIN
    if name not in STYLES:
        raise StyleError(f"unknown style {name!r}; choose one of {', '.join(STYLES)}, or give your own instruction")
    return Style(name, INSTRUCTIONS.get(name, ""))


def style_notice(rewriter, style: Style) -> str | None:
    """What a user should know before trusting this rewriter with this style."""
    if style.name == CUSTOM and rewriter.spec.source == "demo":
        return ("The demo rewriter knows only the built-in styles and the demo world's captions; "
                "for your own instruction set CAPTIONER_STYLE_MODEL to a chat model.")  # fmt: skip
    return None


def rewrite_messages(caption: str, style: Style, facts: list[tuple[str, str]] = ()) -> list[dict]:
    """The rewriter's request: the style's instruction, then the caption and any facts about the image."""
    user = f"Caption: {caption.strip()}"
    if facts:
        user += "\nFacts:\n" + "\n".join(f"- {question} {answer_}" for question, answer_ in facts)
    return [{"role": "system", "content": style.instruction}, {"role": "user", "content": user}]
