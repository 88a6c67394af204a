"""``ssnet-perf``: throughput and latency of a service through the broker, over a sweep of concurrency levels.

In the manner of Triton's ``perf_analyzer``: for each concurrency level (requests in flight, the
:class:`~ssnet_client.base.Client` window) it sends ``--warmup`` requests that are not measured, then measures
``--requests`` requests (or ``--duration`` seconds of them), and prints one table row per level: events/s, MB/s
of request + reply payload bytes, and percentiles of the per-request round trip.  The requests are the LArCV1
image messages ``ssnet-client`` sends (:func:`ssnet_data.larcv1msg.encode_images`: per image, producer name,
``ImageMeta`` dump with run/subrun/event ids, array), built up front from a small pool of events, synthetic
(:func:`synthetic_image`: sparse track-like charge) or read from a LArCV1 file, and sent in turn.  Every reply
must be a LArCV1 image message carrying the event ids sent; anything else counts in the ``errors`` column.

The pipeline is kept full while a level is measured: the measured interval runs from the arrival of the last
warm-up reply to the arrival of the last measured one, and the requests still in flight after it are received
but not counted.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, TextIO, Union

import numpy as np

from ssnet_client.base import Client, ClientConfig, Reply
from ssnet_client.jobs import add_wait_options, add_wire_codec_option, wait_for_service, wire_codec
from ssnet_common import config as cfg
from ssnet_common.curve import add_peer_options, peer_keys
from ssnet_common.errors import ConfigError, DataError, ProtocolError, RequestError, SSNetError
from ssnet_common.files import write_atomically
from ssnet_common.protocol import CLIENT_CONNECT, Frame, frames_nbytes
from ssnet_common.rendezvous import add_broker_options, broker_from_file
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images

if TYPE_CHECKING:
    from numpy.typing import NDArray

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (3, 512, 512)
DEFAULT_OCCUPANCY = 0.03
DEFAULT_CONCURRENCY = (1, 2, 4, 8)
PATTERNS = ("tracks", "random")
ADC_MIN, ADC_MAX = 10.0, 200.0  # charge of a nonzero pixel (ADC)
TRACK_LENGTH = (4, 24)          # pixels per track-like run, both included
TRACK_ROUNDS = 8                # rounds of tracks before the last pixels are placed at random
TICKS_PER_ROW = 6               # the synthetic metas: MicroBooNE's 6 ticks per row from tick 2400, 1 wire per column
FIRST_TICK = 2400
PERCENTILES = (50, 90, 99)
# The eight directions a track may run in: (rows, columns) per step.
_STEPS = np.array([(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)], dtype=np.int64)


# ------------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class PerfEvent:
    """One event to send: its ids and its images (meta, float32 pixels of shape ``meta.shape``) in plane order."""

    ids: EventId
    images: tuple[tuple[ImageMeta, NDArray[np.float32]], ...]


@dataclass(frozen=True)
class PerfRequest:
    """One request of the pool: its payload frames, the event ids every reply product must carry, its size."""

    frames: list[Frame]
    ids: tuple[EventId, ...]
    nbytes: int

    @property
    def events(self) -> int:
        return len(self.ids)


def synthetic_image(rng: np.random.Generator, rows: int, cols: int, occupancy: float,
                    pattern: str = "tracks") -> NDArray[np.float32]:
    """A sparse float32 wire-plane image: ``round(occupancy * rows * cols)`` pixels of charge between
    ``ADC_MIN`` and ``ADC_MAX``, the rest 0.  ``tracks``: short straight runs of 4 to 24 pixels in any of eight
    directions, each with its own charge level; ``random``: pixels at random positions."""
    if not 0.0 <= occupancy <= 1.0:
        raise ConfigError(f"occupancy must be a fraction between 0 and 1, got {occupancy!r}")
    if pattern not in PATTERNS:
        raise ConfigError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    size = rows * cols
    image = np.zeros(size, dtype=np.float32)
    target = round(occupancy * size)
    if target == 0:
        return image.reshape(rows, cols)
    positions = np.empty(0, dtype=np.int64)
    values = np.empty(0, dtype=np.float32)
    rounds = 0 if pattern == "random" else TRACK_ROUNDS
    for _ in range(rounds):
        if positions.size >= target:
            break
        new_positions, new_values = _tracks(rng, rows, cols, target - positions.size)
        positions, first = np.unique(np.concatenate([positions, new_positions]), return_index=True)
        values = np.concatenate([values, new_values])[first]
        order = np.argsort(first, kind="stable")  # back to the order drawn, so a cut keeps whole tracks
        positions, values = positions[order], values[order]
    if positions.size < target:  # random pattern, or tracks that keep landing on pixels already taken
        free = np.setdiff1d(np.arange(size, dtype=np.int64), positions, assume_unique=True)
        extra = rng.choice(free, size=target - positions.size, replace=False)
        positions = np.concatenate([positions, extra])
        values = np.concatenate([values, rng.uniform(ADC_MIN, ADC_MAX, extra.size).astype(np.float32)])
    image[positions[:target]] = values[:target]
    return image.reshape(rows, cols)


def _tracks(rng: np.random.Generator, rows: int, cols: int, wanted: int
            ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Flat positions and charges of track-like runs with about ``wanted`` pixels inside the image."""
    count = max(1, math.ceil(1.5 * wanted / (sum(TRACK_LENGTH) / 2)))
    lengths = rng.integers(TRACK_LENGTH[0], TRACK_LENGTH[1] + 1, count)
    steps = _STEPS[rng.integers(0, len(_STEPS), count)]
    start_rows, start_cols = rng.integers(0, rows, count), rng.integers(0, cols, count)
    levels = rng.uniform(ADC_MIN, ADC_MAX, count)
    along = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # step within its track
    row = np.repeat(start_rows, lengths) + along * np.repeat(steps[:, 0], lengths)
    col = np.repeat(start_cols, lengths) + along * np.repeat(steps[:, 1], lengths)
    charge = np.clip(np.repeat(levels, lengths) * rng.normal(1.0, 0.15, row.size), ADC_MIN, ADC_MAX)
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    return (row * cols + col)[inside], charge[inside].astype(np.float32)


