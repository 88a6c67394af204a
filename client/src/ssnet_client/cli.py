"""``ssnet-client``: run LArCV1 files through an ssnet service and write the replies to a LArCV1 file."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Optional

from ssnet_client.base import ClientConfig
from ssnet_client.jobs import JobStats, add_wait_options, add_wire_codec_option, wire_codec
from ssnet_client.larcv1_client import (
    DRAIN_TIMEOUT,
    MAX_EVENT_ATTEMPTS,
    ON_ERROR,
    JobInterrupted,
    LArCV1JobConfig,
    SimpleLArCV1Client,
)
from ssnet_client.progress import LOG_INTERVAL, MODES, ProgressReport
from ssnet_common import config as cfg
from ssnet_common.curve import add_peer_options, peer_keys
from ssnet_common.errors import ConfigError, DataError, SSNetError
from ssnet_common.protocol import CLIENT_CONNECT
from ssnet_common.rendezvous import add_broker_options, broker_from_file
from ssnet_data.regions import Regions

log = logging.getLogger(__name__)



def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(
        prog="ssnet-client", package="ssnet-client",
        description="Send the Image2D products of LArCV1 files, event by event, to an ssnet service through the "
                    "broker, and write the images the workers return into an output LArCV1 file (entries in input "
                    "order, each input event exactly once). The output appears only if every event succeeded.",
    )
    options = cfg.EnvOptions(parser, "SSNET_CLIENT_")
    add_broker_options(options, CLIENT_CONNECT, "broker frontend endpoint")
    add_peer_options(options)
    options.add("--service", default="dummy", help="service to send the images to (e.g. dummy, echo, ssnet)")
    options.add("--input", default=None, nargs="+", help="input LArCV1 file(s), read as one sequence of entries")
    options.add("--output", default=None, help="output LArCV1 file (written at the end, atomically)")
    options.add_flag("--force", help="replace the output file if it exists (else the job refuses to start)")
    options.add("--producer", default=["wire"], nargs="+", help="Image2D producer(s) to send")
    options.add("--start", default=0, type=cfg.non_negative_int, help="first entry to process")
    options.add("--end", default=None, type=cfg.non_negative_int, help="entry to stop before (default: the last)")
    options.add("--batch-size", default=1, type=cfg.positive_int,
                help="events per request; consecutive events of the same image shapes are batched")
    options.add("--window", default=8, type=cfg.positive_int, help="requests in flight at once")
    options.add("--timeout", default=120.0, type=cfg.positive_float,
                help="seconds to wait for a reply before sending the request again")
    options.add("--retries", default=3, type=cfg.non_negative_int,
                help="times the client re-sends a request that gets no reply within --timeout")
    add_wait_options(options)
    options.add("--drain-timeout", default=DRAIN_TIMEOUT, type=cfg.non_negative_float,
                help="on SIGTERM or SIGINT: stop sending, wait this long for the replies in flight, keep what is "
                     "done in the checkpoint chunks and exit 143 or 130, logging the command that resumes")
    options.add("--max-event-attempts", default=MAX_EVENT_ATTEMPTS, type=cfg.positive_int,
                help="workers an event's request may be given to in all: after the broker reports its workers "
                     "lost (worker_lost) or the client gives up waiting, the job sends it again until then")
    options.add("--on-error", default=ON_ERROR[0], choices=ON_ERROR,
                help="an event whose request fails for good (all its attempts, or an error reply): stop the job "
                     "naming it (fail), or leave it out, list it in <output>.failed.json and exit 3 (skip)")
    options.add_flag("--per-plane", help="send each image as its own request to service <service>_plane<p>")
    options.add_flag("--copy-input", help="also write the input producers into the output file")
    add_wire_codec_option(options)
    options.add("--checkpoint", default=0, type=cfg.non_negative_int,
                help="keep finished entries in chunk files of this many entries beside the output "
                     "(<output>.chunks/), so a failed run can be resumed; 0: off")
    options.add_flag("--resume", help="continue a run from the checkpoint chunks it left (needs --checkpoint)")
    options.add("--regions", default=None,
                help="JSON file of boxes per plane (for all events and per event, in wire/tick coordinates): send "
                     "only those crops and write whole views that are zero outside them (see ssnet_data.regions)")
    add_progress_options(options)
    cfg.add_common_options(options)
    return parser


def add_progress_options(options: cfg.EnvOptions) -> None:
    """``--progress`` and ``--log-interval`` (ssnet-client, ssnet-local)."""
    options.add("--progress", default=MODES[0], choices=MODES,
                help="progress display: a bar on a terminal, a log line every --log-interval seconds otherwise "
                     "(auto)")
    options.add("--log-interval", default=LOG_INTERVAL, type=cfg.positive_float,
                help="seconds between progress log lines (--progress log, or auto on a non-terminal)")


def config_from_args(args: argparse.Namespace, server_key: Optional[bytes] = None) -> LArCV1JobConfig:
    """The job from parsed options; ``server_key``: the broker's CURVE public key from its endpoint file."""
    if not args.input:
        raise ConfigError("no input file: give --input FILE (or SSNET_CLIENT_INPUT)")
    if not args.output:
        raise ConfigError("no output file: give --output FILE (or SSNET_CLIENT_OUTPUT)")
    return LArCV1JobConfig(
        inputs=tuple(args.input), output=args.output, producers=tuple(args.producer), service=args.service,
        broker=args.broker, batch_size=args.batch_size, start=args.start, end=args.end,
        force=args.force, copy_input=args.copy_input, per_plane=args.per_plane,
        wire_codec=wire_codec(args),
        checkpoint=args.checkpoint, resume=args.resume, max_event_attempts=args.max_event_attempts,
        on_error=args.on_error, connect_timeout=args.connect_timeout, service_wait=args.service_wait,
        drain_timeout=args.drain_timeout,
        regions=None if args.regions is None else Regions.load(args.regions),
        client=ClientConfig(timeout=args.timeout, retries=args.retries, window=args.window,
                            curve=peer_keys(args.curve_secret, args.curve_server, server_key)),
    )


