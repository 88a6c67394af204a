"""``ssnet-worker``: run one worker against a broker.

::

    ssnet-worker --broker tcp://broker:5560 --kind dummy [--service NAME] [--heartbeat-interval S] ...

Every option has an ``SSNET_WORKER_*`` environment default (``--heartbeat-interval`` reads
``SSNET_WORKER_HEARTBEAT_INTERVAL``); ``--help`` lists them.  The service defaults to the kind's name.
Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a configuration error, 1 for a runtime error.

Adding a worker kind
--------------------
``KINDS`` maps each ``--kind`` name to a :class:`WorkerKind`: a description for ``--help``, a factory and,
optionally, a function adding the kind's own options.  A new kind (a hypothetical ``mask`` kind here) adds one
entry::

    def _mask_options(options: EnvOptions) -> None:
        options.add("--mask-value", default=0.0, type=float, help="mask kind: value written over masked pixels")

    def _make_mask(config: WorkerConfig, args: argparse.Namespace, registry: CollectorRegistry) -> Worker:
        from ssnet_worker.mask import MaskWorker   # import heavy dependencies here, not at module level

        return MaskWorker(config, value=args.mask_value, registry=registry)

    KINDS["mask"] = WorkerKind("masks dead wires", _make_mask, _mask_options)

The kind's options go to the one parser (so ``--help`` shows them); name them after the kind so they cannot clash
(the ``ssnet`` kind's older options, ``--threshold``, ``--planes``..., predate that rule and keep their names for
the job scripts that use them).  They are parsed whatever the kind, and only the factory of the chosen kind reads
them.  A factory raises :class:`ConfigError` for bad option values (exit status 2).  Load models in the
worker's :meth:`~ssnet_worker.base.Worker.setup`, which runs before the worker registers with the broker.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from prometheus_client import CollectorRegistry

from ssnet_common.config import (
    EnvOptions,
    add_common_options,
    configure_logging,
    endpoint,
    non_negative_float,
    positive_float,
    positive_int,
)
from ssnet_common.errors import ConfigError, SSNetError
from ssnet_common.protocol import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, WORKER_CONNECT
from ssnet_common.rendezvous import EndpointWatcher, add_broker_file_options, broker_from_file
from ssnet_worker.base import Worker, WorkerConfig
from ssnet_worker.dummy import DummyLArCV1Worker, EchoWorker, SleepWorker

log = logging.getLogger(__name__)

PROG = "ssnet-worker"


@dataclass(frozen=True)
class WorkerKind:
    """One ``--kind``: a description for ``--help``, a factory and (optionally) the kind's own options."""

    description: str
    factory: Callable[[WorkerConfig, argparse.Namespace, CollectorRegistry], Worker]
    add_options: Optional[Callable[[EnvOptions], None]] = None


def _dummy_options(options: EnvOptions) -> None:
    options.add("--dummy-delay", default=0.0, type=non_negative_float,
                help="dummy kind: seconds each request takes, to simulate a network (debugging, tests)")


def _gpu_id(text: str) -> Optional[int]:
    if text.strip().lower() in ("", "none", "cpu"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"GPU id must be a number, or 'none' for the CPU: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"GPU id must be 0 or more, got {text!r}")
    return value


def _device(text: str) -> str:
    from ssnet_worker.engines import parse_device

    try:
        return parse_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _planes(text: str) -> Optional[tuple[int, ...]]:
    if not text.strip():
        return None
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"planes must be comma-separated numbers, e.g. 0,1,2: {text!r}") from None


def _ssnet_options(options: EnvOptions) -> None:
    options.add("--engine", default="auto", choices=("torch", "onnx", "caffe", "opencv", "auto"),
                help="ssnet kind: inference engine (auto: torch on a CUDA device, else onnx when installed, "
                     "else genuine pycaffe, else OpenCV DNN)")
    options.add("--model-dir", default=None,
                help="ssnet kind: directory with the prototxt and per-plane caffemodels (and models.json)")
    options.add("--prototxt", default=None, help="ssnet kind: network description, relative to --model-dir")
    options.add("--weights", default=None,
                help="ssnet kind: plane0.caffemodel,plane1...,plane2... relative to --model-dir "
                     "(one file: every plane); default: models.json in --model-dir")
    options.add("--device", default="cpu", type=_device,
                help="ssnet kind: cpu or cuda:N (N among CUDA_VISIBLE_DEVICES)")
    options.add("--gpu", default=None, type=_gpu_id,
                help="ssnet kind: CUDA device id, the same as --device cuda:N (kept for older job scripts)")
    options.add("--precision", default="float32", choices=("float32", "float16"),
                help="ssnet kind: arithmetic of the net (float16: torch engine on a CUDA device only)")
    options.add("--max-batch", default=8, type=positive_int,
                help="ssnet kind: most images of one plane and shape per forward pass (torch and onnx engines; "
                     "caffe and opencv run one at a time)")
    options.add("--planes", default=None, type=_planes,
                help="ssnet kind: planes to load, e.g. 0,1,2 (default: the plane of an ssnet_plane<p> service, "
                     "else every plane with weights)")
    options.add("--threads", default=None, type=positive_int, help="ssnet kind: CPU threads of the engine")
    options.add_flag("--preprocess", default=True,
                     help="ssnet kind: set pixels below --threshold to 0 and clip above --clip before the net")
    options.add("--threshold", default=10.0, type=float,
                help="ssnet kind: ADC threshold; scores are zeroed where the input is below it")
    options.add("--clip", default=500.0, type=float, help="ssnet kind: ADC value pixels are clipped to")
    options.add("--output-names", default="ssnet_shower,ssnet_track",
                help="ssnet kind: names of the shower and track score images, comma-separated")
    options.add("--output-dtype", default="float16", choices=("float16", "float32"),
                help="ssnet kind: type of the scores sent back")


