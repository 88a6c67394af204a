"""The broker's container health check: ``python3 -m ssnet_broker.health``; exit status 0 healthy, 1 not.

With a metrics port (``SSNET_BROKER_METRICS_PORT``), first the broker's own verdict, its ``/readyz`` on
``127.0.0.1`` (its sockets are bound); then, with or without one, an RFC 8 (MMI) round trip to the broker's own
frontend, which proves that its loop answers: the endpoint it binds, ``SSNET_BROKER_FRONTEND`` (default
``tcp://*:5559``), with a wildcard host replaced by ``127.0.0.1``; with CURVE (``SSNET_BROKER_CURVE_SECRET``),
asked as the broker itself.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ssnet_common import config as cfg
from ssnet_common.curve import CurveKeys, load_secret
from ssnet_common.errors import ConfigError
from ssnet_common.health import EXIT_STATUSES, add_timeout_option, check_ready, verdict
from ssnet_common.protocol import FRONTEND_BIND
from ssnet_common.rendezvous import probe_broker


def local_endpoint(bound: str) -> str:
    """The endpoint to connect to for a bind address: ``tcp://*:5559`` -> ``tcp://127.0.0.1:5559``."""
    transport, _, address = bound.partition("://")
    host, sep, port = address.rpartition(":")
    if transport == "tcp" and sep and host in ("*", "0.0.0.0", "[::]", "::", "[*]"):
        return f"tcp://127.0.0.1:{port}"
    return bound


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(prog="python3 -m ssnet_broker.health", package="ssnet-broker", epilog=EXIT_STATUSES,
                                     description="Health check of the broker in its container: its /readyz (with "
                                                 "a metrics port) and an MMI round trip to its own frontend; exit "
                                                 "status 0 healthy, 1 not.")
    options = cfg.EnvOptions(parser, "SSNET_BROKER_")
    options.add("--frontend", default=FRONTEND_BIND, type=cfg.endpoint,
                help="the broker's frontend bind address (a wildcard host is checked on 127.0.0.1)")
    options.add("--curve-secret", default=None,
                help="the broker's CURVE secret key file, when it runs with CURVE: the check asks as the broker "
                     "itself, a key it always admits")
    options.add("--metrics-port", default=0, type=cfg.port_number,
                help="the broker's metrics port (on 127.0.0.1), whose /readyz is asked first; 0: MMI only")
    add_timeout_option(options, "the answer")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.metrics_port:
        ready, why = check_ready(args.metrics_port, args.timeout)
        if not ready:
            return verdict(False, why)
    frontend = local_endpoint(args.frontend)
    keys = None
    if args.curve_secret is not None:
        try:
            public, secret = load_secret(args.curve_secret)
        except ConfigError as exc:
            return verdict(False, str(exc))
        keys = CurveKeys(public, secret, server=public)
    if probe_broker(frontend, args.timeout, keys):
        return verdict(True, f"broker answers MMI on {frontend}")
    return verdict(False, f"no MMI answer from {frontend} within {args.timeout:g} s")


if __name__ == "__main__":
    sys.exit(main())
