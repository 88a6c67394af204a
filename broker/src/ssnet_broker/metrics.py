"""The broker's Prometheus metrics (``ssnet_broker_*``, base units)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ssnet_common.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ssnet_broker.state import BrokerState, Outcome


class BrokerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.workers = Gauge("ssnet_broker_workers", "Connected workers by service and state (idle, busy)",
                             ["service", "state"], registry=registry)
        self.queued = Gauge("ssnet_broker_queued_requests", "Requests waiting for a worker, by service",
                            ["service"], registry=registry)
        self.heartbeat_age = Gauge(
            "ssnet_broker_worker_heartbeat_age_seconds",
            "Longest time since any worker of the service was last heard from", ["service"], registry=registry)
        self.requests = Counter("ssnet_broker_requests_total", "Requests finished, by service and outcome",
                                ["service", "outcome"], registry=registry)
        self.latency = Histogram("ssnet_broker_request_duration_seconds",
                                 "Time from a request's arrival to its final reply or error", ["service"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram("ssnet_broker_queue_wait_seconds",
                                    "Time a request waited in the queue before a worker took it", ["service"],
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.heartbeats = Counter("ssnet_broker_heartbeats_total", "Heartbeats sent to and received from workers",
                                  ["direction"], registry=registry)
        self.expirations = Counter("ssnet_broker_worker_expirations_total",
                                   "Workers dropped because they stopped sending heartbeats", ["service"],
                                   registry=registry)
        self.requeues = Counter("ssnet_broker_requeues_total",
                                "Requests put back in the queue because their worker died", ["service"],
                                registry=registry)
        self.bytes = Counter("ssnet_broker_bytes_total", "Message bytes received (in) and sent (out)",
                             ["direction"], registry=registry)
        self.malformed = Counter("ssnet_broker_malformed_messages_total", "Messages dropped as malformed",
                                 ["side"], registry=registry)
        self._seen: set[str] = set()

    def service_registered(self, service: str) -> None:
        """Create the service's series at once, so rates and quantiles exist before its first request ends."""
        self.requests.labels(service=service, outcome="ok")
        self.latency.labels(service=service)
        self.queue_wait.labels(service=service)
        self.requeues.labels(service=service)
        self.expirations.labels(service=service)

    def finished(self, service: str, outcome: Outcome, seconds: float) -> None:
        self.requests.labels(service=service, outcome=outcome.value).inc()
        self.latency.labels(service=service).observe(seconds)

    def observe(self, state: BrokerState, now: float) -> None:
        """Refresh the gauges from the state (called by the loop, a few times a second at most)."""
        counts: dict[str, list[int]] = {}  # label -> [idle, busy, queued]
        for name, service in state.services.items():
            row = counts.setdefault(state.label(name), [0, 0, 0])
            row[0] += len(service.idle)
            row[1] += service.workers - len(service.idle)
            row[2] += len(service.queue)
        ages: dict[str, float] = {}
        for worker in state.workers.values():
            ages[worker.service] = max(ages.get(worker.service, 0.0), now - worker.last_seen)
        for label in self._seen - set(counts):  # a service that went away reads zero, not its last value
            counts[label] = [0, 0, 0]
        self._seen |= set(counts)
        for label, (idle, busy, queued) in counts.items():
            self.workers.labels(service=label, state="idle").set(idle)
            self.workers.labels(service=label, state="busy").set(busy)
            self.queued.labels(service=label).set(queued)
            self.heartbeat_age.labels(service=label).set(ages.get(label, 0.0))
