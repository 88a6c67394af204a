"""A LArCV1 job's progress metrics (``ssnet_client.metrics``), read from its ``JobStats`` at scrape time."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, Optional

from prometheus_client import CollectorRegistry

from ssnet_client.jobs import JobStats
from ssnet_client.metrics import JobProgressCollector, job_readiness


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def progress(registry: CollectorRegistry) -> dict[str, float]:
    return {sample.name: sample.value for family in registry.collect() for sample in family.samples
            if sample.name.startswith("ssnet_client_") and not sample.name.endswith("_created")}


def test_before_the_job_starts_nothing_is_done() -> None:
    registry = CollectorRegistry()
    registry.register(JobProgressCollector(lambda: None, 12, clock=Clock(5.0)))
    assert progress(registry) == {"ssnet_client_events_done_total": 0, "ssnet_client_events_skipped_total": 0,
                                  "ssnet_client_job_events": 12, "ssnet_client_events_per_second": 0}


def test_done_total_and_the_rate_over_the_window() -> None:
    clock = Clock(100.0)
    stats = JobStats(unit="event", started=90.0, resumed=4)  # 4 entries were in checkpoint chunks
    holder: dict[str, Optional[JobStats]] = {"stats": stats}
    registry = CollectorRegistry()
    registry.register(JobProgressCollector(lambda: holder["stats"], 20, clock=clock, window=30.0))
    stats.done = 5
    # The first scrape: the job's mean rate, 5 events written in the 10 s since it started.
    assert progress(registry) == {"ssnet_client_events_done_total": 9, "ssnet_client_events_skipped_total": 0,
                                  "ssnet_client_job_events": 20, "ssnet_client_events_per_second": 0.5}
    clock.now, stats.done = 110.0, 10
    assert progress(registry)["ssnet_client_events_per_second"] == 0.5  # (10 - 5) / (110 - 100)
    clock.now, stats.done = 120.0, 20
    assert progress(registry)["ssnet_client_events_per_second"] == 20 / 30  # (20 - 0) / (120 - 90): the window
    clock.now, stats.done = 140.0, 20
    # the 100 s scrape left the 30 s window: (20 - 10) / (140 - 110)
    assert progress(registry)["ssnet_client_events_per_second"] == 10 / 30
    clock.now = 200.0  # a stall: nothing written in the window
    assert progress(registry)["ssnet_client_events_per_second"] == 0
    assert progress(registry)["ssnet_client_events_done_total"] == 24


def test_skipped_events_are_counted_and_move_the_rate() -> None:
    clock = Clock(100.0)
    stats = JobStats(unit="event", started=90.0)
    registry = CollectorRegistry()
    registry.register(JobProgressCollector(lambda: stats, 10, clock=clock, window=30.0))
    stats.done = 4
    assert progress(registry)["ssnet_client_events_per_second"] == 0.4
    clock.now, stats.skipped = 110.0, [{"run": 1, "subrun": 0, "event": e} for e in range(6)]
    scraped = progress(registry)
    assert scraped["ssnet_client_events_skipped_total"] == 6 and scraped["ssnet_client_events_done_total"] == 4
    assert scraped["ssnet_client_events_per_second"] == 0.5  # (10 - 0) / (110 - 90): skipped events count
    assert stats.finished == 10


def test_the_job_is_ready_once_the_broker_answered() -> None:
    job: Any = SimpleNamespace(connected=threading.Event(),
                               config=SimpleNamespace(broker="tcp://broker:5559", service="ssnet"))
    ready, why = job_readiness(job)
    assert not ready and "tcp://broker:5559" in why and "'ssnet'" in why
    job.connected.set()
    assert job_readiness(job) == (True, "connected: the broker at tcp://broker:5559 answered")
