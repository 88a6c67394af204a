"""What every container health check shares: asking a service's ``/readyz``, the verdict line and its exit status.

Each service judges its own readiness and says so on its metrics port (:func:`ssnet_common.metrics.serve_metrics`:
``/readyz`` answers 200 or 503 with the reason); the checks ask it with :func:`check_ready`.  Each service owns
its check: ``python3 -m ssnet_broker.health`` (the broker's ``/readyz``, its sockets are bound, and an MMI round
trip to its own frontend) and ``python3 -m ssnet_worker.health`` (the worker's ``/readyz``: model loaded,
registered, and it hears its broker).  Every option reads the same environment variable as the service it checks,
so a Dockerfile's ``HEALTHCHECK`` needs no arguments; one line on stdout says why (``docker inspect`` shows it).
Any other service with a metrics port (the client): ``python3 -m ssnet_common.health --port PORT``.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Optional, Sequence

from ssnet_common import config as cfg

HEALTHY = 0
UNHEALTHY = 1
READY_PATH = "/readyz"
EXIT_STATUSES = "exit status: 0 healthy; 1 unhealthy (one line on stdout says why); 2 bad options"


def add_timeout_option(options: cfg.EnvOptions, what: str) -> None:
    options.add("--timeout", default=3.0, type=cfg.positive_float, env="SSNET_HEALTH_TIMEOUT",
                help=f"seconds to wait for {what}")


def verdict(healthy: bool, why: str) -> int:
    """Print ``healthy: why`` or ``unhealthy: why`` and return the exit status."""
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {why}\n")
    return HEALTHY if healthy else UNHEALTHY


def check_ready(port: int, timeout: float, host: str = "127.0.0.1") -> tuple[bool, str]:
    """Ask ``http://host:port/readyz``: (True, its reason) on 200; (False, why) on any other answer or none."""
    url = f"http://{host}:{port}{READY_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return True, response.read().decode("utf-8", errors="replace").strip()
    except urllib.error.HTTPError as exc:  # 503: not ready, and the body says why
        try:
            reason = exc.read().decode("utf-8", errors="replace").strip()
        finally:
            exc.close()
        return False, reason or f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url} does not answer: {getattr(exc, 'reason', exc)}"


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(prog="python3 -m ssnet_common.health", epilog=EXIT_STATUSES,
                                description="Health check of any ssnet service with a metrics port: its /readyz "
                                            "on 127.0.0.1; exit status 0 ready, 1 not.")
    options = cfg.EnvOptions(parser, "SSNET_HEALTH_")
    options.add("--port", default=0, type=cfg.port_number, help="the service's metrics port (on 127.0.0.1)")
    add_timeout_option(options, "the answer")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.port:
        return verdict(False, "no metrics port to ask (--port, SSNET_HEALTH_PORT)")
    return verdict(*check_ready(args.port, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
