"""A job's progress as people watch it: tqdm's bar on a terminal, a log line every few seconds elsewhere.

:class:`ProgressState` holds the facts (events done of the total, when each recent one was done) and answers the
questions, given ``now``: the rate over the last :data:`RATE_WINDOW` seconds (not the average since the start,
which stays low long after a stall and then lags behind), the ETA at that rate, and how long no event has come.
:class:`ProgressReport` shows it: a tqdm bar (its own smoothed rate and ETA) with a note when nothing has come for
``stall_after`` seconds; log lines of the process pass above the bar (tqdm's logging redirect), and so do the
lines of child processes handed to :meth:`ProgressReport.write` (``ssnet-local``'s broker and workers).  On a
non-terminal it logs one line every ``log_interval`` seconds, stalls included.  A daemon thread ticks once a
second to redraw the note and write the log lines even while no event comes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, TextIO

log = logging.getLogger(__name__)

MODES = ("auto", "bar", "log", "none")
LOG_INTERVAL = 10.0  # seconds between progress log lines when not on a terminal
STALL_AFTER = 10.0  # seconds without an event before the bar says so
RATE_WINDOW = 60.0  # seconds of recent events the rate is taken over
TICK = 1.0  # seconds between redraws of the note and checks for the log line


def clock_text(seconds: Optional[float]) -> str:
    """``H:MM:SS`` (``--:--`` when unknown)."""
    if seconds is None:
        return "--:--"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ProgressState:
    """Events done of ``total``, and when: the rate over the last ``window`` seconds, the ETA, the stalls."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.done = 0
        self.total = 0
        self.started: Optional[float] = None
        self.last: Optional[float] = None  # when the last event was done (or the job started)
        self._recent: deque[tuple[float, int]] = deque()  # (time, events done) within the window

    def update(self, done: int, total: int, now: float) -> None:
        """``done`` of ``total`` events at ``now`` (the first call starts the clock; ``done`` may start above 0,
        e.g. entries resumed from checkpoints, which the rate leaves out)."""
        if self.started is None:
            self.started = now
            self._recent.append((now, done))
        elif done > self.done:
            self._recent.append((now, done))
        self.last = now if self.last is None or done > self.done else self.last
        self.done, self.total = done, total
        self._forget(now)

    def _forget(self, now: float) -> None:
        while len(self._recent) > 1 and self._recent[1][0] <= now - self.window:
            self._recent.popleft()  # keep the last sample at or before the window's start

    def rate(self, now: float) -> float:
        """Events per second over the last ``window`` seconds (0 before the second sample)."""
        self._forget(now)
        if not self._recent:
            return 0.0
        since, before = self._recent[0]  # the events done at the window's start, or at the first sample after it
        since = max(since, now - self.window)
        elapsed = now - since
        return (self.done - before) / elapsed if elapsed > 0 and self.done > before else 0.0

    def eta(self, now: float) -> Optional[float]:
        """Seconds left at the recent rate; None while it is unknown."""
        rate = self.rate(now)
        return (self.total - self.done) / rate if rate > 0 else (0.0 if self.done >= self.total else None)

    def stalled_for(self, now: float) -> float:
        """Seconds since the last event (or the start)."""
        return 0.0 if self.last is None or self.done >= self.total else now - self.last

    def line(self, now: float, stall_after: float = STALL_AFTER) -> str:
        stalled = self.stalled_for(now)
        note = f"; no event for {stalled:.0f} s" if stalled >= stall_after else ""
        return (f"{self.done}/{self.total} events, {self.rate(now):.2f} events/s over the last "
                f"{self.window:.0f} s, ETA {clock_text(self.eta(now))}{note}")


class ProgressReport:
    """Shows a job's progress (see the module's text); ``mode``: auto (a bar on a terminal, else log lines), bar,
    log or none.  Use as a context manager around the job; call it as ``report(done, total, seconds)``."""

    def __init__(self, mode: str, stream: TextIO = sys.stderr, *, log_interval: float = LOG_INTERVAL,
                 stall_after: float = STALL_AFTER, clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "auto":
            mode = "bar" if stream.isatty() else "log"
        self.mode = mode
        self.stream = stream
        self.log_interval = log_interval
        self.stall_after = stall_after
        self.clock = clock
        self.state = ProgressState()
        self._lock = threading.Lock()
        self._bar: Optional[Any] = None
        self._next_log = 0.0
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self._redirect: Optional[contextlib.ExitStack] = None

    def __enter__(self) -> ProgressReport:
        if self.mode == "none":
            return self
        if self.mode == "bar":
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm())  # log lines pass above the bar
        self._ticker = threading.Thread(target=self._tick, name="ssnet-progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self.mode == "log" and self.state.started is not None:
                log.info("%s", self.state.line(self.clock(), self.stall_after))
        if self._redirect is not None:
            self._redirect.close()

    def __call__(self, done: int, total: int, seconds: float = 0.0) -> None:
        """``done`` of ``total`` events (``seconds``: the job's time so far, unused: the state keeps its clock)."""
        if self.mode == "none":
            return
        with self._lock:
            now = self.clock()
            first = self.state.started is None
            self.state.update(done, total, now)
            if self.mode == "bar":
                self._draw(first)
            elif first:
                self._next_log = now + self.log_interval

    def write(self, line: str) -> None:
        """A line of text (a child process's log line) printed above the bar, or as it is."""
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(line.rstrip("\n"), file=self.stream)
        else:
            self.stream.write(line if line.endswith("\n") else line + "\n")
            self.stream.flush()

    def _draw(self, first: bool) -> None:
        if first or self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.state.total, initial=self.state.done, unit="event", file=self.stream,
                             dynamic_ncols=True, smoothing=0.1)
        self._bar.update(self.state.done - self._bar.n)
        self._note()

    def _note(self) -> None:
        assert self._bar is not None
        stalled = self.state.stalled_for(self.clock())
        self._bar.set_postfix_str(f"no event for {stalled:.0f} s" if stalled >= self.stall_after else "",
                                  refresh=False)
        self._bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                if self.state.started is None:
                    continue
                if self.mode == "bar" and self._bar is not None:
                    self._note()
                elif self.mode == "log" and self.clock() >= self._next_log:
                    self._next_log = self.clock() + self.log_interval
                    log.info("%s", self.state.line(self.clock(), self.stall_after))


__all__ = ["LOG_INTERVAL", "MODES", "STALL_AFTER", "ProgressReport", "ProgressState", "clock_text"]