def run_job(job: Callable[[], tuple[str, JobStats]], again: Optional[Sequence[str]] = None) -> int:
    """Run a LArCV1 job, log its summary or why it failed, and return the exit status: 0 done, 1 failed,
    2 bad options or input, 3 done but events were skipped (``--on-error skip``), 128 + the signal when stopped
    by one (143 SIGTERM, 130 SIGINT).  ``job`` returns the output path and the summary; ``again``: the job's
    command line, for the command that resumes a stopped job."""
    try:
        output, summary = job()
    except JobInterrupted as exc:
        log.warning("%s", exc)
        if again is not None:
            resume = ["--resume"] if exc.resumable and "--resume" not in again else []
            log.warning("to go on: %s", shlex.join([*again, *resume]))
        return cfg.EXIT_SIGNAL + exc.signum
    except (ConfigError, DataError) as exc:
        log.error("%s", exc)
        return cfg.exit_status(exc)
    except SSNetError as exc:
        log.error("job failed, no output written: %s", exc)
        return cfg.exit_status(exc)
    except KeyboardInterrupt as exc:
        log.error("interrupted, no output written")
        return cfg.exit_status(exc)
    log.info("wrote %s: %s", output, summary.text())
    if summary.skipped:
        log.error("%d event(s) failed and are not in %s; they are listed in %s.failed.json", len(summary.skipped),
                  output, output)
        return cfg.EXIT_SKIPPED
    return cfg.EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg.configure_logging(args.log_level, "ssnet-client")

    def job() -> tuple[str, JobStats]:
        found = broker_from_file(args)  # --broker-file: wait for the broker's endpoint file
        if found is not None:
            args.broker = found.frontend
        config = config_from_args(
            args, None if found is None or found.curve_public is None else found.curve_public.encode("ascii"))
        registry = None
        if args.metrics_port:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        progress = ProgressReport(args.progress, sys.stderr, log_interval=args.log_interval)
        client = SimpleLArCV1Client(config, registry=registry, progress=progress)
        if registry is not None:  # /metrics (job progress too), /livez, /readyz: the broker answered
            from ssnet_client.metrics import job_readiness
            from ssnet_common.metrics import serve_metrics

            serve_metrics(registry, args.metrics_port, args.metrics_addr, ready=lambda: job_readiness(client))
        log.info("processing entries [%d, %d) of %s through service %r at %s", config.start, client.stop,
                 ", ".join(config.inputs), config.service, config.broker)
        for signum in (signal.SIGTERM, signal.SIGINT):  # scancel and preemption send SIGTERM
            signal.signal(signum, lambda number, frame: client.request_stop(number))
        with progress:
            return config.output, client.run()

    return run_job(job, ["ssnet-client", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
