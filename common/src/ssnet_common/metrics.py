"""Prometheus helpers shared by the services (needs the ``metrics`` extra: prometheus-client)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ssnet_common.errors import ConfigError
from ssnet_common.protocol import METRICS_ADDR

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

# Request latencies range from milliseconds (echo) to minutes (a full event on a busy CPU worker).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = METRICS_ADDR) -> None:
    """Serve ``registry`` on ``http://addr:port/metrics`` from a daemon thread; ``port`` 0 means off."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s:%d/metrics", addr, port)
