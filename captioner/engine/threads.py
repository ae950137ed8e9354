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
    """The engine worker's torch threads: a share of the cores while callers decode images beside it (they need
    the rest), torch's default when nothing is decoding (the batch may use every core)."""

    def __init__(self, beside_decoding: int | None):
        self.beside_decoding = beside_decoding
        self.default: int | None = None
        self.current: int | None = None

    def choose(self, decoding: bool) -> None:
        if self.beside_decoding is None:
            return
        if self.default is None:
            self.default = default_torch_threads()
        wanted = min(self.beside_decoding, self.default) if decoding else self.default
        if wanted != self.current:
            use_torch_threads(wanted, self.default)
            self.current = wanted
