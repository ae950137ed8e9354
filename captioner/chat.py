"""Q&A and multi-turn chat about one image: BLIP VQA, BLIP-2, chat-template vision-language models, and any
OpenAI-compatible server (`openai:MODEL`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from PIL import Image

from . import endpoint
from .models import ENDPOINT_FAMILY, LoadedModel
from .streaming import stream_generate

VQA, BLIP2 = "BlipForQuestionAnswering", "Blip2ForConditionalGeneration"
MAX_NEW_TOKENS = 64
ENDPOINT_QUESTION_CHARS = 8000  # a server's context is unknown here: a generous cap, said when applied
STOPPED = "The answer was stopped before it was complete."


class ChatError(ValueError):
    """A question that cannot be asked, or an answer that failed; the message says why."""


@dataclass(frozen=True)
class Turn:
    """One question and the answer it got, with the model that gave it."""

    question: str
    answer: str
    model: str = ""
    model_version: str = ""
    notices: tuple[str, ...] = ()


@dataclass
class AnswerStream:
    """An answer being generated: iterate it for text as it comes; notices say what had to be cut.

    Leaving early (close(), a `with` block, or stopping the iteration) stops the model at its next token
    and returns once the model is free for the next person.
    """

    chunks: Iterator[str]
    model: str
    model_version: str
    notices: list[str] = field(default_factory=list)
    text: str = ""
    stop: Callable[[], None] = field(default=lambda: None, repr=False)
    asked: str | None = None  # the question as the model got it, when it was cut to fit

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self.chunks:
                self.text += chunk
                yield chunk
        finally:  # explicit, not left to garbage collection: a closed generator may keep its frame alive
            self.close()

    def close(self) -> None:
        """Stop generating and wait until the model is free."""
        self.stop()

    def __enter__(self) -> "AnswerStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self) -> str:
        """Consume the whole stream and return the answer."""
        for _ in self:
            pass
        return self.text.strip()

    def turn(self, question: str, stopped: bool = False) -> "Turn":
        """The finished exchange, for the history (with the question as the model got it); stopped: the answer was
        left before it was complete (what had come is kept, and its notices say so)."""
        notices = (*self.notices, STOPPED) if stopped else tuple(self.notices)
        return Turn(self.asked or question, self.text.strip(), self.model, self.model_version, notices)


def answer(
    loaded: LoadedModel, image: Image.Image, history: list[Turn], question: str,
    max_new_tokens: int | None = None, sample: bool = False,
) -> AnswerStream:  # fmt: skip
    """Answer a question about an image, given the conversation so far; the text streams token by token.

    sample=True draws the answer (temperature 0.7) instead of taking the likeliest, as Regenerate does.
    max_new_tokens: None is MAX_NEW_TOKENS, or what the model's context holds if less (said only when asked for).
    """
    if loaded.family == ENDPOINT_FAMILY:
        return _endpoint_answer(loaded, image, history, question, max_new_tokens or MAX_NEW_TOKENS, sample)
    notices: list[str] = []
    max_new_tokens = _answer_room(loaded, max_new_tokens, notices)
    try:
        inputs, cut = build_inputs(loaded, image, history, question, max_new_tokens)
    except ChatError:
        raise
    except Exception as exc:  # the model's processor refused the image or the text: one message naming the model
        raise ChatError(f"{loaded.name} cannot read this image and question: {exc}") from exc
    notices += cut
    sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.9} if sample else {"do_sample": False}
    tokens = stream_generate(loaded, inputs, _tokenizer(loaded), max_new_tokens=max_new_tokens, **sampling)
    return AnswerStream(_as_chat_errors(tokens, loaded.name), loaded.name, loaded.version, notices, stop=tokens.close)


def same_again(loaded: LoadedModel) -> str:
    """What to say when Regenerate's new draw is the very answer it replaced."""
    if loaded.family == ENDPOINT_FAMILY:
        return ("The same answer came again: the model is sure of it, or its server does not sample "
                "(it gives its likeliest words whatever temperature is asked for).")  # fmt: skip
    return "The same answer came again: the model is sure of it (Regenerate draws among its likeliest words)."


