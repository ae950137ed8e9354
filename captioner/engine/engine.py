"""CaptionEngine: one worker thread per loaded captioner batches every caller's requests dynamically."""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Callable, Iterator, Sequence

import torch

from ..images import ImageError, ImageInput
from ..options import GenerationOptions
from .batching import Request, RequestQueue
from .blip_decoder import OptionsError
from .limits import EngineLimits
from .model_step import ModelStep
from .device_pixels import DeviceImageStage
from .pixels import CpuImageStage, ImageStage, PreparedImage, pixel_spec
from .result import CaptionResult
from .threads import WorkerThreads

HEARTBEAT_S = 0.25
_RUNNING: "weakref.WeakSet[CaptionEngine]" = weakref.WeakSet()  # engines whose worker may still be running
# Their threads, held until they have ended: a worker lets go of its engine (which then leaves _RUNNING) a moment
# before its thread ends, so waiting for the engines alone can miss a thread still finishing.
_WORKERS: set[threading.Thread] = set()


class EngineClosed(RuntimeError):
    """The engine was retired (hot-swap or shutdown) before this job started; ask engine_for() again."""


class CaptionEngine:
    """Requests (one image's pixels + its options) go into a queue; one worker forms batches of equal options,
    runs the model and resolves each request's future with its own CaptionResult.

    Only the worker runs the model. A job (stream/caption) prepares its images in the stage's threads while the
    worker captions earlier ones. close() retires the engine: jobs under way finish here, new ones are refused
    (EngineClosed), then the worker stops. The engine keeps no reference to the LoadedModel it was built from.
    """

    def __init__(self, loaded, *, stage: ImageStage | None = None, limits: EngineLimits | None = None):
        self.model_name, self.model_version = loaded.name, loaded.version
        self.limits = limits or EngineLimits.for_model(loaded.model, loaded.device, loaded.dtype)
        self.stage = stage or _image_stage(loaded, self.limits)
        self._window = 2 * self.limits.max_batch  # a job's requests in flight: bounds the prepared pixels it holds
        self.step = ModelStep(loaded.model, loaded.processor.tokenizer)
        self._processor = loaded.processor
        self.batches_run = 0  # model calls made, and the images in them: for benches and tests
        self.images_run = 0
        self._queue = RequestQueue()
        self._state = threading.Lock()
        self._jobs = 0
        self._retired = False
        self._row_cap = self.limits.max_batch  # lowered after an out-of-memory error
        self._call_s = self.limits.wait_ms / 1000  # how long a model call takes lately (moving average)
        self._threads = WorkerThreads(self.limits.threads_beside_decoding)
        self._worker = threading.Thread(target=self._work, name=f"caption-engine[{self.model_version}]", daemon=True)
        self._worker.start()
        _RUNNING.add(self)
        _WORKERS.difference_update([worker for worker in list(_WORKERS) if not worker.is_alive()])
        _WORKERS.add(self._worker)

    # --- callers ---------------------------------------------------------------------------------------------
    def caption(self, inputs: Sequence[ImageInput], options: GenerationOptions = GenerationOptions(), **job) -> list[CaptionResult]:
        """Every input's result, in input order (see stream() for the keyword arguments)."""
        return list(self.stream(inputs, options, **job))

    def stream(
        self,
        inputs: Sequence[ImageInput],
        options: GenerationOptions = GenerationOptions(),
        *,
        thumbnails: bool = False,
        max_batch: int | None = None,
        timeout: float | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> Iterator[CaptionResult]:
        """Yield each input's result in input order, as soon as it and those before it are done.

        max_batch caps the images per model call for this job's requests; timeout (seconds, whole job) raises
        TimeoutError; heartbeat() is called at least every 0.25 s while waiting, so a caller can stop waiting by
        raising from it. However the caller stops (an exception, closing the generator, a timeout), its requests
        that have not started are dropped, never run. Raises EngineClosed, before yielding, on a retired engine.
        """
        options.validate()
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"batch size must be at least 1, not {max_batch}")
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._job(list(inputs), options, thumbnails, max_batch or self.limits.max_batch, deadline, heartbeat)

    def close(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Retire: refuse new jobs, finish the ones under way, then stop the worker. True once it has stopped."""
        with self._state:
            self._retired = True
            if self._jobs == 0:
                self._queue.close()
        if wait and threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        return not self._worker.is_alive()

    def serves(self, loaded) -> bool:
        """Whether this engine runs exactly this LoadedModel's current model, processor, name and version."""
        return (
            self.step.model is loaded.model and self._processor is loaded.processor
            and (self.model_name, self.model_version) == (loaded.name, loaded.version)
        )  # fmt: skip

    @property
    def closed(self) -> bool:
        return self._retired

    @property
    def running(self) -> bool:
        return self._worker.is_alive()

    def __enter__(self) -> "CaptionEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one caller's job -----------------------------------------------------------------------------------
    def _job(self, inputs, options, thumbnails, max_batch, deadline, heartbeat) -> Iterator[CaptionResult]:
        with self._state:
            if self._retired:
                raise EngineClosed(f"the engine of {self.model_name} ({self.model_version}) was retired")
            self._jobs += 1
        self._queue.expect(len(inputs))
        unannounced, pending = len(inputs), deque()
        prepared = self.stage.prepare(inputs, thumbnails)
        beat = _Heartbeat(heartbeat, deadline)
        try:
            for item in prepared:
                unannounced -= 1
                pending.append(self._submit(item, options, max_batch))
                while pending and (pending[0].done() or len(pending) >= self._window):
                    result = beat.wait(pending[0])
                    pending.popleft()
                    yield result
                beat.check()
            while pending:
                result = beat.wait(pending[0])  # still in pending while waited on: cancelled if the caller leaves
                pending.popleft()
                yield result
        finally:
            prepared.close()
            for future in pending:
                future.cancel()  # abandoned: dropped when the worker reaches it, unless already running
            self._queue.expect(-unannounced)
            self._leave()

    def _submit(self, item: PreparedImage | ImageError, options: GenerationOptions, max_batch: int) -> Future:
        if isinstance(item, ImageError):
            self._queue.expect(-1)
            future: Future = Future()
            future.set_result(CaptionResult(item.name, error=item.reason, model=self.model_name, model_version=self.model_version))
            return future
        return self._queue.put(item, options, max_batch).future

    def _leave(self) -> None:
        with self._state:
            self._jobs -= 1
            if self._retired and self._jobs == 0:
                self._queue.close()

    # --- the worker -----------------------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while (batch := self._queue.take(self._rows_for, self._company_wait())) is not None:
                try:
                    self._run(batch)
                except BaseException as exc:  # a bug here must fail this batch, never the worker
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
        finally:
            self.stage.close()

    def _company_wait(self) -> float:
        return min(self.limits.max_wait_ms / 1000, max(self.limits.wait_ms / 1000, self._call_s))

    def _rows_for(self, options: GenerationOptions) -> int:
        return min(self._row_cap, self.limits.rows_for(options.num_beams))

    def _run(self, batch: list[Request]) -> None:
        """Caption one batch; if the model fails on it, retry one by one (halves after running out of memory),
        so only the image that makes it fail gets an error."""
        if not batch:
            return
        try:
            results = self._caption(batch)
        except OptionsError as exc:  # every image would fail alike: no retries one by one
            for request in batch:
                request.future.set_result(self._failed(request, exc, str(exc)))
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_result(self._failed(batch[0], exc))
            elif _out_of_memory(exc):
                self._row_cap = max(1, len(batch) // 2)
                self._run(batch[: len(batch) // 2])
                self._run(batch[len(batch) // 2 :])
            else:
                for request in batch:
                    self._run([request])
            return
        for request, result in zip(batch, results):
            request.future.set_result(result)

    def _caption(self, batch: list[Request]) -> list[CaptionResult]:
        started = time.monotonic()
        self._threads.choose(decoding=self._queue.expecting(), rows=len(batch) * batch[0].options.num_beams)
        pixel_values = self.stage.collate([request.prepared.pixels for request in batch])
        captions, scores = self.step.run(pixel_values, batch[0].options)
        seconds = time.monotonic() - started
        self._threads.ran(seconds)
        self._call_s = 0.7 * self._call_s + 0.3 * seconds
        self.batches_run += 1
        self.images_run += len(batch)
        return [
            CaptionResult(
                r.prepared.source.name, caption=caption, score=score, model=self.model_name, model_version=self.model_version,
                source=r.prepared.source, extension=r.prepared.extension, thumbnail=r.prepared.thumbnail,
            )  # fmt: skip
            for r, caption, score in zip(batch, captions, scores)
        ]

    def _failed(self, request: Request, exc: Exception, error: str | None = None) -> CaptionResult:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        error = error or f"the captioner failed on this image ({type(exc).__name__}: {reason})"
        return CaptionResult(
            request.prepared.source.name, error=error,
            model=self.model_name, model_version=self.model_version, source=request.prepared.source,
        )  # fmt: skip


class _Heartbeat:
    """Waits on one future at a time, calling the caller's heartbeat and enforcing its deadline meanwhile."""

    def __init__(self, heartbeat: Callable[[], None] | None, deadline: float | None):
        self.heartbeat, self.deadline, self.last = heartbeat, deadline, time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise TimeoutError("captioning did not finish within its timeout")
        if self.heartbeat and now - self.last >= HEARTBEAT_S:
            self.last = now
            self.heartbeat()

    def wait(self, future: Future) -> CaptionResult:
        while True:
            left = HEARTBEAT_S if self.deadline is None else min(HEARTBEAT_S, self.deadline - time.monotonic())
            try:
                return future.result(timeout=max(0.0, left))
            except concurrent.futures.TimeoutError:
                self.check()


def close_all(timeout: float | None = 30) -> None:
    """Close every engine and wait for its worker: at interpreter exit, a worker must not outlive Python."""
    for engine in list(_RUNNING):
        engine.close(wait=False)
    for worker in list(_WORKERS):
        if worker is not threading.current_thread():
            worker.join(timeout)
        if not worker.is_alive():
            _WORKERS.discard(worker)


atexit.register(close_all)


def _image_stage(loaded, limits: EngineLimits) -> ImageStage:
    """On CUDA, the device stage (nvjpeg) when gpu_images reproduces the processor (BLIP's does); else the CPU stage."""
    spec = pixel_spec(loaded.processor.image_processor)
    workers = _decode_workers(loaded.device, limits)
    if torch.device(loaded.device).type == "cuda" and spec is not None:
        return DeviceImageStage(spec, loaded.device, loaded.dtype, chunk=min(limits.max_batch, 128), workers=workers)
    return CpuImageStage(loaded.processor, loaded.device, loaded.dtype, workers=workers, lookahead=2 * limits.max_batch)


def _decode_workers(device, limits: EngineLimits) -> int:
    """Decoding threads: on the CPU, the cores the model's threads leave; beside a GPU, up to 8."""
    cores = os.cpu_count() or 2
    if torch.device(device).type == "cuda":
        return min(8, cores)
    return max(1, min(8, cores - (limits.threads_beside_decoding or torch.get_num_threads())))


def _out_of_memory(exc: Exception) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
