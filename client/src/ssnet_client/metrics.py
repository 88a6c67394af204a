"""Prometheus metrics of a LArCV1 job's progress (``ssnet_client_*``), read from the job at scrape time.

``ssnet_client_events_done_total``    events of the job done: written, or found in checkpoint chunks (``--resume``)
``ssnet_client_events_skipped_total`` events left out after failing for good (``--on-error skip``)
``ssnet_client_job_events``           events in the job's entry range
``ssnet_client_events_per_second``    events done or skipped per second over the last :data:`RATE_WINDOW` seconds

The rate is the one the progress display shows (:class:`~ssnet_client.progress.ProgressState`, events over the
last :data:`~ssnet_client.progress.RATE_WINDOW` seconds), fed here at each scrape from the job's start and the
events written so far: the job's loop records nothing for it.  The job's ``/readyz``: :func:`job_readiness`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ssnet_client.progress import RATE_WINDOW, ProgressState

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ssnet_client.jobs import JobStats
    from ssnet_client.larcv1_client import SimpleLArCV1Client

class JobProgressCollector:
    """Register on a ``CollectorRegistry``; ``stats`` returns the running job's :class:`JobStats` (None before it
    starts), ``total`` the events in its range."""

    def __init__(self, stats: Callable[[], Optional[JobStats]], total: int, *,
                 clock: Callable[[], float] = time.monotonic, window: float = RATE_WINDOW) -> None:
        self.stats = stats
        self.total = total
        self.clock = clock  # JobStats' clock
        self.window = window
        self.created = time.time()
        self._state = ProgressState(window)  # events done at each scrape, from the job's start
        self._lock = threading.Lock()  # scrapes may come from several server threads at once

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        written = 0 if stats is None else stats.done
        resumed = 0 if stats is None else stats.resumed
        skipped = 0 if stats is None else len(stats.skipped)
        done, skips, total, rate = self._families()
        done.add_metric([], written + resumed, created=self.created)
        skips.add_metric([], skipped, created=self.created)
        total.add_metric([], self.total)
        rate.add_metric([], 0.0 if stats is None else self.rate(written + resumed + skipped, resumed, stats.started))
        yield from (done, skips, total, rate)

    def rate(self, done: int, resumed: int, started: Optional[float]) -> float:
        """Events finished per second over the window; ``resumed`` of the ``done`` were there at the start."""
        now = self.clock()
        with self._lock:
            if self._state.started is None:
                self._state.update(resumed, self.total, now if started is None else started)
            self._state.update(done, self.total, now)
            return self._state.rate(now)

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily("ssnet_client_events_done",
                                "Events of the job done: written, or found in checkpoint chunks (resume)"),
            CounterMetricFamily("ssnet_client_events_skipped",
                                "Events left out after failing for good (--on-error skip)"),
            GaugeMetricFamily("ssnet_client_job_events", "Events in the job's entry range"),
            GaugeMetricFamily("ssnet_client_events_per_second",
                              f"Events done or skipped per second over the last {self.window:g} s"),
        )


def job_readiness(job: SimpleLArCV1Client) -> tuple[bool, str]:
    """The job's ``/readyz``: ready once the broker answered its first MMI probe and the service had a worker."""
    if job.connected.is_set():
        return True, f"connected: the broker at {job.config.broker} answered"
    return False, f"connecting: waiting for the broker at {job.config.broker} and a worker of {job.config.service!r}"