def _as_chat_errors(chunks, name: str) -> Iterator[str]:
    try:
        yield from chunks
    except endpoint.EndpointError as exc:
        raise ChatError(str(exc)) from exc
    except Exception as exc:  # a model failure mid-answer: one message naming the model
        raise ChatError(f"{name} failed to answer: {exc}") from exc


def _endpoint_answer(loaded, image, history, question, max_new_tokens, sample) -> AnswerStream:
    """The whole conversation as messages, the image as a data URL in the first user turn; the answer streams.
    The server's context is unknown here: a conversation it refuses as too long is sent again without its older
    half, until it fits; a question alone too long for it, cut to half its length, until it fits (said in the
    turn's notices, and the history keeps the question as it was sent)."""
    whole = _check(image, question)
    notices = []
    if len(whole) > ENDPOINT_QUESTION_CHARS:
        notices.append(f"The question was cut to its first {ENDPOINT_QUESTION_CHARS} characters (it had {len(whole)}).")
    replies = []

    def chunks() -> Iterator[str]:
        kept, asked = list(history), whole[:ENDPOINT_QUESTION_CHARS]
        while True:
            messages = endpoint.conversation(image, [(t.question, t.answer) for t in kept], asked)
            replies.append(endpoint.stream_chat(loaded.model, messages, max_new_tokens, temperature=0.7 if sample else 0.0))
            said = False
            try:
                for chunk in replies[-1]:
                    said = True
                    yield chunk
                break
            except endpoint.EndpointError as exc:
                if said or not exc.too_long or not (kept or len(asked) > 1):
                    raise
                if kept:
                    kept = kept[len(kept) // 2 + 1 :]  # the older half goes (and at least one turn)
                else:  # the question alone is too long: its second half goes
                    asked = stream.asked = asked[: len(asked) // 2].rstrip() or asked[:1]
        if len(kept) < len(history):
            notices.append(f"The oldest {len(history) - len(kept)} turn(s) were left out to fit the model's context.")
        if len(asked) < min(len(whole), ENDPOINT_QUESTION_CHARS):
            notices[:] = [n for n in notices if not n.startswith("The question was cut")]
            notices.append(f"The question was cut to its first {len(asked)} characters to fit the model's context "
                           f"(it had {len(whole)}).")  # fmt: skip

    stream = AnswerStream(_as_chat_errors(chunks(), loaded.name), loaded.name, loaded.version, notices,
                          stop=lambda: replies[-1].close() if replies else None,
                          asked=whole[:ENDPOINT_QUESTION_CHARS])  # the history keeps what was sent  # fmt: skip
    return stream


def _tokenizer(loaded: LoadedModel):
    return getattr(loaded.processor, "tokenizer", loaded.processor)


def _check(image, question: str) -> str:
    question = (question or "").strip()
    if not question:
        raise ChatError("the question is empty")
    if image is None:
        raise ChatError("no image is chosen")
    return question


def build_inputs(loaded: LoadedModel, image: Image.Image, history: list[Turn], question: str, max_new_tokens: int):
    """The model inputs for a question in a conversation, as the model's family wants them; and the notices
    saying what had to be cut to fit."""
    question = _check(image, question)
    build = {VQA: _vqa_inputs, BLIP2: _blip2_inputs}.get(loaded.family, _chat_template_inputs)
    notices: list[str] = []
    return build(loaded, image, history, question, max_new_tokens, notices), notices


def _vqa_inputs(loaded, image, history, question, max_new_tokens, notices):
    """BLIP VQA sees only the image and this question: earlier turns are shown, not used."""
    limit = _text_limit(loaded, loaded.model.config.text_config.max_position_embeddings)
    question = _cut_question(loaded.processor.tokenizer, question, limit - 2, notices)
    return loaded.processor(images=image, text=question, return_tensors="pt")


def _blip2_inputs(loaded, image, history, question, max_new_tokens, notices):
    """BLIP-2 reads the whole conversation as `Question: ... Answer: ...` turns, the oldest dropped to fit."""
    tokenizer = loaded.processor.tokenizer
    limit = _text_limit(loaded, loaded.model.config.text_config.max_position_embeddings)
    room = limit - loaded.model.config.num_query_tokens - max_new_tokens - 2  # 2: the start token, a margin
    frame = len(tokenizer("Question:  Answer:", add_special_tokens=False).input_ids) + 2
    question = _cut_question(tokenizer, question, room - frame, notices)
    turns = [f"Question: {t.question} Answer: {t.answer}" for t in history] + [f"Question: {question} Answer:"]
    while len(turns) > 1 and len(tokenizer(" ".join(turns)).input_ids) > room:
        turns.pop(0)
    if len(turns) <= len(history):
        notices.append(f"The oldest {len(history) + 1 - len(turns)} turn(s) were left out to fit the model's context.")
    return loaded.processor(images=image, text=" ".join(turns), return_tensors="pt")


def _chat_template_inputs(loaded, image, history, question, max_new_tokens, notices):
    """A chat-template model gets the full history, the image in its first user turn."""
    processor = loaded.processor
    limit = _text_limit(loaded, getattr(_text_config(loaded.model.config), "max_position_embeddings", 4096))
    question = _cut_question(processor.tokenizer, question, limit // 2, notices)
    kept = list(history)
    while True:
        messages = []
        for turn in kept:
            messages.append({"role": "user", "content": [{"type": "text", "text": turn.question}]})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        messages[0]["content"].insert(0, {"type": "image"})
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[endpoint.within_aspect(image)], text=prompt, return_tensors="pt")
        if not kept or inputs["input_ids"].shape[1] + max_new_tokens <= limit:
            break
        kept.pop(0)
    if len(kept) < len(history):
        notices.append(f"The oldest {len(history) - len(kept)} turn(s) were left out to fit the model's context.")
    return inputs


def _answer_room(loaded: LoadedModel, max_new_tokens: int | None, notices: list[str]) -> int:
    """max_new_tokens (None: MAX_NEW_TOKENS), or less where the model's context could not hold that many beside a
    question (and, for BLIP-2, its query tokens); said when a number asked for is cut, not the default."""
    config = loaded.model.config
    if loaded.family == VQA:  # the answer decoder starts afresh: its positions hold the answer alone
        room = _text_limit(loaded, config.text_config.max_position_embeddings) - 2
    elif loaded.family == BLIP2:  # one context holds the query tokens, the question and the answer
        room = _text_limit(loaded, config.text_config.max_position_embeddings) - config.num_query_tokens - 24
    else:
        room = _text_limit(loaded, getattr(_text_config(config), "max_position_embeddings", 4096)) // 2
    room = max(1, room)
    if max_new_tokens is not None and max_new_tokens > room:
        notices.append(f"The answer is limited to {room} tokens: the model's context holds no more beside the question.")
    return min(max_new_tokens or MAX_NEW_TOKENS, room)


def _text_config(config):
    return getattr(config, "text_config", None) or config


def _text_limit(loaded, positions: int) -> int:
    model_max = getattr(loaded.processor.tokenizer, "model_max_length", positions) or positions
    return min(positions, model_max if model_max < 1_000_000 else positions)


def _cut_question(tokenizer, question: str, max_tokens: int, notices: list[str]) -> str:
    """Cut a question to what the model can read, and say so."""
    ids = tokenizer(question, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return question
    notices.append(f"The question was cut to its first {max_tokens} tokens (it had {len(ids)}): the model reads no more.")
    return tokenizer.decode(ids[: max(1, max_tokens)], skip_special_tokens=True)


def answer_batch(loaded: LoadedModel, images: list[Image.Image], questions: list[str], max_new_tokens: int = 10) -> list[str]:
    """Batched single-turn VQA answers (equal-length questions share a generate call), in input order."""
    import torch

    if loaded.family != VQA:
        raise ChatError(f"batched answers need a BLIP VQA model, not {loaded.family}")
    tokenizer = loaded.processor.tokenizer
    groups: dict[int, list[int]] = {}
    for i, question in enumerate(questions):
        groups.setdefault(len(tokenizer(question).input_ids), []).append(i)
    answers = [""] * len(questions)
    for indices in groups.values():
        for start in range(0, len(indices), 64):
            chunk = indices[start : start + 64]
            inputs = loaded.processor(images=[images[i] for i in chunk], text=[questions[i] for i in chunk], return_tensors="pt")
            inputs = inputs.to(loaded.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
            with loaded.lock, torch.inference_mode():
                out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens)
            for i, text in zip(chunk, tokenizer.batch_decode(out, skip_special_tokens=True)):
                answers[i] = text.strip()
    return answers
