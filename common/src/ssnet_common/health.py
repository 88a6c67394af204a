"""What every container health check shares: the verdict line and its exit status.

Each service owns its check, next to what it checks: ``python3 -m ssnet_broker.health`` (an MMI round trip to the
broker's own frontend) and ``python3 -m ssnet_worker.health`` (the worker's metrics say it is registered and hears
its broker).  Every option reads the same environment variable as the service it checks, so a Dockerfile's
``HEALTHCHECK`` needs no arguments; one line on stdout says why (``docker inspect`` shows it).
"""

from __future__ import annotations

import sys

from ssnet_common import config as cfg

HEALTHY = 0
UNHEALTHY = 1


def add_timeout_option(options: cfg.EnvOptions, what: str) -> None:
    options.add("--timeout", default=3.0, type=cfg.positive_float, env="SSNET_HEALTH_TIMEOUT",
                help=f"seconds to wait for {what}")


def verdict(healthy: bool, why: str) -> int:
    """Print ``healthy: why`` or ``unhealthy: why`` and return the exit status."""
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {why}\n")
    return HEALTHY if healthy else UNHEALTHY
