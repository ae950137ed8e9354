"""Any OpenAI-compatible `/v1/chat/completions` server (vLLM, `transformers serve`, TGI, Ollama, hosted APIs),
through the official `openai` client: connect and check once, then stream answers."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import threading
from typing import Iterator
from urllib.parse import urlparse

from PIL import Image

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PREFIX = "openai:"
IMAGE_SIDE = 768  # the longest side sent to a server: plenty for a vision-language model, a small request
MAX_ASPECT = 50  # long side to short side, at most, of an image a vision-language model is given (see within_aspect)
# What a sampled request (Regenerate) adds: `transformers serve` takes do_sample from the model's generation config
# and only ever turns it off (temperature 0), so a model whose config does not sample answers a temperature of 0.7
# with its likeliest words, the same answer every time. Other servers ignore the field, or refuse it once (below).
SAMPLE_FIELDS = {"generation_config": json.dumps({"do_sample": True})}
# The answer's length cap goes as max_tokens, which every compatible server reads: Ollama and llama-cpp-python take
# max_completion_tokens without a word and ignore it (an answer would run on to the end of the context). OpenAI's
# reasoning models refuse max_tokens and want max_completion_tokens: a server that says so gets that from then on.
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens")


class EndpointError(RuntimeError):
    """A server that cannot be used: down, refusing the key, too slow, or without the model; says which."""

    def __init__(self, message: str, status_code: int | None = None, detail: str = ""):
        super().__init__(message)
        self.status_code, self.detail = status_code, detail

    @property
    def too_long(self) -> bool:
        """The server refused the request for its length (the conversation outgrew the model's context)."""
        return self.status_code in (400, 413, 422) and bool(re.search(r"token|context|length|too long", self.detail, re.I))


class Endpoint:
    """A checked connection to one model on one server, shared by every session (the client is thread-safe).

    After any failed request the pooled connections are dropped: some servers (transformers serve among
    them) reset a kept-alive connection after an error, which would turn the next request into a bogus
    "connection reset".
    """

    def __init__(self, model: str, base_url: str, api_key: str | None, timeout: float):
        self.model, self.base_url, self.api_key, self.timeout = model, base_url.rstrip("/"), api_key, timeout
        self._client = None
        self._lock = threading.Lock()
        self.takes_sample_fields = True  # until the server refuses SAMPLE_FIELDS (OpenAI's API refuses what it lacks)
        self.length_field = LENGTH_FIELDS[0]  # until the server refuses it

    @property
    def host(self) -> str:
        return host(self.base_url)

    def client(self):
        """The openai client, made on first use and after a failure."""
        import openai

        with self._lock:
            if self._client is None:
                self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "none",
                                             timeout=self.timeout, max_retries=0)  # fmt: skip
            return self._client

    def create(self, messages: list[dict], max_tokens: int, sample_fields: bool = False, **options):
        """client.chat.completions.create for this model, the answer's length cap under the name this server reads,
        with SAMPLE_FIELDS if asked for: a server that refuses max_tokens by name gets max_completion_tokens, one that
        refuses SAMPLE_FIELDS (a 400 or 422 not about length) the request without them; from then on, once the
        request so changed is answered. A refusal of any other kind is an EndpointError."""
        import openai

        extra = SAMPLE_FIELDS if sample_fields and self.takes_sample_fields else None
        length_field, dropped = self.length_field, False
        while True:
            try:
                reply = self.client().chat.completions.create(model=self.model, messages=messages, extra_body=extra,
                                                              **{length_field: max_tokens}, **options)  # fmt: skip
                break
            except openai.APIStatusError as exc:
                refused = self.failed(exc)  # fresh connections: some servers reset theirs after an error
                if length_field == LENGTH_FIELDS[0] and _refuses_field(refused, LENGTH_FIELDS[0]):
                    length_field = LENGTH_FIELDS[1]
                elif extra and exc.status_code in (400, 422) and not refused.too_long:
                    extra, dropped = None, True
                else:
                    raise refused from None
        self.length_field = length_field
        if dropped:
            self.takes_sample_fields = False
        return reply

    def failed(self, exc: Exception) -> EndpointError:
        """The error to raise for a failed request; fresh connections for the next one."""
        import openai

        with self._lock:
            self._client = None  # requests in flight keep the old client alive until they finish
        if isinstance(exc, openai.APIStatusError):
            return EndpointError(describe(exc, self), exc.status_code, _server_message(exc))
        return EndpointError(describe(exc, self))


def _refuses_field(error: EndpointError, name: str) -> bool:
    """The server refused the request for a field it does not take (OpenAI: "Unsupported parameter: 'max_tokens' is
    not supported with this model. Use 'max_completion_tokens' instead.")."""
    return (error.status_code in (400, 422) and name in error.detail
            and bool(re.search(r"unsupported|not supported|unrecognized|unknown|extra|not permitted", error.detail, re.I)))  # fmt: skip


def host(base_url: str | None) -> str:
    """host:port of a server URL (OpenAI's API when none is given): what a reply's model version names."""
    base_url = base_url or DEFAULT_BASE_URL
    return urlparse(base_url).netloc or base_url


