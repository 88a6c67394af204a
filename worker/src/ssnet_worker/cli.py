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
        options.add("--mask-value", default=0.0, type=float, help="value written over masked pixels")

    def _make_mask(config: WorkerConfig, args: argparse.Namespace, registry: CollectorRegistry) -> Worker:
        from ssnet_worker.mask import MaskWorker   # import heavy dependencies here, not at module level

        return MaskWorker(config, value=args.mask_value, registry=registry)

    KINDS["mask"] = WorkerKind("masks dead wires", _make_mask, _mask_options)

The kind's options go to the one parser, under the kind's own heading in ``--help``; name them after the kind
(``--mask-*``, variables ``SSNET_WORKER_MASK_*``) so they cannot clash.  The ``ssnet`` kind's options predate
that rule: each keeps its older unprefixed spelling (``--threshold``) as an alias.  They are parsed whatever the
kind, and only the factory of the chosen kind reads them. A factory raises :class:`ConfigError` for bad option
values (exit status 2). Load models in the worker's :meth:`~ssnet_worker.base.Worker.setup`, which runs before the
worker registers with the broker.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry

from ssnet_common.config import (
    SERVICE_EXIT_STATUSES,
    ArgumentParser,
    EnvOptions,
    add_common_options,
    configure_logging,
    exit_status,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from ssnet_common.curve import add_peer_options, peer_keys
from ssnet_common.errors import ConfigError, DataError, SSNetError
from ssnet_common.protocol import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, WORKER_CONNECT
from ssnet_common.rendezvous import EndpointWatcher, add_broker_options, broker_from_file
from ssnet_data.larcv1msg import EventId
from ssnet_worker.base import BATCH_WAIT, MAX_SLOTS, Worker, WorkerConfig
from ssnet_worker.dummy import DummyLArCV1Worker, EchoWorker, SleepWorker
from ssnet_worker.tiling import STITCH_MODES

log = logging.getLogger(__name__)

PROG = "ssnet-worker"


@dataclass(frozen=True)
class WorkerKind:
    """One ``--kind``: a description for ``--help``, a factory and (optionally) the kind's own options."""

    description: str
    factory: Callable[[WorkerConfig, argparse.Namespace, CollectorRegistry], Worker]
    add_options: Optional[Callable[[EnvOptions], None]] = None


def _event_id(text: str) -> EventId:
    try:
        run, subrun, event = (int(part) for part in text.split("/"))
        return EventId(run, subrun, event)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an event is RUN/SUBRUN/EVENT (e.g. 5014/102/3002): {text!r}") from None


def _dummy_options(options: EnvOptions) -> None:
    options.add("--dummy-delay", default=0.0, type=non_negative_float,
                help="seconds each request takes, to simulate a network (debugging, tests)")
    options.add("--dummy-crash-on", default=None, type=_event_id,
                help="RUN/SUBRUN/EVENT: exit at once (status 70, no goodbye to the broker) on a request holding "
                     "this event, as a poison event would (drills, tests)")


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


def _plane(text: str) -> int:
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"a plane is a number (e.g. --ssnet-planes 0 1 2): {exc}") from None


def _tile(text: str) -> Optional[Tuple[int, int]]:
    """``ROWSxCOLS`` or ``N`` (square); ``none``: whole images, no tiling."""
    if text.strip().lower() in ("none", "off", "0"):
        return None
    rows, sep, cols = text.lower().partition("x")
    try:
        size = (int(rows), int(cols if sep else rows))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a tile is ROWSxCOLS (e.g. 512x512), N, or none: {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"a tile needs at least 1x1 pixels: {text!r}")
    return size