def synthetic_meta(plane: int, rows: int, cols: int) -> ImageMeta:
    """A MicroBooNE-like meta: one wire per column from wire 0, 6 ticks per row from tick 2400."""
    height = float(rows * TICKS_PER_ROW)
    return ImageMeta(width=float(cols), height=height, rows=rows, cols=cols, origin_x=0.0,
                     origin_y=FIRST_TICK + height, plane=plane)


def synthetic_events(count: int, shape: Sequence[int], occupancy: float, *, pattern: str = "tracks", seed: int = 0,
                     run: int = 1, subrun: int = 0) -> list[PerfEvent]:
    """``count`` distinct events of ``shape`` = (planes, rows, cols), events 1..count of run/subrun."""
    planes, rows, cols = shape
    if min(planes, rows, cols) < 1:
        raise ConfigError(f"an event's shape must be at least 1 plane of 1 row and 1 column, got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    return [
        PerfEvent(EventId(run, subrun, number + 1), tuple(
            (synthetic_meta(plane, rows, cols), synthetic_image(rng, rows, cols, occupancy, pattern))
            for plane in range(planes)))
        for number in range(count)
    ]


def file_events(path: str, producer: str, count: int) -> list[PerfEvent]:
    """The first ``count`` entries of a LArCV1 file that hold images of ``producer``."""
    if not Path(path).is_file():
        raise ConfigError(f"input file {path!r} does not exist")
    from ssnet_data.larcv1 import LArCV1Reader

    reader = LArCV1Reader(path, producer)
    events: list[PerfEvent] = []
    for entry in reader:
        if entry.images:
            events.append(PerfEvent(EventId(entry.run, entry.subrun, entry.event),
                                    tuple((image.meta, image.pixels) for image in entry.images)))
        if len(events) == count:
            break
    if not events:
        raise ConfigError(f"{path}: no entry holds an image of producer {producer!r} ({len(reader)} entries)")
    return events


