"""``ssnet-broker``: the Majordomo broker between ssnet clients and workers."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ssnet_broker.broker import Broker, BrokerConfig
from ssnet_broker.state import Limits
from ssnet_common import config as cfg
from ssnet_common import protocol as mdp
from ssnet_common.curve import add_server_options, server_keys
from ssnet_common.errors import ConfigError, SSNetError
from ssnet_common.rendezvous import BrokerEndpoint, EndpointPublisher

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(
        prog="ssnet-broker", package="ssnet-broker", epilog=cfg.SERVICE_EXIT_STATUSES,
        description="Load-balancing Majordomo (MDP/0.2) broker between ssnet clients and workers. "
                    "It knows nothing about payloads: it queues requests per service, hands each to the "
                    "least recently used idle worker, heartbeats workers and re-queues the requests of dead ones.",
    )
    options = cfg.EnvOptions(parser, "SSNET_BROKER_")
    options.add("--frontend", default=mdp.FRONTEND_BIND, type=cfg.endpoint,
                help="endpoint to bind for clients (MDP/Client)")
    options.add("--backend", default=mdp.BACKEND_BIND, type=cfg.endpoint,
                help="endpoint to bind for workers (MDP/Worker)")
    options.add("--heartbeat-interval", default=mdp.HEARTBEAT_INTERVAL, type=cfg.positive_float,
                help="seconds between heartbeats sent to each worker; workers must use the same value")
    options.add("--heartbeat-liveness", default=mdp.HEARTBEAT_LIVENESS, type=cfg.positive_int,
                help="a worker silent for this many heartbeat intervals is dropped and its request re-queued")
    limits = Limits()  # the defaults live there
    options.add("--queue-timeout", default=limits.queue_timeout, type=cfg.positive_float,
                help="longest a request may wait for a worker before the client gets an error reply (seconds)")
    options.add("--unknown-service-timeout", default=limits.unknown_service_timeout, type=cfg.positive_float,
                help="longest a request may wait for a service no worker has ever offered (seconds): a mistyped "
                     "service name fails this fast")
    options.add("--max-queue", default=limits.max_queue, type=cfg.positive_int,
                help="requests a service may have waiting; beyond it clients get an error reply at once")
    options.add("--max-queued", default=limits.max_queued, type=cfg.positive_int,
                help="requests that may wait in all services together; beyond it clients get an error reply at once")
    options.add("--max-services", default=limits.max_services, type=cfg.positive_int,
                help="services the broker holds at once (with workers or waiting requests); a request for one more "
                     "gets an error reply at once")
    options.add("--max-attempts", default=limits.max_attempts, type=cfg.positive_int,
                help="workers a request may be given to, in all, when its workers die before answering")
    add_server_options(options)
    options.add("--endpoint-file", default=None,
                help="once the broker answers, write where it listens (host, tcp://host:port endpoints, metrics "
                     "port, pid, start time, run id) to this JSON file, atomically, for ssnet-worker/ssnet-client "
                     "--broker-file; removed again when the broker stops")
    options.add("--advertise-host", default=None,
                help="host name written to --endpoint-file in place of a wildcard bind address "
                     "(default: this machine's host name)")
    cfg.add_common_options(options)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg.configure_logging(args.log_level, "ssnet-broker")
    try:
        curve, authorized = server_keys(args.curve_secret, args.curve_clients, args.curve_workers)
    except ConfigError as exc:
        log.error("%s", exc)
        return cfg.EXIT_USAGE
    config = BrokerConfig(
        frontend=args.frontend,
        backend=args.backend,
        limits=Limits(
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_liveness=args.heartbeat_liveness,
            queue_timeout=args.queue_timeout,
            max_queue=args.max_queue,
            max_attempts=args.max_attempts,
            unknown_service_timeout=args.unknown_service_timeout,
            max_queued=args.max_queued,
            max_services=args.max_services,
        ),
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        curve=curve,
        authorized=authorized,
    )
    try:
        registry = None
        if config.metrics_port:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        broker = Broker(config, registry)
        if registry is not None:
            from ssnet_common.metrics import serve_metrics

            serve_metrics(registry, config.metrics_port, config.metrics_addr, ready=broker.readiness)
        broker.install_signal_handlers()
        publisher = None
        if args.endpoint_file:  # written by a thread once the broker answers on its advertised frontend
            endpoint = BrokerEndpoint.create(config.frontend, config.backend, host=args.advertise_host,
                                             metrics_port=config.metrics_port,
                                             curve_public=None if curve is None else curve.public)
            publisher = EndpointPublisher(args.endpoint_file, endpoint, lambda message: broker.stop(),
                                          probe=broker.probe).start()
        try:
            broker.run()
        finally:
            if publisher is not None:
                publisher.close()
        if publisher is not None and publisher.failed:
            raise SSNetError("could not publish the endpoint file; broker stopped")
    except ConfigError as exc:
        log.error("%s", exc)
        return cfg.EXIT_USAGE
    except SSNetError as exc:
        log.error("broker failed: %s", exc)
        return cfg.EXIT_FAILURE
    log.info("broker stopped")
    return cfg.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
