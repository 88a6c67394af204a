"""The broker's Prometheus metrics (``ssnet_broker_*``, base units), read from the state at scrape time.

:class:`BrokerCollector` is a custom collector: gauges and counters are computed from the
:class:`~ssnet_broker.state.BrokerState` (its services, workers and :class:`~ssnet_broker.state.Counters`) and
the loop's :class:`~ssnet_broker.broker.Traffic` when Prometheus asks; the two latency histograms need
observations, so the loop feeds them the state's events through :meth:`BrokerCollector.observe`, a batch at a
time.  Observing is a bucket index found by bisection and two additions (:class:`LatencyHistogram`); the
samples are made at scrape time, as prometheus_client's ``Histogram`` would expose them.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ssnet_broker.state import Dispatched, Outcome
from ssnet_common.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ssnet_broker.broker import Traffic
    from ssnet_broker.state import BrokerState, Event


class LatencyHistogram:
    """A histogram family by ``service``: bucket counts and sums kept here (not in prometheus_client's per-sample
    locked values), exposed with the samples prometheus_client's ``Histogram`` gives (``_bucket`` by ``le``,
    ``_count``, ``_sum``, ``_created``).  Not thread-safe: observe and collect under one lock."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = sorted(float(b) for b in buckets)
        self.les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self.series: dict[str, tuple[list[int], list[float]]] = {}  # service -> (counts by bucket, [sum, created])

    def labels(self, service: str) -> tuple[list[int], list[float]]:
        """The series of ``service``, made (at zero) if new."""
        found = self.series.get(service)
        if found is None:
            found = self.series[service] = ([0] * (len(self.bounds) + 1), [0.0, time.time()])
        return found

    def observe(self, service: str, value: float) -> None:
        counts, total = self.series.get(service) or self.labels(service)
        counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value (le)
        total[0] += value

    def describe(self) -> Metric:
        return Metric(self.name, self.documentation, "histogram")

    def collect(self) -> Metric:
        family = self.describe()
        for service, (counts, (total, created)) in self.series.items():
            cumulative = 0
            for le, count in zip(self.les, counts):
                cumulative += count
                family.add_sample(f"{self.name}_bucket", {"service": service, "le": le}, float(cumulative))
            family.add_sample(f"{self.name}_count", {"service": service}, float(cumulative))
            family.add_sample(f"{self.name}_sum", {"service": service}, total)
            family.add_sample(f"{self.name}_created", {"service": service}, created)
        return family