def build_requests(events: Sequence[PerfEvent], producer: str, batch_size: int = 1,
                   codec: Optional[str] = None) -> list[PerfRequest]:
    """Requests of ``batch_size`` consecutive events each (the pool is repeated to a multiple of it), as
    ``ssnet-client`` builds them: per image position one product of the events' images stacked."""
    if not events:
        raise ConfigError("no events to send")
    pool = list(events) * math.ceil(batch_size / len(events)) if len(events) < batch_size else list(events)
    pool = pool[:len(pool) - len(pool) % batch_size]
    requests = []
    for start in range(0, len(pool), batch_size):
        batch = pool[start:start + batch_size]
        layout = [meta.shape for meta, _ in batch[0].images]
        for event in batch[1:]:
            if [meta.shape for meta, _ in event.images] != layout:
                raise ConfigError(f"event {event.ids} has images of shapes {[m.shape for m, _ in event.images]}, "
                                  f"event {batch[0].ids} {layout}: --batch-size needs events of the same shapes")
        products = [
            ImageProduct(producer, tuple((event.images[i][0], event.ids) for event in batch),
                         np.stack([event.images[i][1] for event in batch]))
            for i in range(len(layout))
        ]
        frames = encode_images(products, codec)
        requests.append(PerfRequest(frames, tuple(event.ids for event in batch), frames_nbytes(frames)))
    return requests


def check_reply(outcome: Union[Reply, RequestError], request: PerfRequest) -> Optional[tuple[str, str]]:
    """None for a good reply; else (kind of problem, description)."""
    if isinstance(outcome, RequestError):
        return type(outcome).__name__, f"error reply: {outcome}"
    try:
        products = decode_images(outcome.payload)
    except ProtocolError as exc:
        return "not_larcv1", f"a reply that is not a LArCV1 image message: {exc}"
    for product in products:
        if product.ids != request.ids:
            return "event_ids", (f"reply product {product.name!r} carries event ids {[str(i) for i in product.ids]}, "
                                 f"sent {[str(i) for i in request.ids]}")
    return None


# ---------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Row:
    """One concurrency level's results: the table row and the CSV row."""

    concurrency: int
    requests: int      # measured requests answered with a good reply
    events: int        # events in them
    errors: int        # measured requests that failed (error reply, not a LArCV1 message, wrong event ids)
    seconds: float     # the measured interval
    events_per_s: float
    mb_per_s: float    # request + reply payload bytes of the good requests, 10**6 bytes per second
    p50_ms: float      # round trip per request, nan when no request succeeded
    p90_ms: float
    p99_ms: float

    COLUMNS = ("concurrency", "requests", "events", "errors", "seconds", "events_per_s", "mb_per_s", "p50_ms",
               "p90_ms", "p99_ms")
    HEADINGS = ("concurrency", "requests", "events", "errors", "seconds", "events/s", "MB/s", "p50 ms", "p90 ms",
                "p99 ms")

    def values(self) -> tuple[Union[int, float], ...]:
        return tuple(getattr(self, name) for name in self.COLUMNS)


def summarize(concurrency: int, round_trips: Sequence[float], events: int, errors: int, seconds: float,
              nbytes: int) -> Row:
    """A level's row from the round trips (seconds) of its good requests, the events in them, the failed
    requests, the measured interval and the payload bytes of the good requests."""
    rate = 1.0 / seconds if seconds > 0 else 0.0
    if round_trips:
        p50, p90, p99 = (float(v) * 1e3 for v in np.percentile(np.asarray(round_trips, dtype=np.float64), PERCENTILES))
    else:
        p50 = p90 = p99 = math.nan
    return Row(concurrency, len(round_trips), events, errors, seconds, events * rate, nbytes * rate / 1e6,
               p50, p90, p99)


