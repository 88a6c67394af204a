"""Container health checks: ``python3 -m ssnet_common.health broker|worker``; exit status 0 healthy, 1 not.

``broker``: an RFC 8 (MMI) round trip to the broker's own frontend.  The endpoint is the one the broker binds,
``SSNET_BROKER_FRONTEND`` (default ``tcp://*:5559``), with a wildcard host replaced by ``127.0.0.1``.

``worker``: the worker is registered and hears its broker.  Its metrics endpoint (``SSNET_WORKER_METRICS_PORT``
on ``127.0.0.1``) must answer, show at least one heartbeat received from the broker (the broker heartbeats every
registered worker), and a broker silence (``ssnet_worker_broker_heartbeat_age_seconds``) shorter than the
worker's liveness limit, ``SSNET_WORKER_HEARTBEAT_INTERVAL`` x ``SSNET_WORKER_HEARTBEAT_LIVENESS``.

Every option reads the same environment variable as the service it checks, so a Dockerfile's ``HEALTHCHECK``
needs no arguments.  One line on stdout says why (``docker inspect`` shows it).  Python 3.9 and the standard
library, plus pyzmq for the broker check.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.error
import urllib.request
from typing import Optional, Sequence

from ssnet_common import config as cfg

HEALTHY = 0
UNHEALTHY = 1

HEARTBEAT_AGE = "ssnet_worker_broker_heartbeat_age_seconds"
HEARTBEATS = "ssnet_worker_heartbeats_total"
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def local_endpoint(bound: str) -> str:
    """The endpoint to connect to for a bind address: ``tcp://*:5559`` → ``tcp://127.0.0.1:5559``."""
    transport, _, address = bound.partition("://")
    host, sep, port = address.rpartition(":")
    if transport == "tcp" and sep and host in ("*", "0.0.0.0", "[::]", "::", "[*]"):
        return f"tcp://127.0.0.1:{port}"
    return bound


def samples(text: str, name: str) -> list[tuple[str, float]]:
    """``(labels, value)`` of every sample of metric ``name`` in a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            try:
                found.append((match.group(2) or "", float(match.group(3))))
            except ValueError:
                continue
    return found


def check_worker_metrics(text: str, max_age: float) -> tuple[bool, str]:
    """Judge a worker's metrics page: (healthy, why)."""
    received = sum(value for labels, value in samples(text, HEARTBEATS) if 'direction="received"' in labels)
    ages = [value for _, value in samples(text, HEARTBEAT_AGE)]
    if not ages:
        return False, f"no {HEARTBEAT_AGE} in the metrics (not an ssnet worker?)"
    if received < 1:
        return False, "no heartbeat from the broker yet (not registered)"
    age = max(ages)
    if age >= max_age:
        return False, f"broker silent for {age:.1f} s (limit {max_age:g} s)"
    return True, f"registered; broker heard {age:.1f} s ago ({received:.0f} heartbeats received)"


def check_worker(url: str, max_age: float, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"metrics endpoint {url} does not answer: {exc}"
    return check_worker_metrics(text, max_age)


def check_broker(frontend: str, timeout: float) -> tuple[bool, str]:
    from ssnet_common.rendezvous import probe_broker  # imports pyzmq: only the broker check needs it

    if probe_broker(frontend, timeout):
        return True, f"broker answers MMI on {frontend}"
    return False, f"no MMI answer from {frontend} within {timeout:g} s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m ssnet_common.health",
        description="Health check of an ssnet service in its container: exit status 0 healthy, 1 not.",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    broker = sub.add_parser("broker", help="an MMI round trip to the broker's own frontend")
    options = cfg.EnvOptions(broker, "SSNET_BROKER_")
    options.add("--frontend", default="tcp://*:5559", type=cfg.endpoint,
                help="the broker's frontend bind address (a wildcard host is checked on 127.0.0.1)")
    options.add("--timeout", default=3.0, type=cfg.positive_float, env="SSNET_HEALTH_TIMEOUT",
                help="seconds to wait for the answer")
    worker = sub.add_parser("worker", help="the worker is registered and hears the broker (its metrics endpoint)")
    options = cfg.EnvOptions(worker, "SSNET_WORKER_")
    options.add("--metrics-port", default=0, type=cfg.port_number,
                help="the worker's metrics port (on 127.0.0.1); 0 (metrics off) is reported as unhealthy")
    options.add("--heartbeat-interval", default=2.5, type=cfg.positive_float,
                help="the worker's heartbeat interval (seconds)")
    options.add("--heartbeat-liveness", default=3, type=cfg.positive_int,
                help="the worker's liveness in intervals: the broker may be silent interval x liveness seconds")
    options.add("--timeout", default=3.0, type=cfg.positive_float, env="SSNET_HEALTH_TIMEOUT",
                help="seconds to wait for the metrics endpoint")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.what == "broker":
        healthy, why = check_broker(local_endpoint(args.frontend), args.timeout)
    elif not args.metrics_port:
        healthy, why = False, "the worker's metrics are off (SSNET_WORKER_METRICS_PORT=0): nothing to check"
    else:
        healthy, why = check_worker(f"http://127.0.0.1:{args.metrics_port}/metrics",
                                    args.heartbeat_interval * args.heartbeat_liveness, args.timeout)
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {why}\n")
    return HEALTHY if healthy else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