def _ssnet_options(options: EnvOptions) -> None:
    """The ``--ssnet-*`` options; each older unprefixed spelling (``--threshold``) stays as an alias."""
    def add(name: str, **kwargs: Any) -> None:
        if "choices" in kwargs:
            kwargs["help"] = f"{kwargs['help']}; one of {', '.join(kwargs['choices'])}"
        kwargs.setdefault("metavar", name.upper().replace("-", "_"))
        options.add(f"--ssnet-{name}", f"--{name}", **kwargs)

    add("engine", default="auto", choices=("torch", "onnx", "caffe", "opencv", "auto"),
        help="inference engine (auto: torch on a CUDA device, else onnx when installed, else genuine pycaffe, "
             "else OpenCV DNN)")
    add("model-dir", default=None, help="directory with the prototxt and per-plane caffemodels (and models.json)")
    add("prototxt", default=None, help="network description, relative to --ssnet-model-dir")
    add("weights", default=None, nargs="+",
        help="caffemodel of plane 0, 1, 2 relative to --ssnet-model-dir (one file: every plane); "
             "default: models.json in --ssnet-model-dir")
    add("device", default="cpu", type=_device, help="cpu or cuda:N (N among CUDA_VISIBLE_DEVICES)")
    add("gpu", default=None, type=_gpu_id,
        help="CUDA device id, the same as --ssnet-device cuda:N (kept for older job scripts)")
    add("precision", default="float32", choices=("float32", "float16"),
        help="arithmetic of the net (float16: torch engine on a CUDA device only)")
    add("max-batch", default=8, type=positive_int,
        help="most images of one plane and shape per forward pass (torch and onnx engines; caffe and opencv run "
             "one at a time)")
    add("planes", default=None, type=_plane, nargs="+",
        help="planes to load, e.g. 0 1 2 (default: the plane of an ssnet_plane<p> service, else every plane "
             "with weights)")
    add("threads", default=None, type=positive_int, help="CPU threads of the engine")
    options.add_flag("--ssnet-preprocess", "--preprocess", default=True,
                     help="set pixels below --ssnet-threshold to 0 and clip above --ssnet-clip before the net")
    add("threshold", default=10.0, type=float, help="ADC threshold; scores are zeroed where the input is below it")
    add("clip", default=500.0, type=float, help="ADC value pixels are clipped to")
    add("output-names", default=("ssnet_shower", "ssnet_track"), nargs=2, metavar=("SHOWER", "TRACK"),
        help="names of the shower and track score images")
    add("output-dtype", default="float16", choices=("float16", "float32"), help="type of the scores sent back")
    add("tile", default="net", type=lambda text: "net" if text == "net" else _tile(text),
        help="images larger than ROWSxCOLS run as tiles of that size, stitched back (net: the input size of the "
             "prototxt, 512x512 for SSNet; none: whole images)")
    add("tile-overlap", default=0, type=non_negative_int,
        help="pixels by which neighbouring tiles overlap at least (the last tile of a row or column, aligned to the "
             "image's edge, may overlap more)")
    add("stitch", default="center", choices=STITCH_MODES,
        help="in an overlap, the score of the tile in which the pixel lies farthest from a tile border "
             "(center), or of the last tile painted (overwrite)")


def _make_ssnet(config: WorkerConfig, args: argparse.Namespace, registry: CollectorRegistry) -> Worker:
    from ssnet_worker.ssnet import ModelSet, Preprocessing, SSNetWorker, Tiling

    shower, track = (name.strip() for name in args.ssnet_output_names)
    if not shower or not track or shower == track:
        raise ConfigError(f"--ssnet-output-names needs two different names, got {args.ssnet_output_names}")
    device = args.ssnet_device
    if args.ssnet_gpu is not None:
        if device not in ("cpu", f"cuda:{args.ssnet_gpu}"):
            raise ConfigError(f"--ssnet-gpu {args.ssnet_gpu} and --ssnet-device {device} disagree: give one of them")
        device = f"cuda:{args.ssnet_gpu}"
    return SSNetWorker(
        config, ModelSet.from_options(args.ssnet_model_dir, args.ssnet_prototxt, args.ssnet_weights),
        engine=args.ssnet_engine, device=device, precision=args.ssnet_precision, max_batch=args.ssnet_max_batch,
        planes=None if args.ssnet_planes is None else tuple(args.ssnet_planes), threads=args.ssnet_threads,
        preprocessing=Preprocessing(args.ssnet_preprocess, args.ssnet_threshold, args.ssnet_clip),
        output_names=(shower, track), output_dtype=args.ssnet_output_dtype,
        tiling=Tiling(args.ssnet_tile, args.ssnet_tile_overlap, args.ssnet_stitch), registry=registry,
    )