class ErrorLog:
    """Logs the first problem of each kind (with its level), counts them all."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.count = 0

    def report(self, concurrency: int, kind: str, description: str) -> None:
        self.count += 1
        if kind not in self.seen:
            self.seen.add(kind)
            log.error("concurrency %d: %s (further problems of this kind are only counted)", concurrency,
                      description)


def measure_level(client: Client, service: str, pool: Sequence[PerfRequest], concurrency: int, *, warmup: int,
                  requests: Optional[int], duration: Optional[float], errors: ErrorLog,
                  clock: Callable[[], float] = time.monotonic) -> Row:
    """Run one level: ``warmup`` requests, then ``requests`` requests or ``duration`` seconds measured, with
    ``concurrency`` requests in flight all along; the requests still in flight at the end are received and not
    counted."""
    if (requests is None) == (duration is None):
        raise ConfigError("give either a number of requests or a duration per level")
    stop = [False]

    def source() -> Iterator[tuple[str, Sequence[Frame]]]:
        index = 0
        while not stop[0]:
            yield service, pool[index % len(pool)].frames
            index += 1

    round_trips: list[float] = []
    events = failed = nbytes = measured = 0
    started = end = clock()
    for index, outcome in enumerate(client.imap(source(), window=concurrency, return_exceptions=True)):
        now = clock()
        if index < warmup or stop[0]:  # warm-up, or the tail in flight after the measurement
            if index == warmup - 1:
                started = end = now
            continue
        request = pool[index % len(pool)]
        problem = check_reply(outcome, request)
        if problem is None:
            assert isinstance(outcome, Reply)
            round_trips.append(outcome.rtt)
            events += request.events
            nbytes += request.nbytes + frames_nbytes(outcome.payload)
        else:
            failed += 1
            errors.report(concurrency, *problem)
        measured += 1
        end = now
        if (requests is not None and measured >= requests) or (duration is not None and now - started >= duration):
            stop[0] = True
    return summarize(concurrency, round_trips, events, failed, end - started, nbytes)


# ----------------------------------------------------------------------------------------------- output
def format_value(value: Union[int, float]) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


class TablePrinter:
    """Prints the table as the levels finish: the header with the first row, columns as wide as the first
    row needs (later, wider values push their line out of line, never truncated)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.widths: Optional[list[int]] = None

    def add(self, row: Row) -> None:
        cells = [format_value(v) for v in row.values()]
        if self.widths is None:
            self.widths = [max(len(h), len(c), 8) for h, c in zip(Row.HEADINGS, cells)]
            self._line(list(Row.HEADINGS))
        self._line(cells)

    def _line(self, cells: list[str]) -> None:
        assert self.widths is not None
        self.stream.write("  ".join(cell.rjust(width) for cell, width in zip(cells, self.widths)) + "\n")
        self.stream.flush()


