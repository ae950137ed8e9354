"""How far a `caption` run is, on stderr: one line redrawn in place on a terminal, plain lines every few seconds in a
log (--progress), nothing otherwise; stdout's rows never share its line."""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from . import common

TERMINAL_EVERY = 0.25  # seconds between redraws on a terminal: a few a second is readable and costs nothing
LOG_EVERY = 5.0  # seconds between plain lines where stderr is a file or a pipe: a day-long run's log stays short
SETTLED = 2.0  # seconds before a rate and time left are shown: the first batches' pace says little of the run's
ERASE = "\r\x1b[K"  # back to the line's start and clear it (every terminal since the VT100)


class Progress:
    """Files done of total, their rate and the time left; set() from any thread, shown at most every `every` s."""

    def __init__(self, total: int, stream=None, live: bool = False, every: float = LOG_EVERY, clock=time.monotonic):
        self.total, self.stream, self.live, self.every, self.clock = total, stream, live, every, clock
        self.parts: dict[object, int] = {}
        self.lock = threading.Lock()
        self.started = clock()
        self.shown_at: float | None = None
        self.drawn = False  # a live line is on the terminal now
        self.closed = False

    @classmethod
    def for_run(cls, total: int, asked: bool | None) -> "Progress":
        """Shown on a terminal unless --no-progress; elsewhere only with --progress; else a Progress that shows nothing."""
        stream = sys.stderr
        live = stream is not None and stream.isatty()
        if asked is False or stream is None or not (live or asked):
            return cls(total)
        return cls(total, stream, live, TERMINAL_EVERY if live else LOG_EVERY)

    def set(self, part: object, done: int) -> None:
        """Files of one part of the run (a chunk) done so far: shown if the last showing is old enough."""
        with self.lock:
            self.parts[part] = done
            now = self.clock()
            if self.stream is None or self.closed or (self.shown_at is not None and now - self.shown_at < self.every):
                return
            self.shown_at = now
            self._write(self._line(now))

    @contextlib.contextmanager
    def aside(self):
        """Other output meanwhile (a message, stdout's rows on the same terminal): the live line is cleared first and
        drawn again at the next set(). Elsewhere nothing waits: a plain line is written whole, in one write."""
        if not self.live:
            yield
            return
        with self.lock:
            if self.drawn:
                self._erase()
                self.shown_at = None
            yield

    def __enter__(self) -> "Progress":
        common.status_line = self
        return self

    def __exit__(self, kind, error, trace) -> None:
        with self.lock:
            common.status_line = None
            self.closed = True
            if self.stream is None:
                return
            if self.drawn:
                self._erase()
            if kind is None:  # the summary; a stopped run's own message follows instead
                elapsed = self.clock() - self.started
                self._write(f"{self.total} files in {_clock(elapsed)} ({_rate(self.total, elapsed)} files/s)", last=True)

    def _line(self, now: float) -> str:
        done, elapsed = min(sum(self.parts.values()), self.total), now - self.started
        line = f"{done}/{self.total} files ({done * 100 // max(self.total, 1)}%)"
        if done and elapsed >= SETTLED:
            line += f", {_rate(done, elapsed)} files/s, {_clock((self.total - done) * elapsed / done)} left"
        return line

    def _write(self, line: str, last: bool = False) -> None:
        try:
            if self.live and not last:
                self.stream.write(f"{ERASE}{common.PROG}: {line}")
                self.drawn = True
            else:
                self.stream.write(f"{common.PROG}: {line}\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: the run goes on without its progress
            self.stream = None

    def _erase(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(ERASE)
            self.stream.flush()
        self.drawn = False


def _rate(done: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    return f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
