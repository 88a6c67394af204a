"""``ssnet-local``: the whole system on one machine without Docker.

Starts a broker and N workers as subprocesses on private ``ipc://`` endpoints, runs the LArCV1 client job
to completion in this process, stops everything, and exits non-zero if anything failed.  By default it runs the
repository's demo file through SSNet workers (``--kind ssnet``: the default CPU engine on the repository's tiny
model, any model directory with ``--model-dir``); ``--kind echo`` sends every image through the system and back
unchanged (the output then holds the input's images: the round-trip check); ``--kind dummy`` answers zeros named
``dummy`` (the original design's plumbing test).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from ssnet_client.base import Client, ClientConfig
from ssnet_client.cli import add_progress_options, run_job
from ssnet_client.jobs import JobStats, add_wire_codec_option, wire_codec
from ssnet_client.larcv1_client import LArCV1JobConfig, SimpleLArCV1Client
from ssnet_client.progress import ProgressReport
from ssnet_common import config as cfg
from ssnet_common.curve import CurveKeys
from ssnet_common.errors import ConfigError, SSNetError
from ssnet_common.files import check_output
from ssnet_data.regions import Regions
from ssnet_data.services import plane_service

log = logging.getLogger(__name__)

DEMO_FILE = Path("data") / "demo" / "ssnet_demo.root"
TINY_MODEL = Path("models") / "tiny"
STARTUP_TIMEOUT = 120.0  # seconds for the workers to register (model loading included)
KINDS = ("ssnet", "echo", "dummy")  # the first is the default
PLANES = (0, 1, 2)


def shipped(path: Path) -> str:
    """A file shipped with the repository: under the current directory, else in the checkout this runs from."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / path).exists():
            return str(base / path)
    return str(path)


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(
        prog="ssnet-local", package="ssnet-client",
        description="Run broker, workers and the LArCV1 client job on this machine (no Docker): process a LArCV1 "
                    "file through N workers and write the output file; exits non-zero if anything failed.",
    )
    options = cfg.EnvOptions(parser, "SSNET_LOCAL_")
    options.add("--kind", default=KINDS[0], choices=KINDS,
                help="worker kind: ssnet (the SSNet chain on --model-dir), echo (images back unchanged) or dummy "
                     "(zeros named 'dummy', as the original design)")
    options.add("--workers", default=2, type=cfg.positive_int, help="number of worker processes")
    options.add("--input", default=None, help="input LArCV1 file (default: the repository's demo file)")
    options.add("--output", default=None, help="output LArCV1 file (default: out/<input name>_<kind>.root)")
    options.add_flag("--force", help="replace the output file if it exists (else the job refuses to start)")
    options.add("--producer", default="wire", help="Image2D producer to send")
    options.add("--batch-size", default=1, type=cfg.positive_int, help="events per request")
    options.add("--regions", default=None, help="JSON file of boxes to send instead of whole images, as "
                                                "ssnet-client --regions")
    options.add("--window", default=8, type=cfg.positive_int, help="requests in flight at once")
    options.add("--slots", default=1, type=cfg.positive_int,
                help="requests each worker holds at once (ssnet-worker --slots: SSNet runs them as shared forward "
                     "passes)")
    add_wire_codec_option(options)
    options.add("--heartbeat-interval", default=1.0, type=cfg.positive_float,
                help="broker/worker heartbeat interval (seconds)")
    options.add_flag("--per-plane", help="ssnet: one request per plane to services ssnet_plane<p>, with "
                                         "--workers workers for each plane")
    options.add("--model-dir", default=None, help="ssnet: model directory (default: the repository's tiny model)")
    options.add("--weights", default=None, nargs="+", help="ssnet: per-plane weights, as ssnet-worker --ssnet-weights")
    options.add("--engine", default="auto", choices=("auto", "onnx", "torch", "caffe", "opencv"),
                help="ssnet: inference engine (see ssnet-worker --help)")
    options.add("--device", default="cpu", help="ssnet: cpu or cuda:N, for every worker")
    options.add("--log-level", default="INFO", type=cfg.log_level, help="logging level of every process")
    add_progress_options(options)
    return parser


def worker_commands(args: argparse.Namespace) -> tuple[str, list[list[str]]]:
    """The service the client asks for, and one ``ssnet-worker`` argument list per worker to start."""
    kind_args = ["--kind", args.kind, "--slots", str(args.slots)]
    if args.kind == "ssnet":
        kind_args += ["--ssnet-model-dir", args.model_dir or shipped(TINY_MODEL), "--ssnet-engine", args.engine,
                      "--ssnet-device", args.device]
        if args.weights:
            kind_args += ["--ssnet-weights", *args.weights]
    if not args.per_plane:
        return args.kind, [kind_args] * args.workers
    if args.kind != "ssnet":
        raise ConfigError("--per-plane needs --kind ssnet")
    per_plane = [[*kind_args, "--service", plane_service(args.kind, p)] for p in PLANES]
    return args.kind, [command for command in per_plane for _ in range(args.workers)]


Lines = Callable[[str], None]
"""Where the log lines of the stack's processes go (``ProgressReport.write``: above a progress bar)."""


