"""The engine's queue: requests grouped by their options; the worker takes one batch of one group at a time."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from ..options import GenerationOptions
from .pixels import PreparedImage


@dataclass(eq=False)
class Request:
    """One image's prepared pixels and its options; its future resolves to that image's CaptionResult."""

    prepared: PreparedImage
    options: GenerationOptions
    max_batch: int  # the most rows the caller allows in one model call
    order: int
    future: Future = field(default_factory=Future)


class RequestQueue:
    """Thread-safe. Oldest group first; a batch never mixes options; an abandoned (cancelled) request is dropped."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._groups: dict[GenerationOptions, deque[Request]] = {}
        self._expected = 0  # requests callers are still decoding: worth a few ms of waiting for
        self._order = itertools.count()
        self._closed = False

    def put(self, prepared: PreparedImage, options: GenerationOptions, max_batch: int) -> Request:
        request = Request(prepared, options, max_batch, next(self._order))
        with self._changed:
            self._groups.setdefault(options, deque()).append(request)
            self._expected = max(0, self._expected - 1)
            self._changed.notify_all()
        return request

    def expect(self, count: int) -> None:
        """Announce (count > 0) or withdraw (count < 0) requests a caller is about to put."""
        with self._changed:
            self._expected = max(0, self._expected + count)
            self._changed.notify_all()

    def close(self) -> None:
        """No more requests will come: take() returns what is queued, then None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def expecting(self) -> bool:
        """Whether callers are still decoding requests they announced."""
        return self._expected > 0

    def pending(self) -> int:
        with self._changed:
            return sum(len(group) for group in self._groups.values())

    def take(self, rows_for: Callable[[GenerationOptions], int], wait_s: float) -> list[Request] | None:
        """The next batch: requests of the oldest waiting options, up to rows_for(options) and every request's
        own max_batch; waits up to wait_s for company while callers are still preparing requests. Blocks while
        the queue is empty; None once it is closed and empty. May return [] when every candidate was abandoned."""
        with self._changed:
            while not self._groups:
                if self._closed:
                    return None
                self._changed.wait()
            options, group = min(self._groups.items(), key=lambda entry: entry[1][0].order)
            cap = min(rows_for(options), group[0].max_batch)
            deadline = time.monotonic() + wait_s
            while len(group) < cap and self._expected > 0 and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            batch: list[Request] = []
            while group and len(batch) < min(cap, group[0].max_batch):
                request = group.popleft()
                if request.future.set_running_or_notify_cancel():  # False: its caller stopped waiting
                    cap = min(cap, request.max_batch)
                    batch.append(request)
            if not group:
                del self._groups[options]
            return batch
