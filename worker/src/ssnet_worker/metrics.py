"""Prometheus metrics of one worker process (base units, ``_total`` counters, no high-cardinality labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ssnet_common.metrics import LATENCY_BUCKETS

OK = "ok"
ERROR = "error"
HEARTBEATS = "ssnet_worker_heartbeats"  # a counter: exposed as ..._total
BROKER_HEARTBEAT_AGE = "ssnet_worker_broker_heartbeat_age_seconds"


class WorkerMetrics:
    """The worker's metrics, registered in ``registry`` and bound to ``service``.

    ``ssnet_worker_requests_total{service,outcome}``     requests answered, outcome ``ok`` or ``error``
    ``ssnet_worker_errors_total{service}``               errors: ``handle`` raised, a malformed message from the
                                                         broker, a failed send
    ``ssnet_worker_processing_seconds{service}``         time spent in ``handle`` (histogram)
    ``ssnet_worker_heartbeats_total{direction}``         heartbeats ``sent`` to and ``received`` from the broker
    ``ssnet_worker_reconnects_total{service}``           connections to the broker replaced (silence, DISCONNECT)
    ``ssnet_worker_busy{service}``                       1 while a request is being processed
    ``ssnet_worker_broker_heartbeat_age_seconds{service}`` time since the broker was last heard from
    """

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        requests = Counter(
            "ssnet_worker_requests", "Requests answered, by outcome (ok or error)",
            ["service", "outcome"], registry=registry,
        )
        self.requests_ok = requests.labels(service, OK)
        self.requests_error = requests.labels(service, ERROR)
        self.errors = Counter(
            "ssnet_worker_errors", "Errors: handler exceptions, malformed broker messages, failed sends",
            ["service"], registry=registry,
        ).labels(service)
        self.processing_seconds = Histogram(
            "ssnet_worker_processing_seconds", "Time spent handling one request",
            ["service"], buckets=LATENCY_BUCKETS, registry=registry,
        ).labels(service)
        heartbeats = Counter(
            HEARTBEATS, "Heartbeats exchanged with the broker, by direction (sent or received)",
            ["direction"], registry=registry,
        )
        self.heartbeats_sent = heartbeats.labels("sent")
        self.heartbeats_received = heartbeats.labels("received")
        self.reconnects = Counter(
            "ssnet_worker_reconnects", "Broker connections replaced after silence or a DISCONNECT",
            ["service"], registry=registry,
        ).labels(service)
        self.busy = Gauge(
            "ssnet_worker_busy", "1 while the worker processes a request, else 0", ["service"], registry=registry,
        ).labels(service)
        self.broker_heartbeat_age = Gauge(
            BROKER_HEARTBEAT_AGE, "Seconds since the last message from the broker",
            ["service"], registry=registry,
        ).labels(service)

    def request_done(self, ok: bool, seconds: float) -> None:
        self.processing_seconds.observe(seconds)
        if ok:
            self.requests_ok.inc()
        else:
            self.requests_error.inc()
            self.errors.inc()