class LocalStack:
    """A broker and its workers, processes of this machine on private ``ipc://`` endpoints under ``root``;
    workers may join at any time (:meth:`add_worker`), and the broker may be started again on the same endpoints.
    ``lines``: a function given each line the processes log (their stderr, read by a thread per process); by
    default they write to this process's stderr themselves."""

    def __init__(self, root: Path, heartbeat: float, log_level: str, lines: Optional[Lines] = None) -> None:
        self.root = root
        self.frontend, self.backend = f"ipc://{root}/frontend", f"ipc://{root}/backend"
        self.common = ["--heartbeat-interval", str(heartbeat), "--log-level", log_level]
        self.lines = lines
        self.brokers: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._relays: list[threading.Thread] = []

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        if self.lines is None:
            return subprocess.Popen(argv)
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        relay = threading.Thread(target=_relay, args=(proc, self.lines), name=f"ssnet-relay-{proc.pid}",
                                 daemon=True)
        relay.start()
        self._relays.append(relay)
        return proc

    def start_broker(self, *extra: str) -> subprocess.Popen[bytes]:
        proc = self._start([sys.executable, "-m", "ssnet_broker", "--frontend", self.frontend,
                            "--backend", self.backend, *self.common, *extra])
        self.brokers.append(proc)
        return proc

    def add_worker(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        proc = self._start([sys.executable, "-m", "ssnet_worker", "--broker", self.backend, *argv, *self.common])
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        stop(self.workers)  # workers first, so they can say goodbye to the broker
        stop(self.brokers)
        for relay in self._relays:  # the processes have exited: their last lines are out soon
            relay.join(5.0)


def _relay(proc: subprocess.Popen[bytes], lines: Lines) -> None:
    assert proc.stderr is not None
    with proc.stderr:
        for raw in proc.stderr:
            lines(raw.decode("utf-8", errors="replace"))


@contextmanager
def local_stack(heartbeat: float, log_level: str, lines: Optional[Lines] = None) -> Iterator[LocalStack]:
    """A :class:`LocalStack` in a temporary directory, stopped and removed on leaving."""
    stack = LocalStack(Path(tempfile.mkdtemp(prefix="ssnet-local-")), heartbeat, log_level, lines)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(stack.root, ignore_errors=True)


@contextmanager
def services(
    workers: list[list[str]], heartbeat: float, log_level: str, lines: Optional[Lines] = None
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A broker and one worker per argument list on private endpoints; yields (frontend, worker processes)."""
    with local_stack(heartbeat, log_level, lines) as stack:
        stack.start_broker()
        for argv in workers:
            stack.add_worker(argv)
        yield stack.frontend, list(stack.workers)


def stop(procs: Sequence[subprocess.Popen[Any]], timeout: float = 15.0) -> None:
    """SIGTERM, then wait; kill what does not stop in ``timeout`` seconds.  The one way the local stack (here,
    the tests and the benchmarks) stops its processes: stop workers and clients first, then the broker, so that
    they can say goodbye to it."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("process %d did not stop in time: killing it", proc.pid)
            proc.kill()
            proc.wait()


def wait_for_workers(frontend: str, service: str, workers: list[subprocess.Popen[bytes]],
                     curve: Optional[CurveKeys] = None) -> None:
    """Ask the broker (MMI) until ``service`` has a worker; fail early if every worker has exited."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with Client(frontend, ClientConfig(timeout=1.0, retries=0, curve=curve)) as client:
        while True:
            try:
                if client.has_service(service):
                    return
            except SSNetError:
                pass  # broker still starting: ask again
            if all(w.poll() is not None for w in workers):
                codes = [w.returncode for w in workers]
                raise ConfigError(f"every worker exited before registering (exit codes {codes})")
            if time.monotonic() > deadline:
                raise ConfigError(f"no worker registered for service {service!r} within {STARTUP_TIMEOUT:g} s")
            time.sleep(0.1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg.configure_logging(args.log_level, "ssnet-local")
    source = args.input or shipped(DEMO_FILE)
    output = args.output or str(Path("out") / f"{Path(source).stem}_{args.kind}.root")

    def job() -> tuple[str, JobStats]:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        check_output(output, args.force)  # first: before the workers load their models
        if not Path(source).is_file():
            raise ConfigError(f"input file {source!r} does not exist")
        regions = None if args.regions is None else Regions.load(args.regions)
        service, commands = worker_commands(args)
        progress = ProgressReport(args.progress, sys.stderr, log_interval=args.log_interval)
        with progress, services(commands, args.heartbeat_interval, args.log_level, progress.write) as (
                frontend, workers):
            for name in [plane_service(service, p) for p in PLANES] if args.per_plane else [service]:
                wait_for_workers(frontend, name, workers)
            config = LArCV1JobConfig(
                inputs=(source,), output=output, producers=(args.producer,), service=service, broker=frontend,
                batch_size=args.batch_size, per_plane=args.per_plane, regions=regions, force=args.force,
                wire_codec=wire_codec(args), client=ClientConfig(window=args.window),
            )
            return output, SimpleLArCV1Client(config, progress=progress).run()

    return run_job(job)


if __name__ == "__main__":
    sys.exit(main())