def csv_text(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(Row.COLUMNS)
    for row in rows:
        writer.writerow(["nan" if isinstance(v, float) and math.isnan(v) else v for v in row.values()])
    return out.getvalue()


# -------------------------------------------------------------------------------------------------- CLI
def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.ArgumentParser(
        prog="ssnet-perf", package="ssnet-client",
        description="Measure a service's throughput and latency through the broker, as Triton's perf_analyzer "
                    "does: for each concurrency level (requests in flight), send LArCV1 image messages (synthetic "
                    "sparse events, or events of a LArCV1 file) and print one row: events/s, MB/s of request + "
                    "reply payload bytes (10^6 B/s) and the p50/p90/p99 round trip per request in ms. Results go "
                    "to stdout (and --csv), logs to stderr; exit 1 if any measured request failed.",
    )
    options = cfg.EnvOptions(parser, "SSNET_PERF_")
    add_broker_options(options, CLIENT_CONNECT, "broker frontend endpoint")
    add_peer_options(options)
    options.add("--service", default="ssnet", help="service to measure (e.g. ssnet, echo, dummy)")
    options.add("--concurrency", default=list(DEFAULT_CONCURRENCY), nargs="+", type=cfg.positive_int,
                help="concurrency levels to sweep: requests kept in flight")
    measure = options.exclusive()
    measure.add("--requests", default=None, type=cfg.positive_int,
                help="requests measured per level (excludes --duration)")
    measure.add("--duration", default=None, type=cfg.positive_float,
                help="seconds measured per level (default 5 when --requests is not given)")
    options.add("--warmup", default=10, type=cfg.non_negative_int,
                help="requests per level before measuring (keep it at least the highest concurrency)")
    events = options.group("events", "synthetic sparse events, or the events of a LArCV1 file")
    events.add("--input", default=None, help="LArCV1 file whose first --pool events are sent in turn, instead of "
                                             "synthetic events")
    events.add("--producer", default="wire", help="Image2D producer read from --input; the product name sent")
    events.add("--shape", default=list(DEFAULT_SHAPE), nargs="+", type=cfg.positive_int, metavar="N",
               help="synthetic events: PLANES ROWS COLS")
    events.add("--occupancy", default=DEFAULT_OCCUPANCY, type=fraction,
               help="synthetic events: fraction of nonzero pixels per image")
    events.add("--pattern", default=PATTERNS[0], choices=PATTERNS,
               help="synthetic events: nonzero pixels in short track-like runs, or at random positions")
    events.add("--seed", default=0, type=cfg.non_negative_int, help="synthetic events: random seed")
    events.add("--pool", default=16, type=cfg.positive_int,
               help="distinct events built (or read) before measuring, then sent in turn")
    events.add("--batch-size", default=1, type=cfg.positive_int, help="events per request, as ssnet-client")
    add_wire_codec_option(events)
    options.add("--timeout", default=120.0, type=cfg.positive_float,
                help="seconds to wait for a reply before sending the request again (or failing it)")
    options.add("--retries", default=0, type=cfg.non_negative_int,
                help="times a request without a reply within --timeout is sent again (0: it counts as an error)")
    add_wait_options(options)
    options.add("--csv", default=None, help="also write the table to this CSV file (a header and one row per level)")
    cfg.add_common_options(options)
    return parser


def load_events(args: argparse.Namespace) -> list[PerfEvent]:
    if args.input is not None:
        return file_events(args.input, args.producer, args.pool)
    return synthetic_events(args.pool, args.shape, args.occupancy, pattern=args.pattern, seed=args.seed)


def describe(args: argparse.Namespace, events: Sequence[PerfEvent]) -> str:
    if args.input is not None:
        shapes = sorted({tuple(meta.shape for meta, _ in e.images) for e in events})
        source = f"{len(events)} event(s) of {args.input} (producer {args.producer!r}, image shapes {shapes[0]}" + (
            " and others)" if len(shapes) > 1 else ")")
    else:
        planes, rows, cols = args.shape
        source = (f"{len(events)} synthetic event(s) of {planes} x {rows} x {cols} "
                  f"(occupancy {args.occupancy:g}, {args.pattern}, seed {args.seed})")
    return f"{source}, {args.batch_size} per request"


def run(args: argparse.Namespace, rows: list[Row], stream: TextIO) -> int:
    """The sweep; appends each level's row to ``rows`` and prints it.  Returns the exit status."""
    if args.csv is not None and not Path(args.csv).resolve().parent.is_dir():
        raise ConfigError(f"--csv {args.csv!r}: no such directory {str(Path(args.csv).resolve().parent)!r}")
    events = load_events(args)
    pool = build_requests(events, args.producer, args.batch_size, wire_codec(args))
    found = broker_from_file(args)  # --broker-file: wait for the broker's endpoint file
    if found is not None:
        args.broker = found.frontend
    curve = peer_keys(args.curve_secret, args.curve_server,
                      None if found is None or found.curve_public is None else found.curve_public.encode("ascii"))
    log.info("%s: %.3g MB per request on average", describe(args, events),
             sum(r.nbytes for r in pool) / len(pool) / 1e6)
    wait_for_service(args.broker, [args.service], connect_timeout=args.connect_timeout,
                     service_wait=args.service_wait, curve=curve)
    registry = None
    if args.metrics_port:
        from prometheus_client import CollectorRegistry

        from ssnet_common.metrics import serve_metrics

        registry = CollectorRegistry()
        serve_metrics(registry, args.metrics_port, args.metrics_addr)
    duration = None if args.requests is not None else (args.duration or 5.0)
    errors = ErrorLog()
    printer = TablePrinter(stream)
    config = ClientConfig(timeout=args.timeout, retries=args.retries, window=max(args.concurrency), curve=curve)
    with Client(args.broker, config, registry=registry) as client:
        for concurrency in args.concurrency:
            log.info("concurrency %d: %d warm-up request(s), then %s", concurrency, args.warmup,
                     f"{args.requests} request(s)" if duration is None else f"{duration:g} s")
            row = measure_level(client, args.service, pool, concurrency, warmup=args.warmup,
                                requests=args.requests, duration=duration, errors=errors)
            rows.append(row)
            printer.add(row)
    if errors.count:
        log.error("%d measured request(s) failed", errors.count)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.shape) != 3:
        parser.error(f"argument --shape: takes three numbers, PLANES ROWS COLS; got {len(args.shape)}")
    cfg.configure_logging(args.log_level, "ssnet-perf")
    rows: list[Row] = []
    status: int
    try:
        status = run(args, rows, sys.stdout)
    except (ConfigError, DataError) as exc:
        log.error("%s", exc)
        return cfg.exit_status(exc)
    except SSNetError as exc:
        log.error("%s", exc)
        status = cfg.exit_status(exc)
    except KeyboardInterrupt as exc:
        log.error("interrupted")
        status = cfg.exit_status(exc)
    if args.csv is not None and rows:
        try:
            write_atomically(args.csv, csv_text(rows).encode("utf-8"))
        except OSError as exc:
            log.error("cannot write %s: %s", args.csv, exc)
            return max(status, cfg.EXIT_FAILURE)
        log.info("wrote %s", args.csv)
    return status


if __name__ == "__main__":
    sys.exit(main())