class BrokerCollector:
    """Register on a ``CollectorRegistry``; ``lock`` must be the one the loop holds while it changes ``state``."""

    def __init__(self, state: BrokerState, traffic: Traffic, lock: Optional[threading.Lock] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.traffic = traffic
        # Consistency: the loop changes the state only while holding ``lock``, and collect() reads it under the
        # same lock (briefly, no I/O), so a scrape sees the state between two messages, never halfway through one.
        self.lock = threading.Lock() if lock is None else lock
        self.clock = clock  # the state's clock, for heartbeat ages
        self.started = time.time()  # every counter starts at zero with the state: their _created time
        self.latency = LatencyHistogram("ssnet_broker_request_duration_seconds",
                                        "Time from a request's arrival to its final reply or error", LATENCY_BUCKETS)
        self.queue_wait = LatencyHistogram("ssnet_broker_queue_wait_seconds",
                                           "Time a request waited in the queue before a worker took it",
                                           LATENCY_BUCKETS)
        self._seen: set[str] = set()  # gauge labels ever exposed: a service that went away reads zero

    def observe(self, events: Iterable[Event]) -> None:
        """Feed the histograms (called by the loop with :meth:`BrokerState.drain_events`, holding ``lock``)."""
        wait, latency = self.queue_wait.observe, self.latency.observe
        for event in events:
            if isinstance(event, Dispatched):
                wait(event.service, event.waited)
            else:
                latency(event.service, event.seconds)

    def describe(self) -> Iterator[Metric]:
        """The families without samples (lets the registry detect clashes and serve ``?name[]=`` queries)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            families = self._families(self.clock())
        yield from families

    def _families(self, now: Optional[float] = None) -> list[Metric]:
        """Every family in the order they were always exposed; with samples read from the state if ``now``."""
        workers = GaugeMetricFamily("ssnet_broker_workers", "Connected workers by service and state (idle, busy)",
                                    labels=["service", "state"])
        queued = GaugeMetricFamily("ssnet_broker_queued_requests", "Requests waiting for a worker, by service",
                                   labels=["service"])
        heartbeat_age = GaugeMetricFamily("ssnet_broker_worker_heartbeat_age_seconds",
                                          "Longest time since any worker of the service was last heard from",
                                          labels=["service"])
        requests = CounterMetricFamily("ssnet_broker_requests_total", "Requests finished, by service and outcome",
                                       labels=["service", "outcome"])
        heartbeats = CounterMetricFamily("ssnet_broker_heartbeats_total",
                                         "Heartbeats sent to and received from workers", labels=["direction"])
        expirations = CounterMetricFamily("ssnet_broker_worker_expirations_total",
                                          "Workers dropped because they stopped sending heartbeats",
                                          labels=["service"])
        requeues = CounterMetricFamily("ssnet_broker_requeues_total",
                                       "Requests put back in the queue because their worker died", labels=["service"])
        traffic = CounterMetricFamily("ssnet_broker_bytes_total", "Message bytes received (in) and sent (out)",
                                      labels=["direction"])
        malformed = CounterMetricFamily("ssnet_broker_malformed_messages_total", "Messages dropped as malformed",
                                        labels=["side"])
        unreachable = CounterMetricFamily("ssnet_broker_worker_unreachable_total",
                                          "Workers dropped at once because the socket could no longer reach them",
                                          labels=["service"])
        rejected = CounterMetricFamily("ssnet_broker_rejected_requests_total",
                                       "Requests refused at once, by the bound they would have overstepped",
                                       labels=["bound"])
        services = GaugeMetricFamily("ssnet_broker_services", "Services held: with workers or waiting requests")
        limits = GaugeMetricFamily("ssnet_broker_limit", "The broker's bounds (options), by name", labels=["limit"])
        auth_failures = CounterMetricFamily("ssnet_broker_auth_failures_total",
                                            "Connections refused by CURVE (no CURVE, a bad or unknown key), by side",
                                            labels=["side"])
        undeliverable = CounterMetricFamily("ssnet_broker_undeliverable_messages_total",
                                            "Messages dropped on the way out, by side and reason: the peer is gone, "
                                            "or its queue is full (a client not reading its replies)",
                                            labels=["side", "reason"])
        added = [unreachable, rejected, services, limits, auth_failures, undeliverable]
        if now is None:
            return [workers, queued, heartbeat_age, requests, self.latency.describe(), self.queue_wait.describe(),
                    heartbeats, expirations, requeues, traffic, malformed, *added]

        state, counters, created = self.state, self.state.counters, self.started
        # gauges: the current state
        counts: dict[str, list[int]] = {}  # label -> [idle, busy, queued]
        for name, service in state.services.items():
            row = counts.setdefault(state.label(name), [0, 0, 0])
            row[0] += len(service.idle)
            row[1] += service.workers - len(service.idle)
            row[2] += len(service.queue)
        ages: dict[str, float] = {}
        for worker in state.workers.values():
            ages[worker.service] = max(ages.get(worker.service, 0.0), now - worker.last_seen)
        for label in self._seen - set(counts):
            counts[label] = [0, 0, 0]
        self._seen |= set(counts)
        for label, (idle, busy, waiting) in counts.items():
            workers.add_metric([label, "idle"], idle)
            workers.add_metric([label, "busy"], busy)
            queued.add_metric([label], waiting)
            heartbeat_age.add_metric([label], ages.get(label, 0.0))

        # counters: the running totals; a registered service has its series from the start, at zero
        finished = dict(counters.finished)
        for name in sorted(state.registered):
            finished.setdefault((name, Outcome.OK), 0)
            self.latency.labels(service=name)  # the histograms' series too
            self.queue_wait.labels(service=name)
        for (label, outcome), count in finished.items():
            requests.add_metric([label, outcome.value], count, created)
        for direction, count in (("received", counters.heartbeats_received), ("sent", counters.heartbeats_sent)):
            if count:
                heartbeats.add_metric([direction], count, created)
        for family, totals in ((expirations, counters.expirations), (requeues, counters.requeues),
                               (unreachable, counters.unreachable)):
            for label in [*totals, *(name for name in sorted(state.registered) if name not in totals)]:
                family.add_metric([label], totals[label], created)
        # the loop's own totals (its ints are read without the lock: reading an int is atomic)
        for direction, count in (("in", self.traffic.bytes_in), ("out", self.traffic.bytes_out)):
            if count:
                traffic.add_metric([direction], count, created)
        for side, count in self.traffic.malformed.items():
            malformed.add_metric([side], count, created)
        for bound in ("max_queue", "max_queued", "max_services"):
            rejected.add_metric([bound], counters.rejected[bound], created)
        services.add_metric([], len(state.services))
        for name, value in sorted(asdict(state.limits).items()):
            limits.add_metric([name], float(value))
        for side in ("client", "worker"):
            auth_failures.add_metric([side], self.traffic.auth_failures[side], created)
            for reason in ("gone", "full"):
                undeliverable.add_metric([side, reason], self.traffic.undeliverable[side, reason], created)
        return [workers, queued, heartbeat_age, requests, self.latency.collect(), self.queue_wait.collect(),
                heartbeats, expirations, requeues, traffic, malformed, *added]