KINDS: dict[str, WorkerKind] = {
    "dummy": WorkerKind(
        "replies zeros shaped like the first LArCV1 image product (original dummy worker)",
        lambda config, args, registry: DummyLArCV1Worker(config, registry=registry, delay=args.dummy_delay,
                                                         crash_on=args.dummy_crash_on),
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
    parser = ArgumentParser(
        prog=PROG, environ=environ, package="ssnet-worker", epilog=SERVICE_EXIT_STATUSES,
        description="Majordomo (MDP/0.2) worker of ssnet-server: registers a service with the broker and "
        "answers its requests.  Kinds: " + "; ".join(f"{name}: {kind.description}" for name, kind in KINDS.items()),
    )
    options = EnvOptions(parser, "SSNET_WORKER_")
    add_broker_options(options, WORKER_CONNECT, "broker endpoint for workers")
    add_peer_options(options)
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
    options.add(
        "--slots", default=1, type=positive_int,
        help=f"requests the worker holds at once: this many broker sessions (MDP workers of the service, each with "
             f"its own heartbeats) around one model; SSNet runs the images of all requests in hand as shared forward "
             f"passes (torch and onnx engines; at most {MAX_SLOTS})",
    )
    options.add(
        "--batch-wait-ms", default=BATCH_WAIT * 1000, type=non_negative_float,
        help="with --slots above 1: how long the first request in hand waits for the other slots' requests before "
             "the batch starts (ms)",
    )
    add_common_options(options)
    for name, kind in KINDS.items():
        if kind.add_options is not None:
            kind.add_options(options.group(f"--kind {name}", kind.description))
    return parser


def config_from_args(args: argparse.Namespace, server_key: Optional[bytes] = None) -> WorkerConfig:
    """The frozen worker configuration from parsed options; :class:`ConfigError` if they do not fit together.
    ``server_key``: the broker's CURVE public key when its endpoint file gave it."""
    return WorkerConfig(
        service=args.service if args.service is not None else args.kind,
        broker=args.broker,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_liveness=args.heartbeat_liveness,
        reconnect_min=args.reconnect_min,
        reconnect_max=args.reconnect_max,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        slots=args.slots,
        batch_wait=args.batch_wait_ms / 1000,
        curve=peer_keys(args.curve_secret, args.curve_server, server_key),
    )


def main(argv: Optional[Sequence[str]] = None, environ: Optional[dict[str, str]] = None) -> int:
    """Run a worker until it is stopped; return the exit status."""
    try:
        args = build_parser(environ).parse_args(argv)
    except SystemExit as exc:  # --help, or a bad option (argparse has printed why)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    configure_logging(args.log_level, PROG)
    try:
        found = broker_from_file(args)  # --broker-file: wait for the broker's endpoint file
        if found is not None:
            args.broker = found.backend
        server_key = None if found is None or found.curve_public is None else found.curve_public.encode("ascii")
        config = config_from_args(args, server_key)
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
    except (ConfigError, DataError) as exc:  # bad options, model files or input files
        log.error("%s", exc)
        return exit_status(exc)
    except SSNetError as exc:
        log.error("%s", exc)
        return exit_status(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C before the signal handlers were installed (e.g. during setup)
        log.info("interrupted")
        return exit_status(exc)
