"""The worker's container health check: ``python3 -m ssnet_worker.health``; exit status 0 healthy, 1 not.

The worker's own verdict, its ``/readyz`` on the metrics port (``SSNET_WORKER_METRICS_PORT`` on ``127.0.0.1``):
ready when its model is loaded and it is registered with a broker it hears, a broker silence shorter than its
liveness limit (:meth:`ssnet_worker.base.Worker.readiness`); the answer's text says why not.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ssnet_common import config as cfg
from ssnet_common.health import EXIT_STATUSES, add_timeout_option, check_ready, verdict


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(prog="python3 -m ssnet_worker.health", package="ssnet-worker", epilog=EXIT_STATUSES,
                                     description="Health check of a worker in its container: its /readyz (model "
                                                 "loaded, registered and hearing the broker); exit status 0 "
                                                 "healthy, 1 not.")
    options = cfg.EnvOptions(parser, "SSNET_WORKER_")
    options.add("--metrics-port", default=0, type=cfg.port_number,
                help="the worker's metrics port (on 127.0.0.1); 0 (metrics off) is reported as unhealthy")
    add_timeout_option(options, "the metrics endpoint")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.metrics_port:
        return verdict(False, "the worker's metrics are off (SSNET_WORKER_METRICS_PORT=0): nothing to check")
    return verdict(*check_ready(args.metrics_port, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
