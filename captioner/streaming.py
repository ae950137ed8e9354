"""Streaming generate: one long-lived worker thread per model, token ids handed over, text decoded by the reader.

Why this shape (issue 12, section 1): the generating thread does nothing per token but hand over the new
token ids (no decoding, no device tensor made, no lock taken), so it runs at plain `generate`'s pace; the
reader decodes only the last few tokens each time (bounded work, not the whole answer again) and, when it
falls behind, decodes everything that arrived in one go. A worker thread per model (not a new thread per
answer) keeps answers from every session in one FIFO queue, one `generate` at a time on the model.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from typing import Any, Callable, Iterator

from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

_END = object()


class IncrementalDecoder:
    """The text of a growing list of token ids, a piece at a time; each step decodes a few tokens, not all.

    Two windows that start at the same token are decoded (the tokens already shown, and those plus the new
    ones); the difference is the new text. A piece ending in half a UTF-8 character waits for the rest.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # first token of both windows
        self.shown = 0  # tokens already turned into text

    def feed(self, ids: list[int]) -> str:
        """Add new token ids; return the text they complete (may be empty while a character is half done)."""
        self.ids.extend(ids)
        return self._step(final=False)

    def flush(self) -> str:
        """Whatever is still held back, at the end of the answer."""
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.start : self.shown], skip_special_tokens=True)
        now = decode(self.ids[self.start :], skip_special_tokens=True)
        if len(now) <= len(before) or (now.endswith("\ufffd") and not final):
            return ""
        self.start, self.shown = self.shown, len(self.ids)
        return now[len(before) :]


class _TokenHandOff(BaseStreamer):
    """The streamer generate calls: skips the prompt, queues each step's new token ids, nothing else."""

    def __init__(self, hand_over: Callable[[Any], None]):
        self.hand_over = hand_over
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate's first put is the prompt
            self.prompt_seen = True
            return
        self.hand_over((value[0] if value.dim() > 1 else value).tolist())

    def end(self) -> None:
        pass  # the worker says "done" itself, after the model is free again


class _StopWhenCancelled(StoppingCriteria):
    """Stops generate at the next token once the reader has gone; returns one of two prebuilt tensors."""

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled
        self.answers = None

    def __call__(self, input_ids, scores, **kwargs):
        if self.answers is None:  # made once, on the model's device, so no step allocates anything
            import torch

            rows, device = input_ids.shape[0], input_ids.device
            self.answers = (torch.zeros(rows, dtype=torch.bool, device=device), torch.ones(rows, dtype=torch.bool, device=device))
        return self.answers[self.cancelled.is_set()]


class TokenStream:
    """One generate call, streamed: iterate for text as it comes; close() stops it and waits until the model
    is free. Generation starts when iteration starts, on the model's worker, after the requests ahead of it."""

    def __init__(self, loaded, inputs: dict, generate_kwargs: dict, tokenizer):
        self.loaded, self.inputs, self.generate_kwargs = loaded, inputs, generate_kwargs
        self.decoder = IncrementalDecoder(tokenizer)
        self.cancelled = threading.Event()
        self.started = threading.Event()  # the worker has taken this request up
        self.done = threading.Event()  # set once generate has returned and the model lock is released
        self.submitted = False
        self.failure: BaseException | None = None
        self._ids: queue.SimpleQueue = queue.SimpleQueue()

    def __iter__(self) -> Iterator[str]:
        if not self.submitted:
            self.submitted = True
            worker_for(self.loaded).submit(self)
        while True:
            batch, finished = [], False
            item = self._ids.get()
            while True:  # everything that arrived while the reader was busy, decoded in one go
                if item is _END:
                    finished = True
                    break
                batch.extend(item)
                try:
                    item = self._ids.get_nowait()
                except queue.Empty:
                    break
            text = self.decoder.feed(batch) if batch else ""
            if finished:
                text += self.decoder.flush()
            if text:
                yield text
            if finished:
                break
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Stop generating (at the next token) and return once the model is free for the next request; a request
        still waiting its turn is dropped at once (the worker skips it)."""
        self.cancelled.set()  # before looking at `started`: run() looks at them the other way round
        if self.started.is_set():
            self.done.wait()

    def run(self) -> None:
        """Called on the worker thread: generate under the model lock, handing token ids to the reader."""
        import torch

        self.started.set()
        try:
            if self.cancelled.is_set():
                return
            kwargs = dict(self.generate_kwargs)
            criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
            criteria.append(_StopWhenCancelled(self.cancelled))
            with self.loaded.lock, torch.inference_mode():
                self.loaded.model.generate(
                    **self.inputs, streamer=_TokenHandOff(self._ids.put), stopping_criteria=criteria, **kwargs
                )
        except BaseException as exc:  # handed to the reader, never lost in the thread
            self.failure = exc
        finally:
            self.inputs = None  # the worker keeps no tensors alive between requests
            self._ids.put(_END)
            self.done.set()


class GenerationWorker:
    """A daemon thread running one model's generate calls in arrival order."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"generate:{name}", daemon=True)
        self._thread.start()

    def submit(self, job: TokenStream) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job.run()
            del job  # hold no model between requests: a swapped-out model must be free to go


_WORKERS: dict[int, GenerationWorker] = {}
_WORKERS_LOCK = threading.Lock()


def worker_for(loaded) -> GenerationWorker:
    """The worker of a loaded model, started on first use and stopped when the model is garbage-collected."""
    key = id(loaded)
    with _WORKERS_LOCK:
        worker = _WORKERS.get(key)
        if worker is None:
            worker = _WORKERS[key] = GenerationWorker(getattr(loaded, "name", "model"))
            weakref.finalize(loaded, _retire, key)
        return worker


def _retire(key: int) -> None:
    with _WORKERS_LOCK:
        worker = _WORKERS.pop(key, None)
    if worker is not None:
        worker.stop()


def stop_all(timeout: float = 30) -> None:
    """At interpreter exit: every worker finishes its request and ends first. A worker still letting go of its
    tensors while Python shuts down aborts the process ('terminate called without an active exception')."""
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
        _WORKERS.clear()
    for worker in workers:
        worker.stop()
    for worker in workers:
        if worker._thread is not threading.current_thread():
            worker._thread.join(timeout)


atexit.register(stop_all)


def stream_generate(loaded, inputs: dict, tokenizer, **generate_kwargs) -> TokenStream:
    """Stream generate(**inputs, **generate_kwargs) on a loaded model (moved to its device and dtype)."""
    inputs = inputs.to(loaded.device) if hasattr(inputs, "to") else inputs
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    return TokenStream(loaded, inputs, generate_kwargs, tokenizer)