def _make_ssnet(config: WorkerConfig, args: argparse.Namespace, registry: CollectorRegistry) -> Worker:
    from ssnet_worker.ssnet import ModelSet, Preprocessing, SSNetWorker

    names = tuple(n.strip() for n in args.output_names.split(","))
    if len(names) != 2 or not all(names):
        raise ConfigError(f"--output-names needs two names (shower,track), got {args.output_names!r}")
    device = args.device
    if args.gpu is not None:
        if device not in ("cpu", f"cuda:{args.gpu}"):
            raise ConfigError(f"--gpu {args.gpu} and --device {device} disagree: give one of them")
        device = f"cuda:{args.gpu}"
    return SSNetWorker(
        config, ModelSet.from_options(args.model_dir, args.prototxt, args.weights),
        engine=args.engine, device=device, precision=args.precision, max_batch=args.max_batch,
        planes=args.planes, threads=args.threads,
        preprocessing=Preprocessing(args.preprocess, args.threshold, args.clip),
        output_names=(names[0], names[1]), output_dtype=args.output_dtype, registry=registry,
    )


KINDS: dict[str, WorkerKind] = {
    "dummy": WorkerKind(
        "replies zeros shaped like the first LArCV1 image product (original dummy worker)",
        lambda config, args, registry: DummyLArCV1Worker(config, registry=registry, delay=args.dummy_delay),
        _dummy_options,
    ),
    "echo": WorkerKind(
        "replies with the request payload unchanged",
        lambda config, args, registry: EchoWorker(config, registry=registry),
    ),
    "ssnet": WorkerKind("SSNet UResNet per wire plane (ONNX Runtime, PyTorch, genuine Caffe or OpenCV DNN)",
                        _make_ssnet, _ssnet_options),
    "sleep": WorkerKind(
        "sleeps for the seconds in payload frame 0, then echoes (tests of long requests)",
        lambda config, args, registry: SleepWorker(config, registry=registry),
    ),
}


def _batch_options(options: EnvOptions) -> None:
    from ssnet_worker.batch import add_options

    add_options(options)


def _make_batch(config: WorkerConfig, args: argparse.Namespace, registry: CollectorRegistry) -> Worker:
    from ssnet_worker.batch import from_args

    return from_args(config, args, registry)


KINDS["batch"] = WorkerKind(
    "serves training batches of LArCV1 entries to BatchClient (ssnet_worker.batch)", _make_batch, _batch_options,
)


def _kind_name(text: str) -> str:
    if text not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown worker kind {text!r} (choose from {', '.join(sorted(KINDS))})")
    return text


def build_parser(environ: Optional[dict[str, str]] = None) -> argparse.ArgumentParser:
    """The command-line parser; defaults come from ``environ`` (``os.environ`` if not given)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Majordomo (MDP/0.2) worker of ssnet-server: registers a service with the broker and "
        "answers its requests.  Kinds: " + "; ".join(f"{name}: {kind.description}" for name, kind in KINDS.items()),
    )
    options = EnvOptions(parser, "SSNET_WORKER_", environ)
    options.add("--broker", default=WORKER_CONNECT, type=endpoint, help="broker endpoint for workers")
    add_broker_file_options(options)
    options.add("--kind", default="dummy", type=_kind_name, help=f"worker kind ({', '.join(KINDS)})")
    options.add("--service", default=None, help="service name to register (default: the kind's name)")
    options.add(
        "--heartbeat-interval", default=HEARTBEAT_INTERVAL, type=positive_float, help="seconds between heartbeats",
    )
    options.add(
        "--heartbeat-liveness", default=HEARTBEAT_LIVENESS, type=positive_int,
        help="reconnect after this many heartbeat intervals without a word from the broker",
    )
    options.add("--reconnect-min", default=1.0, type=positive_float, help="first wait before reconnecting (s)")
    options.add(
        "--reconnect-max", default=32.0, type=positive_float,
        help="longest wait before reconnecting (s); waits double from --reconnect-min",
    )
    add_common_options(options)
    for name, kind in KINDS.items():
        if kind.add_options is not None:
            kind.add_options(options.group(f"--kind {name}", kind.description))
    return parser


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """The frozen worker configuration from parsed options; :class:`ConfigError` if they do not fit together."""
    return WorkerConfig(
        service=args.service if args.service is not None else args.kind,
        broker=args.broker,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_liveness=args.heartbeat_liveness,
        reconnect_min=args.reconnect_min,
        reconnect_max=args.reconnect_max,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
    )


def main(argv: Optional[Sequence[str]] = None, environ: Optional[dict[str, str]] = None) -> int:
    """Run a worker until it is stopped; return the exit status."""
    try:
        args = build_parser(environ).parse_args(argv)
    except SystemExit as exc:  # --help, or a bad option (argparse has printed why)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    configure_logging(args.log_level, PROG)
    try:
        found = broker_from_file(args, argv)  # --broker-file: wait for the broker's endpoint file
        if found is not None:
            args.broker = found.backend
        config = config_from_args(args)
        worker = KINDS[args.kind].factory(config, args, CollectorRegistry())
        log.info("starting %s worker for service %r, broker %s", args.kind, config.service, config.broker)
        if found is None:
            return worker.run()
        # Follow the file: when it names another broker or is gone, finish the request and stop (exit 0).
        watcher = EndpointWatcher(args.broker_file, found, lambda reason: worker.stop()).start()
        try:
            return worker.run()
        finally:
            watcher.close()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except SSNetError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed (e.g. during setup)
        log.info("interrupted")
        return 130
