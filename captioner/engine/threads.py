"""Torch threads for the engine's own threads, without changing any other thread's count.

torch.set_num_threads sets the calling thread's count and also the default that every thread adopts at its first
parallel operation; a thread that has started keeps its own. So a thread sets its count, then the default is put
back from a short-lived helper thread: Streamlit sessions, chat and finetune's training keep theirs.
"""

from __future__ import annotations

import threading

import torch


def default_torch_threads() -> int:
    """The count a new thread starts with: torch's process-wide default."""
    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()), name="torch-threads-probe")
    probe.start()
    probe.join()
    return seen[0]


def use_torch_threads(count: int, default: int | None = None) -> None:
    """Run the calling thread's torch work on count threads, and on no other thread's behalf."""
    default = default or default_torch_threads()
    if torch.get_num_threads() == count:  # (this call also starts the thread's own setting)
        return
    torch.set_num_threads(count)
    if count != default:
        restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="torch-threads-default")
        restore.start()
        restore.join()


class WorkerThreads:
    """The engine worker's torch threads, chosen per batch. The cap: a share of the cores while callers decode
    images beside it (they need the rest), torch's default when nothing is decoding. Within the cap, one thread or
    all of it, whichever has run batches of that size faster here lately: under OpenMP's passive wait (runtime.py)
    a small batch loses more to waking the other threads at every operation than they give back (the demo
    captioner, one image on 2 cores: 21 ms on 2 threads, 6.5 ms on 1), while a big batch gains from them. Each
    count is tried a few times per batch size, then the other one every explore_every batches (the machine's load
    changes)."""

    TRIES = 3  # timed batches per count and size before the faster count is trusted (the first is warm-up)

    def __init__(self, beside_decoding: int | None, explore_every: int = 32):
        self.beside_decoding, self.explore_every = beside_decoding, explore_every
        self.default: int | None = None
        self.current: int | None = None
        self._times: dict[tuple[int, int], dict[int, _PerRow]] = {}  # (cap, rows bucket) -> count -> seconds per row
        self._calls: dict[tuple[int, int], int] = {}
        self._chosen: tuple[tuple[int, int], int, int] | None = None  # (key, count, rows) of the batch under way

    def choose(self, decoding: bool, rows: int) -> None:
        """Set the calling (worker) thread's count for a batch of `rows` sequences (images x beams)."""
        if self.beside_decoding is None:
            return
        if self.default is None:
            self.default = default_torch_threads()
        cap = min(self.beside_decoding, self.default) if decoding else self.default
        key = (cap, 1 << max(0, rows - 1).bit_length())
        wanted = self._pick(key, (cap, 1) if cap > 1 else (1,))
        self._chosen = (key, wanted, rows)
        if wanted != self.current:
            use_torch_threads(wanted, self.default)
            self.current = wanted

    def ran(self, seconds: float) -> None:
        """How long the batch chosen for last took (not called for a batch that failed)."""
        if self._chosen is None:
            return
        key, count, rows = self._chosen
        self._chosen = None
        self._times.setdefault(key, {}).setdefault(count, _PerRow()).add(seconds / max(1, rows))

    def _pick(self, key: tuple[int, int], counts: tuple[int, ...]) -> int:
        if len(counts) == 1:
            return counts[0]
        times = self._times.get(key, {})
        samples = {count: times[count].samples if count in times else 0 for count in counts}
        untried = [count for count in counts if samples[count] < self.TRIES]
        if untried:
            return min(untried, key=samples.get)
        calls = self._calls[key] = self._calls.get(key, 0) + 1
        ranked = sorted(counts, key=lambda count: times[count].seconds)
        return ranked[1] if calls % self.explore_every == 0 else ranked[0]


class _PerRow:
    """A moving average of seconds per row for one thread count and batch size; the first sample is warm-up."""

    def __init__(self) -> None:
        self.samples, self.seconds = 0, 0.0

    def add(self, seconds: float) -> None:
        self.samples += 1
        if self.samples == 2:
            self.seconds = seconds
        elif self.samples > 2:
            self.seconds = 0.7 * self.seconds + 0.3 * seconds
