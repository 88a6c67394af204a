"""The worker's container health check: ``python3 -m ssnet_worker.health``; exit status 0 healthy, 1 not.

The worker is registered and hears its broker: its metrics endpoint (``SSNET_WORKER_METRICS_PORT`` on
``127.0.0.1``) answers, shows at least one heartbeat received from the broker (the broker heartbeats every
registered worker), and a broker silence shorter than the worker's liveness limit,
``SSNET_WORKER_HEARTBEAT_INTERVAL`` x ``SSNET_WORKER_HEARTBEAT_LIVENESS``.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Optional, Sequence

from prometheus_client.parser import text_string_to_metric_families

from ssnet_common import config as cfg
from ssnet_common.health import add_timeout_option, verdict
from ssnet_common.protocol import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS
from ssnet_worker.metrics import BROKER_HEARTBEAT_AGE, HEARTBEATS


def check_worker_metrics(text: str, max_age: float) -> tuple[bool, str]:
    """Judge a worker's metrics page: (healthy, why)."""
    received, ages = 0.0, []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{HEARTBEATS}_total" and sample.labels.get("direction") == "received":
                    received += sample.value
                elif sample.name == BROKER_HEARTBEAT_AGE:
                    ages.append(sample.value)
    except ValueError as exc:
        return False, f"the metrics page does not parse: {exc}"
    if not ages:
        return False, f"no {BROKER_HEARTBEAT_AGE} in the metrics (not an ssnet worker?)"
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


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(prog="python3 -m ssnet_worker.health",
                                     description="Health check of a worker in its container: it is registered and "
                                                 "hears the broker (its metrics endpoint); exit status 0 healthy, 1 "
                                                 "not.")
    options = cfg.EnvOptions(parser, "SSNET_WORKER_")
    options.add("--metrics-port", default=0, type=cfg.port_number,
                help="the worker's metrics port (on 127.0.0.1); 0 (metrics off) is reported as unhealthy")
    options.add("--heartbeat-interval", default=HEARTBEAT_INTERVAL, type=cfg.positive_float,
                help="the worker's heartbeat interval (seconds)")
    options.add("--heartbeat-liveness", default=HEARTBEAT_LIVENESS, type=cfg.positive_int,
                help="the worker's liveness in intervals: the broker may be silent interval x liveness seconds")
    add_timeout_option(options, "the metrics endpoint")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.metrics_port:
        return verdict(False, "the worker's metrics are off (SSNET_WORKER_METRICS_PORT=0): nothing to check")
    return verdict(*check_worker(f"http://127.0.0.1:{args.metrics_port}/metrics",
                                 args.heartbeat_interval * args.heartbeat_liveness, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