def connect(model: str, base_url: str | None, api_key: str | None, timeout: float) -> Endpoint:
    """A connection to model at base_url (default: OpenAI's API), checked now: the server answers, accepts the
    key and has the model. A server that lists its models is asked for the list; else one 1-token reply."""
    import openai
    from openai.types.chat import ChatCompletion

    if not model.strip():
        raise EndpointError("the model name after 'openai:' is empty")
    found = Endpoint(model, base_url or DEFAULT_BASE_URL, api_key, timeout)
    try:
        if model in {entry.id for entry in found.client().models.list()}:
            return found
    except openai.APIStatusError as exc:
        error = found.failed(exc)
        if exc.status_code in (401, 403):
            raise error from None
        # no model list here (transformers serve lists only its hub cache): the probe below decides
    except openai.OpenAIError as exc:
        raise found.failed(exc) from None
    except Exception:  # a 200 that is no model list (a web page at that address, or a server's own format): probe
        pass
    try:
        reply = found.create([{"role": "user", "content": "Hi"}], 1)
    except EndpointError:
        raise
    except openai.OpenAIError as exc:
        raise found.failed(exc) from None
    except Exception:  # the client could not read the 200 it got as a reply
        reply = None
    if not isinstance(reply, ChatCompletion):  # e.g. the HTML of a web app: every answer would come back empty
        raise EndpointError(f"the chat server at {found.base_url} did not answer as an OpenAI-compatible server does "
                            "(no chat completion came back): is OPENAI_BASE_URL right? It usually ends in /v1")  # fmt: skip
    return found


def describe(exc: Exception, endpoint: Endpoint) -> str:
    """One plain sentence for what went wrong talking to the server."""
    import openai

    where = f"the chat server at {endpoint.base_url}"
    if isinstance(exc, openai.APITimeoutError):
        return f"{where} did not answer within {endpoint.timeout:g} s (CAPTIONER_OPENAI_TIMEOUT)"
    if isinstance(exc, openai.APIConnectionError):
        cause = f" ({exc.__cause__})" if exc.__cause__ and str(exc.__cause__) else ""
        return f"{where} cannot be reached{cause}: is it running, and is OPENAI_BASE_URL right?"
    if isinstance(exc, openai.APIStatusError):
        detail = _server_message(exc)
        if exc.status_code in (401, 403):
            return f"{where} refused the API key (HTTP {exc.status_code}: {detail}); set OPENAI_API_KEY"
        if exc.status_code == 404:
            return f"{where} has no model {endpoint.model!r} (HTTP 404: {detail})"
        return f"{where} could not answer with model {endpoint.model!r} (HTTP {exc.status_code}: {detail})"
    return f"{where} broke off: {type(exc).__name__}: {exc}"


def _server_message(exc) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or body.get("detail") or exc.message or "no detail").strip().splitlines()[0][:300]


def within_aspect(image: Image.Image, limit: float = MAX_ASPECT) -> Image.Image:
    """The image, or, when one side is more than `limit` times the other, the image centred on a white canvas that
    long side by 1/limit of it (Qwen2-VL's processor refuses 1:200 and beyond: a thin strip, a 1-pixel line)."""
    width, height = image.size
    if max(width, height) <= limit * min(width, height):
        return image
    side = math.ceil(max(width, height) / limit)
    size = (width, side) if width > height else (side, height)
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(image.convert("RGB"), ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def data_url(image: Image.Image) -> str:
    """The image as a JPEG data URL, its longest side at most IMAGE_SIDE, its sides within MAX_ASPECT of each other."""
    image = image.convert("RGB")
    if max(image.size) > IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    image = within_aspect(image)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def conversation(image: Image.Image, turns: list[tuple[str, str]], question: str) -> list[dict]:
    """The chat so far as OpenAI messages; the image goes with the first question."""
    questions = [q for q, _ in turns] + [question]
    answers = [a for _, a in turns]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                             {"type": "text", "text": questions[0]}]}]  # fmt: skip
    for said, asked in zip(answers, questions[1:]):
        messages += [{"role": "assistant", "content": said}, {"role": "user", "content": asked}]
    return messages


class Reply:
    """A streamed reply: iterate for text; close() ends the request (the server stops generating)."""

    def __init__(self, endpoint: Endpoint, messages: list[dict], max_tokens: int, temperature: float):
        self.endpoint, self.messages = endpoint, messages
        self.max_tokens, self.options = max_tokens, {"temperature": temperature}
        if temperature > 0:
            self.options["top_p"] = 0.9
        self.response = None
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        try:
            if self.closed:
                return
            self.response = self._create()
            finished = None
            for event in self.response:
                for choice in event.choices or []:
                    if choice.delta and choice.delta.content:
                        yield choice.delta.content
                    finished = choice.finish_reason or finished
            if finished is None and not self.closed:  # every compatible server ends an answer with a finish_reason
                raise EndpointError(f"the chat server at {self.endpoint.base_url} ended the answer before it was "
                                    "complete (no finish reason came; a dropped connection, or a reply it could not parse)")  # fmt: skip
        except EndpointError:
            raise
        except Exception as exc:  # openai's errors, and the HTTP library's own when a stream breaks mid-way
            raise self.endpoint.failed(exc) from None
        finally:
            self.close()

    def _create(self):
        """The streamed request; a sampled one (Regenerate) with SAMPLE_FIELDS, while the server takes them."""
        sampled = self.options["temperature"] > 0
        return self.endpoint.create(self.messages, self.max_tokens, sample_fields=sampled, stream=True, **self.options)

    def close(self) -> None:
        self.closed = True
        if self.response is not None:
            self.response.close()


def stream_chat(endpoint: Endpoint, messages: list[dict], max_tokens: int, temperature: float = 0.0) -> Reply:
    """Ask the server for a streamed reply to the messages; nothing is sent until it is iterated."""
    return Reply(endpoint, messages, max_tokens, temperature)


def stream_text(endpoint: Endpoint, system: str, user: str, max_tokens: int, temperature: float = 0.0) -> Reply:
    """A streamed reply to one instruction (system) and one text (user): the caption rewriter's request."""
    return Reply(endpoint, [{"role": "system", "content": system}, {"role": "user", "content": user}], max_tokens, temperature)
