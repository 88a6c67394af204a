"""``ssnet-client``: run LArCV1 files through an ssnet service and write the replies to a LArCV1 file."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, TextIO

from ssnet_client.base import ClientConfig
from ssnet_client.jobs import CONNECT_TIMEOUT, SERVICE_WAIT, JobStats
from ssnet_client.larcv1_client import (
    DRAIN_TIMEOUT,
    MAX_EVENT_ATTEMPTS,
    ON_ERROR,
    JobInterrupted,
    LArCV1JobConfig,
    SimpleLArCV1Client,
)
from ssnet_common import config as cfg
from ssnet_common.curve import add_peer_options, peer_keys
from ssnet_common.errors import ConfigError, LArCV1Error, SSNetError
from ssnet_common.protocol import CLIENT_CONNECT
from ssnet_common.rendezvous import add_broker_options, broker_from_file
from ssnet_data.regions import Regions

log = logging.getLogger(__name__)

EXIT_SKIPPED = 3  # the job finished, but events that failed for good were left out (--on-error skip)
PROGRESS_LOG_PERIOD = 10.0  # seconds between progress log lines when not on a terminal


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(
        prog="ssnet-client",
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
    options.add("--connect-timeout", default=CONNECT_TIMEOUT, type=cfg.positive_float,
                help="seconds the broker has to answer before the first request; else exit 1 at once")
    options.add("--service-wait", default=SERVICE_WAIT, type=cfg.non_negative_float,
                help="seconds to wait for a worker of the service before the first request; else exit 1")
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
    options.add("--compression", default="none", choices=("none", "zlib"), help="compress the arrays sent")
    options.add("--checkpoint", default=0, type=cfg.non_negative_int,
                help="keep finished entries in chunk files of this many entries beside the output "
                     "(<output>.chunks/), so a failed run can be resumed; 0: off")
    options.add_flag("--resume", help="continue a run from the checkpoint chunks it left (needs --checkpoint)")
    options.add("--regions", default=None,
                help="JSON file of boxes per plane (for all events and per event, in wire/tick coordinates): send "
                     "only those crops and write whole views that are zero outside them (see ssnet_data.regions)")
    options.add("--progress", default="auto", choices=("auto", "bar", "log", "none"),
                help="progress display: a bar on a terminal, periodic log lines otherwise (auto)")
    cfg.add_common_options(options)
    return parser


class ProgressReport:
    """A job's progress: tqdm's bar (smoothed rate, ETA) on a terminal; a log line every few seconds otherwise."""

    def __init__(self, mode: str, stream: TextIO) -> None:
        if mode == "auto":
            mode = "bar" if stream.isatty() else "log"
        self.mode = mode
        self.stream = stream
        self.next_log = 0.0
        self._bar: Optional[Any] = None

    def __call__(self, done: int, total: int, seconds: float) -> None:
        if self.mode == "bar":
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="event", file=self.stream, dynamic_ncols=True, smoothing=0.1)
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._bar.close()
        elif self.mode == "log" and (time.monotonic() >= self.next_log or done == total):
            self.next_log = time.monotonic() + PROGRESS_LOG_PERIOD
            rate = done / seconds if seconds > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else None
            log.info("%d/%d events, %.2f events/s, ETA %s", done, total, rate,
                     "--:--" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta)))


def config_from_args(args: argparse.Namespace, server_key: Optional[bytes] = None) -> LArCV1JobConfig:
    """The job from parsed options; ``server_key``: the broker's CURVE public key from its endpoint file."""
    if not args.input:
        raise ConfigError("no input file: give --input FILE (or SSNET_CLIENT_INPUT)")
    if not args.output:
        raise ConfigError("no output file: give --output FILE (or SSNET_CLIENT_OUTPUT)")
    return LArCV1JobConfig(
        inputs=tuple(args.input), output=args.output, producers=tuple(args.producer), service=args.service,
        broker=args.broker, batch_size=args.batch_size, start=args.start, end=args.end,
        copy_input=args.copy_input, per_plane=args.per_plane,
        compression=None if args.compression == "none" else args.compression,
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
        return 128 + exc.signum
    except (ConfigError, LArCV1Error) as exc:
        log.error("%s", exc)
        return 2
    except SSNetError as exc:
        log.error("job failed, no output written: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted, no output written")
        return 130
    log.info("wrote %s: %s", output, summary.text())
    if summary.skipped:
        log.error("%d event(s) failed and are not in %s; they are listed in %s.failed.json", len(summary.skipped),
                  output, output)
        return EXIT_SKIPPED
    return 0


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

            from ssnet_common.metrics import serve_metrics

            registry = CollectorRegistry()
            serve_metrics(registry, args.metrics_port, args.metrics_addr)
        client = SimpleLArCV1Client(config, registry=registry, progress=None if args.progress == "none"
                                    else ProgressReport(args.progress, sys.stderr))
        log.info("processing entries [%d, %d) of %s through service %r at %s", config.start, client.stop,
                 ", ".join(config.inputs), config.service, config.broker)
        for signum in (signal.SIGTERM, signal.SIGINT):  # scancel and preemption send SIGTERM
            signal.signal(signum, lambda number, frame: client.request_stop(number))
        return config.output, client.run()

    return run_job(job, ["ssnet-client", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
