"""Rewriting captions in a style: the captioner's caption (and, for `detailed`, a few answers from the Q&A
model) sent to a chat model on an OpenAI-compatible server, a local transformers chat model, or the demo one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from . import endpoint
from .chat import VQA, AnswerStream, ChatError, answer, answer_batch
from .models import ENDPOINT_FAMILY, LoadedModel
from .streaming import stream_generate
from .styles import DEMO_DETAIL_QUESTIONS, DETAIL_QUESTIONS, Style, StyleError, rewrite_messages

MAX_STYLED_TOKENS = 96
SERVER_IN_FLIGHT = 8  # requests sent to a server at once (it batches them): captions to rewrite, questions to answer


def restyle(rewriter: LoadedModel, caption: str, style: Style, facts: list[tuple[str, str]] = ()) -> AnswerStream:
    """The caption in a style, streamed as the rewriter writes it (plain: the caption itself)."""
    if style.plain:
        return AnswerStream(iter([caption]), "", "")
    if not (caption or "").strip():  # a rewriter given nothing would make a caption up
        raise StyleError("there is no caption to restyle")
    messages = rewrite_messages(caption, style, facts)
    if rewriter.family == ENDPOINT_FAMILY:
        system, user = messages[0]["content"], messages[1]["content"]
        reply = endpoint.stream_text(rewriter.model, system, user, MAX_STYLED_TOKENS)
        return AnswerStream(_styled(reply), rewriter.name, rewriter.version, stop=reply.close)
    tokenizer = rewriter.processor
    inputs = _chat_prompt(tokenizer, messages, return_dict=True, return_tensors="pt")
    tokens = stream_generate(rewriter, inputs, tokenizer, max_new_tokens=MAX_STYLED_TOKENS, do_sample=False)
    return AnswerStream(_styled(tokens), rewriter.name, rewriter.version, stop=tokens.close)


def _chat_prompt(tokenizer, messages: list[dict], **kwargs):
    """The rewriter's request through its chat template; one that refuses a system turn (Gemma's, Mistral's) gets the
    instruction at the top of the user's turn instead."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
    except TemplateError:
        system, user = messages
        folded = [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}]
    try:
        return tokenizer.apply_chat_template(folded, add_generation_prompt=True, **kwargs)
    except TemplateError as exc:
        raise StyleError(f"the caption rewriter's chat template refused the request: {exc}") from None


def _styled(chunks):
    try:
        yield from chunks
    except endpoint.EndpointError as exc:
        raise StyleError(str(exc)) from exc
    except Exception as exc:  # a model failure mid-way: one message, the plain caption still stands
        raise StyleError(f"the caption rewriter failed: {exc}") from exc


def restyle_batch(rewriter: LoadedModel, captions: list[str], style: Style, facts: list[list] | None = None) -> list[str]:
    """Many captions in one style: a local model rewrites them in batches of 32, a server 8 at a time."""
    facts = facts or [[] for _ in captions]
    if style.plain:
        return list(captions)
    said = [i for i, caption in enumerate(captions) if (caption or "").strip()]  # nothing to restyle stays nothing:
    if len(said) < len(captions):  # a rewriter given no caption would make one up
        styled = restyle_batch(rewriter, [captions[i] for i in said], style, [facts[i] for i in said]) if said else []
        out = [""] * len(captions)
        for i, text in zip(said, styled):
            out[i] = text
        return out
    if rewriter.family == ENDPOINT_FAMILY:
        with ThreadPoolExecutor(SERVER_IN_FLIGHT) as pool:
            return list(pool.map(lambda pair: restyle(rewriter, pair[0], style, pair[1]).read(), zip(captions, facts)))
    requests = [rewrite_messages(caption, style, known) for caption, known in zip(captions, facts)]
    return [text for start in range(0, len(requests), 32) for text in _generate_batch(rewriter, requests[start : start + 32])]


def _generate_batch(rewriter: LoadedModel, conversations: list[list[dict]]) -> list[str]:
    """Greedy replies to several conversations in one generate call, prompts padded on the left."""
    import torch

    tokenizer = rewriter.processor
    prompts = [_chat_prompt(tokenizer, messages, tokenize=True, return_dict=True)["input_ids"] for messages in conversations]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=rewriter.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=rewriter.device)
    with rewriter.lock, torch.inference_mode():
        out = rewriter.model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=MAX_STYLED_TOKENS,
                                      do_sample=False, pad_token_id=pad)  # fmt: skip
    return [text.strip() for text in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]


def detail_questions(qa: LoadedModel) -> tuple[str, ...]:
    """The questions `detailed` asks: the demo Q&A model knows only its world's questions."""
    return DEMO_DETAIL_QUESTIONS if qa.spec.source == "demo" else DETAIL_QUESTIONS


def detail_facts(qa: LoadedModel, images: list[Image.Image]) -> list[list[tuple[str, str]]]:
    """A few answers about each image from the Q&A model (batched for BLIP VQA), for the `detailed` style."""
    questions = detail_questions(qa)
    try:
        if qa.family == VQA:
            said = answer_batch(qa, [image for image in images for _ in questions], list(questions) * len(images))
            return [list(zip(questions, said[i * len(questions) : (i + 1) * len(questions)])) for i in range(len(images))]
        asks = [(image, q) for image in images for q in questions]
        if qa.family == ENDPOINT_FAMILY:  # a server answers several at once, as restyle_batch sends them
            with ThreadPoolExecutor(SERVER_IN_FLIGHT) as pool:
                said = list(pool.map(lambda pair: answer(qa, pair[0], [], pair[1], max_new_tokens=24).read(), asks))
        else:
            said = [answer(qa, image, [], q, max_new_tokens=24).read() for image, q in asks]
        return [list(zip(questions, said[i * len(questions) : (i + 1) * len(questions)])) for i in range(len(images))]
    except ChatError as exc:
        raise StyleError(f"the Q&A model could not answer: {exc}") from exc
