"""``SimpleLArCV1Client``: Image2D products from LArCV1 files through a service, replies into a LArCV1 file.

For each batch of events (one event by default) it sends, per image, the triplet
``[producer, meta dump + ":(run,subrun,event)", array]`` (see :mod:`ssnet_data.larcv1msg`), keeps up to
``window`` requests in flight, and writes every triplet of the reply as an Image2D with that meta under producer
``name``, in the output entry of the same run/subrun/event.  Output entries are in input order, each input
event exactly once: results come back in submission order whatever order workers answer in, and a request
whose worker dies is served again by another (broker) or re-sent (client timeout).

The output file appears only when the whole range succeeded (the writer renames a temporary file).  With
``checkpoint`` set, finished entries are also kept in chunk files beside the output, so that a run that
failed half-way can be resumed (``resume=True``) without redoing them.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

import numpy as np

from ssnet_client.base import Client, ClientConfig, Reply
from ssnet_client.jobs import CONNECT_TIMEOUT, SERVICE_WAIT, FanOut, JobStats, RetryPolicy, wait_for_service
from ssnet_common.config import version_text
from ssnet_common.errors import (
    ConfigError,
    EventFailed,
    LArCV1Error,
    ProtocolError,
    RequestError,
    SSNetError,
)
from ssnet_common.files import check_output, write_atomically
from ssnet_common.protocol import CLIENT_CONNECT
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import (
    Image2D,
    LArCV1Entry,
    LArCV1Reader,
    LArCV1Writer,
    list_image2d_producers,
    load_writer_backend,
    read_annotation,
)
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_message, encode_images
from ssnet_data.ndarray import DEFAULT_CODEC
from ssnet_data.provenance import OBJECT_NAME as PROVENANCE
from ssnet_data.provenance import ProvenanceLog, Record
from ssnet_data.regions import Regions, crop_meta, place
from ssnet_data.services import plane_service

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

IMAGE2D = "image2d"
ON_ERROR = ("fail", "skip")  # what a job does with an event whose request fails for good; the first is the default
MAX_EVENT_ATTEMPTS = 5  # workers an event's request may be given to, across resubmissions
DRAIN_TIMEOUT = 60.0  # seconds a stopped job waits for the replies in flight
PREFETCH = 4  # entries read ahead, and entries queued for writing, by the background threads
T = TypeVar("T")


class JobInterrupted(SSNetError):
    """The job was asked to stop (SIGTERM, SIGINT): ``signum``; the message says what was kept, and ``resumable``
    whether checkpoint chunks let ``--resume`` go on from there."""

    def __init__(self, signum: int, kept: str, *, resumable: bool) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}: {kept}")
        self.signum = signum
        self.resumable = resumable


@dataclass(frozen=True)
class LArCV1JobConfig:
    """What to process and where to write it."""

    inputs: tuple[str, ...]
    output: str
    producers: tuple[str, ...]
    service: str = "dummy"
    broker: str = CLIENT_CONNECT
    batch_size: int = 1
    start: int = 0
    end: Optional[int] = None
    copy_input: bool = False
    force: bool = False  # replace an existing output file
    per_plane: bool = False  # one request per image, to service "<service>_plane<p>"
    wire_codec: Optional[str] = DEFAULT_CODEC
    checkpoint: int = 0  # entries per chunk file (0: no chunk files)
    resume: bool = False
    regions: Optional[Regions] = None  # send only these crops; write whole views, zero outside them
    max_event_attempts: int = MAX_EVENT_ATTEMPTS
    on_error: str = ON_ERROR[0]
    connect_timeout: float = CONNECT_TIMEOUT  # the broker must answer this soon, before the first request
    service_wait: float = SERVICE_WAIT  # and a worker of each service needed must be there this soon
    drain_timeout: float = DRAIN_TIMEOUT  # after a stop request: seconds to wait for the replies in flight
    client: ClientConfig = field(default_factory=ClientConfig)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("no input file given")
        if not self.producers:
            raise ConfigError("no Image2D producer given")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.per_plane and self.batch_size != 1:
            raise ConfigError("per-plane requests send one image each: use batch size 1")
        if not (self.connect_timeout > 0 and self.service_wait >= 0):
            raise ConfigError(f"connect timeout must be positive and service wait 0 or more, got "
                              f"{self.connect_timeout}, {self.service_wait}")
        if self.max_event_attempts < 1:
            raise ConfigError(f"max event attempts must be at least 1, got {self.max_event_attempts}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"on-error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.on_error == "skip" and self.checkpoint:
            raise ConfigError("skipping failed events does not go with checkpoints: give one of them")
        if self.regions is not None and self.batch_size != 1:
            raise ConfigError("with regions each event's crops go as one request: use batch size 1")
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise ConfigError(f"invalid entry range [{self.start}, {self.end})")
        if self.checkpoint < 0:
            raise ConfigError(f"checkpoint must be 0 (off) or a number of entries, got {self.checkpoint}")
        if self.resume and not self.checkpoint:
            raise ConfigError("resume needs checkpoint chunks: give a checkpoint size")
        if Path(self.output).resolve() in {Path(p).resolve() for p in self.inputs}:
            raise ConfigError(f"output {self.output!r} is also an input")
        check_output(self.output, self.force)


def producers_from_product_dict(product_dict: Mapping[str, Union[str, Sequence[str]]]) -> tuple[str, ...]:
    """The Image2D producers named by the original design's ``product_dict`` ({product type: producer(s)})."""
    producers: list[str] = []
    for kind, names in product_dict.items():
        if kind.lower() != IMAGE2D:
            raise ConfigError(f"product type {kind!r} is not supported: only {IMAGE2D!r} (Image2D) is")
        producers += [names] if isinstance(names, str) else list(names)
    return tuple(producers)


@dataclass
class _Batch:
    """Consecutive entries sent together (in one request, or one per plane; none for entries without images)."""

    entries: list[LArCV1Entry]


Progress = Callable[[int, int, float], None]
"""Called as ``progress(done, total, seconds)`` after each written entry."""


class SimpleLArCV1Client:
    """Processes ``config``'s entry range through ``config.service`` and writes ``config.output``."""

    def __init__(self, config: LArCV1JobConfig, *, registry: Optional[CollectorRegistry] = None,
                 progress: Optional[Progress] = None) -> None:
        self.config = config
        self.registry = registry
        self.progress = progress
        self.reader = LArCV1Reader(list(config.inputs), producers=list(config.producers))
        load_writer_backend()  # fail now if ROOT is missing, and do not stall the first replies later
        total = len(self.reader)
        self.stop = total if config.end is None else min(config.end, total)
        if self.stop <= config.start:
            raise ConfigError(f"no entries to process: range [{config.start}, {self.stop}) of {total} entries")
        self.chunks = Path(str(config.output) + ".chunks")
        self._stopping = threading.Event()
        self._stop_asked = 0.0
        self.stop_signal: Optional[int] = None
        self.stats: Optional[JobStats] = None  # the running job's, read by its progress metrics
        self.connected = threading.Event()  # the broker answered the job's first probe: /readyz
        if registry is not None:
            from ssnet_client.metrics import JobProgressCollector

            registry.register(JobProgressCollector(lambda: self.stats, self.stop - config.start))

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop sending (safe from a signal handler): the job waits up to ``drain_timeout`` for the replies in
        flight, keeps what it has in checkpoint chunks, and raises :class:`JobInterrupted`."""
        if not self._stopping.is_set():
            self.stop_signal, self._stop_asked = signum, time.monotonic()
            self._stopping.set()

    @classmethod
    def from_product_dict(cls, inputs: Sequence[str], output: str,
                          product_dict: Mapping[str, Union[str, Sequence[str]]], *, batch_size: int = 1,
                          service: str = "dummy", broker: str = CLIENT_CONNECT, **options: Any
                          ) -> SimpleLArCV1Client:
        """The original design's constructor: input file(s), output file, product_dict, batch size, service, broker."""
        config = LArCV1JobConfig(tuple(inputs), output, producers_from_product_dict(product_dict), service, broker,
                                 batch_size, **options)
        return cls(config)

    # -------------------------------------------------------------------------------------------- the job
    def run(self) -> JobStats:
        self.stats = summary = JobStats(unit="event", started=time.monotonic())
        start = self.config.start
        done_chunks: list[Path] = []
        if self.config.checkpoint:
            done_chunks, start = self._prepare_chunks(start, summary)
        elif self.chunks.exists():
            raise ConfigError(f"{self.chunks} holds checkpoints of an earlier run: resume it or remove it")
        total = self.stop - self.config.start
        services = ([plane_service(self.config.service, p) for p in self._planes()] if self.config.per_plane
                    else [self.config.service])
        wait_for_service(self.config.broker, services, connect_timeout=self.config.connect_timeout,
                         service_wait=self.config.service_wait, curve=self.config.client.curve)
        self.connected.set()
        if self.progress is not None:
            self.progress(summary.resumed, total, 0.0)  # the clock starts: a stall before the first reply shows
        output = _OutputWriter(self, start)
        if done_chunks:  # the last chunk's provenance covers every chunk before it
            text = read_annotation(done_chunks[-1], PROVENANCE)
            if text is not None:
                output.provenance = ProvenanceLog.from_json(text)
        entries = _prefetch(self.reader.iter_range(start, self.stop), PREFETCH)
        with closing(entries), Client(self.config.broker, self.config.client, registry=self.registry) as client, \
                _BackgroundWriter(output) as writer:
            fan: FanOut[_Batch] = FanOut(client, summary, describe=lambda batch: f"entries {_span(batch)}",
                                         policy=RetryPolicy(self.config.max_event_attempts), return_exceptions=True)
            units = ((batch, list(self._requests(batch))) for batch in self._batches(entries))
            for batch, replies in fan.run(units):
                if self._stopping.is_set() and time.monotonic() > self._stop_asked + self.config.drain_timeout:
                    log.warning("stopping: replies still in flight after %g s are abandoned", self.config.drain_timeout)
                    break
                failed = next((reply for reply in replies if isinstance(reply, RequestError)), None)
                if failed is not None:
                    self._failed(batch, failed, summary)
                    if self.progress is not None:  # skipped events are behind the job too: the ETA reaches 0
                        self.progress(summary.finished, total, time.monotonic() - (summary.started or 0.0))
                    continue
                decoded = [self._decode(batch, reply) for reply in replies if isinstance(reply, Reply)]
                sources = _sources(decoded)
                for entry, products in zip(batch.entries, _per_entry(batch, [d for d, _ in decoded])):
                    writer.write(entry, products, sources)
                    summary.handed(1)
                    if self.progress is not None:
                        self.progress(summary.finished, total, summary.elapsed)
            if self._stopping.is_set() and not self.config.checkpoint:
                raise JobInterrupted(self.stop_signal or signal.SIGTERM, "no checkpoint was asked for "
                                     "(--checkpoint N): nothing is kept, the job starts over", resumable=False)
        if self._stopping.is_set():
            kept = summary.resumed + summary.done
            raise JobInterrupted(self.stop_signal or signal.SIGTERM, f"the first {kept} entries are kept in "
                                 f"{len(done_chunks) + len(output.chunk_files)} checkpoint chunk(s) in {self.chunks}",
                                 resumable=True)
        if self.config.checkpoint:
            self._assemble(done_chunks + output.chunk_files, output)
        summary.notes += output.provenance.disagreements()
        if summary.skipped:
            write_atomically(self.failed_file, json.dumps({"output": str(self.config.output),
                                                           "skipped": summary.skipped}, indent=1).encode() + b"\n")
        summary.last = time.monotonic()
        return summary

    @property
    def failed_file(self) -> Path:
        """Where the events skipped with ``on_error="skip"`` are listed: ``<output>.failed.json``."""
        return Path(str(self.config.output) + ".failed.json")

    def _failed(self, batch: _Batch, error: RequestError, summary: JobStats) -> None:
        """A batch whose request failed for good: stop the job naming its events, or list them as skipped."""
        events = []
        for entry in batch.entries:
            path, local = self.reader.locate(entry.entry)
            events.append({"file": str(path), "entry": local, "run": entry.run, "subrun": entry.subrun,
                           "event": entry.event, "error": str(error)})
        named = "; ".join(f"event {e['run']}/{e['subrun']}/{e['event']} (file {e['file']}, entry {e['entry']})"
                          for e in events)
        if self.config.on_error == "fail":
            kept = (f"; the entries before it are kept in {self.chunks}: --resume continues from there"
                    if self.config.checkpoint else "")
            raise EventFailed(f"{named} failed: {error}{kept}")
        log.error("skipping %s: %s", named, error)
        summary.skipped += events

    def _planes(self) -> list[int]:
        """The planes of the first entry's images: the per-plane services the job needs."""
        first = self.reader[self.config.start]
        return sorted({image.meta.plane for p in self.config.producers for image in first.products[p]})

    # ----------------------------------------------------------------------------------------- requests
    def _batches(self, entries: Iterator[LArCV1Entry]) -> Iterator[_Batch]:
        """Consecutive entries of identical image layout, at most ``batch_size`` each; empty entries alone."""
        batch: list[LArCV1Entry] = []
        layout: Optional[tuple[Any, ...]] = None
        for entry in entries:
            if self._stopping.is_set():
                return  # stop sending; what is in flight drains
            shape = _layout(entry)
            if batch and (shape != layout or len(batch) == self.config.batch_size or not shape):
                yield _Batch(batch)
                batch = []
            batch.append(entry)
            layout = shape
        if batch:
            yield _Batch(batch)

    def _requests(self, batch: _Batch) -> Iterator[tuple[str, list[Any]]]:
        """One request with every image of the batch; or, per plane, one request per image."""
        products = list(self._products(batch))
        if not products:
            return
        if not self.config.per_plane:
            yield self.config.service, encode_images(products, self.config.wire_codec)
            return
        for product in products:
            plane = product.items[0][0].plane
            yield plane_service(self.config.service, plane), encode_images([product], self.config.wire_codec)

    def _products(self, batch: _Batch) -> Iterator[ImageProduct]:
        """Per producer and image position, the image of every entry of the batch, stacked; with regions, each
        box's crop of the (one) entry's images."""
        entries = batch.entries
        if self.config.regions is not None:
            yield from _crops(entries[0], self.config.producers, self.config.regions)
            return
        ids = [EventId(e.run, e.subrun, e.event) for e in entries]
        for producer in self.config.producers:
            for index in range(len(entries[0].products[producer])):
                images = [entry.products[producer][index] for entry in entries]
                items = tuple((image.meta, event) for image, event in zip(images, ids))
                array = images[0].pixels[np.newaxis] if len(images) == 1 else np.stack([i.pixels for i in images])
                yield ImageProduct(producer, items, array)

    def _decode(self, batch: _Batch, reply: Reply) -> tuple[list[ImageProduct], Optional[Record]]:
        try:
            products, provenance = decode_message(reply.payload)
        except ProtocolError as exc:
            raise ProtocolError(f"reply for entries {_span(batch)} is not a LArCV1 image message: {exc}") from None
        expected = tuple(EventId(e.run, e.subrun, e.event) for e in batch.entries)
        for product in products:
            if product.ids != expected:
                raise ProtocolError(
                    f"reply product {product.name!r} for entries {_span(batch)} carries event ids "
                    f"{[str(i) for i in product.ids]}, sent {[str(i) for i in expected]}"
                )
        return products, provenance

    # -------------------------------------------------------------------------------------- checkpoints
    def _prepare_chunks(self, start: int, summary: JobStats) -> tuple[list[Path], int]:
        """Chunk files of an earlier run (with ``resume``), checked against the input; the next entry to do."""
        if self.chunks.exists() and not self.config.resume:
            raise ConfigError(f"{self.chunks} holds checkpoints of an earlier run: resume it or remove it")
        self.chunks.mkdir(parents=True, exist_ok=True)
        done = []
        for path in sorted(self.chunks.glob("entries-*.root")):
            first, last = (int(n) for n in path.stem.split("-")[1:3])
            if first != start:
                raise LArCV1Error(f"checkpoint chunk does not start at entry {start}", path=str(path))
            chunk = LArCV1Reader([str(path)], producers=list_image2d_producers(path))
            if len(chunk) != last - first:
                raise LArCV1Error(f"checkpoint holds {len(chunk)} entries, its name says {last - first}",
                                  path=str(path))
            for offset, entry in enumerate(chunk):
                original = self.reader[first + offset]
                if (entry.run, entry.subrun, entry.event) != (original.run, original.subrun, original.event):
                    raise LArCV1Error("checkpoint entry does not match the input", path=str(path), entry=offset)
            done.append(path)
            start = last
        summary.resumed = start - self.config.start
        if done:
            log.info("resuming after %d entries found in %d checkpoint chunks", summary.resumed, len(done))
        return done, start

    def _assemble(self, chunk_files: list[Path], output: _OutputWriter) -> None:
        """With checkpoints, the output is the concatenation of the chunks; then the chunks go."""
        producers = list_image2d_producers(chunk_files[0])
        with LArCV1Writer(self.config.output, producers) as out:
            output.annotate(out)
            for path in chunk_files:
                if list_image2d_producers(path) != producers:
                    raise LArCV1Error(f"checkpoint chunk has other producers than {producers}", path=str(path))
                for entry in LArCV1Reader([str(path)], producers=producers):
                    out.copy_entry(entry)
        shutil.rmtree(self.chunks)


class _OutputWriter:
    """Writes output entries: straight into the output file, or into checkpoint chunks."""

    def __init__(self, job: SimpleLArCV1Client, start: int) -> None:
        self.job = job
        self.config = job.config
        self.next_entry = start
        self.producers: list[str] = []
        self.chunk_files: list[Path] = []
        # entries before the producers are known, with their products and sources
        self._pending: list[tuple[LArCV1Entry, dict[str, list[Image2D]], Sources]] = []
        self._writer: Optional[LArCV1Writer] = None
        self._chunk_start = start
        self.provenance = ProvenanceLog()  # of the entries written (resumed ones included)

    def annotate(self, writer: LArCV1Writer) -> None:
        """Store the provenance of the entries written so far in ``writer``'s file (nothing without any)."""
        if self.provenance:
            writer.annotate(PROVENANCE, self.provenance.to_json(
                software=version_text("ssnet-client"), service=self.config.service,
                inputs=[str(path) for path in self.config.inputs]))

    def write(self, entry: LArCV1Entry, products: dict[str, list[Image2D]], sources: Sources = ()) -> None:
        if self.config.copy_input:
            for name in products:
                if name in self.config.producers:
                    raise ProtocolError(f"reply product {name!r} has the name of an input producer copied to the "
                                        "output")
            products = {**{p: list(entry.products[p]) for p in self.config.producers}, **products}
        if not self.producers:
            if not products or not any(products.values()):
                self._pending.append((entry, products, sources))  # no names yet: wait for a reply with images
                return
            self.producers = list(products)
        for name in products:
            if name not in self.producers:
                raise ProtocolError(
                    f"entry {entry.entry}: reply product {name!r} was not in the first reply ({self.producers})"
                )
        for held, held_products, held_sources in self._pending:
            self._write(held, held_products, held_sources)
        self._pending.clear()
        self._write(entry, products, sources)

    def _write(self, entry: LArCV1Entry, products: dict[str, list[Image2D]], sources: Sources) -> None:
        if self.config.regions is not None:
            products = self._paint(entry, products)
        if self._writer is None:
            self._writer = LArCV1Writer(self._target(), self.producers).__enter__()
        self._writer.write_entry(entry.run, entry.subrun, entry.event, products)
        for plane, record in sources:
            self.provenance.add(plane, record)
        self.next_entry += 1
        if self.config.checkpoint and self.next_entry - self._chunk_start >= self.config.checkpoint:
            self._close_chunk()

    def _paint(self, entry: LArCV1Entry, products: dict[str, list[Image2D]]) -> dict[str, list[Image2D]]:
        """With regions: the replies' crops painted into whole views of the entry's planes, zero elsewhere."""
        views: dict[int, ImageMeta] = {}
        for producer in self.config.producers:
            for image in entry.products[producer]:
                views.setdefault(image.meta.plane, image.meta)
        copied = set(self.config.producers) if self.config.copy_input else set()
        painted = {name: images for name, images in products.items() if name in copied}
        for name in self.producers:
            if name in copied:
                continue
            whole = {plane: np.zeros(meta.shape, np.float32) for plane, meta in views.items()}
            for crop in products.get(name, []):
                if crop.meta.plane not in views:
                    raise ProtocolError(f"entry {entry.entry}: reply product {name!r} has an image of plane "
                                    f"{crop.meta.plane}, which the event has no view of")
                try:
                    row, col = place(views[crop.meta.plane], crop.meta)
                except ValueError as exc:
                    raise ProtocolError(f"entry {entry.entry}: reply product {name!r}: {exc}") from None
                whole[crop.meta.plane][row:row + crop.meta.rows, col:col + crop.meta.cols] = crop.pixels
            painted[name] = [Image2D(views[plane], pixels) for plane, pixels in whole.items()]
        return painted

    def _target(self) -> str:
        if not self.config.checkpoint:
            return self.config.output
        self._chunk_start = self.next_entry
        return str(self.job.chunks / "pending.root")

    def _close_chunk(self) -> None:
        assert self._writer is not None
        self.annotate(self._writer)  # everything so far: the last chunk's log is the whole log on --resume
        self._writer.__exit__(None, None, None)
        self._writer = None
        final = self.job.chunks / f"entries-{self._chunk_start:09d}-{self.next_entry:09d}.root"
        (self.job.chunks / "pending.root").rename(final)
        self.chunk_files.append(final)

    def finish(self) -> None:
        if self._pending and self.config.regions is not None and not self.producers:
            raise ConfigError(f"no box of {self.config.regions.source} lies in an image of the entries processed: "
                              "nothing was sent")
        if self._pending:  # no entry of the range had images: the output keeps the input producers' names
            self.producers = list(self.config.producers)
            for held, products, sources in self._pending:
                self._write(held, products, sources)
            self._pending.clear()
        if self._writer is not None:
            if self.config.checkpoint:
                self._close_chunk()
            else:
                self.annotate(self._writer)
                self._writer.__exit__(None, None, None)
                self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.__exit__(RuntimeError, RuntimeError("job failed"), None)
            self._writer = None


_DONE = object()


def _prefetch(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """``items``, produced by a background thread up to ``depth`` ahead (reading overlaps the rest).

    Errors of the producer are raised here, in order; closing this generator stops the thread, which closes
    ``items`` first (a reader's iteration: its decompression threads stop too).
    """
    slots: queue.Queue[tuple[Any, Optional[BaseException]]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: Any, error: Optional[BaseException] = None) -> bool:
        while not stop.is_set():
            try:
                slots.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_DONE, exc)
        else:
            put(_DONE)
        finally:  # here, in the thread that ran it: a reader's decompression threads stop before this one
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="ssnet-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class _BackgroundWriter:
    """Runs an :class:`_OutputWriter` in its own thread (ROOT releases the GIL while it fills and compresses).

    ``write()`` queues an entry (blocking when ``PREFETCH`` are waiting) and raises the writer thread's error,
    if it had one.  Leaving the ``with`` block normally finishes the output; leaving it by an exception
    discards it.
    """

    _FINISH, _ABORT = object(), object()

    def __init__(self, output: _OutputWriter) -> None:
        self.output = output
        self.queue: queue.Queue[Any] = queue.Queue(PREFETCH)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="ssnet-writer", daemon=True)

    def __enter__(self) -> _BackgroundWriter:
        self.thread.start()
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Any) -> None:
        self.queue.put(self._ABORT if exc_type is not None else self._FINISH)
        self.thread.join()
        if exc_type is None:
            self._raise()

    def write(self, entry: LArCV1Entry, products: dict[str, list[Image2D]], sources: Sources = ()) -> None:
        self._raise()
        self.queue.put((entry, products, sources))

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is self._ABORT or item is self._FINISH:
                break
            if self.error is None:  # after an error, only drain until the main thread says stop
                try:
                    self.output.write(*item)
                except BaseException as exc:  # raised in the main thread
                    self.error = exc
        try:
            if item is self._FINISH and self.error is None:
                self.output.finish()
            else:
                self.output.abort()
        except BaseException as exc:  # raised in the main thread
            self.error = exc


def _crops(entry: LArCV1Entry, producers: Sequence[str], regions: Regions) -> Iterator[ImageProduct]:
    """One product per box: the crop of an image of ``entry``, with its own meta."""
    event = EventId(entry.run, entry.subrun, entry.event)
    for producer in producers:
        for image in entry.products[producer]:
            for box in regions.boxes((entry.run, entry.subrun, entry.event), image.meta.plane):
                pixels = box.pixels(image.meta)
                if pixels is None:
                    log.debug("entry %d: a box of plane %d misses the image", entry.entry, image.meta.plane)
                    continue
                row0, row1, col0, col1 = pixels
                crop = np.ascontiguousarray(image.pixels[row0:row1, col0:col1])
                yield ImageProduct(producer, ((crop_meta(image.meta, *pixels), event),), crop[np.newaxis])


def _layout(entry: LArCV1Entry) -> tuple[Any, ...]:
    """What must be equal for entries to share a batch: per producer, the image shapes in order."""
    shapes = tuple((p, tuple(image.meta.shape for image in images)) for p, images in entry.products.items())
    return shapes if any(images for _, images in shapes) else ()


Sources = Sequence[tuple[int, Record]]
"""Per plane of an entry's images, the provenance record of the worker that produced its output."""


def _sources(decoded: Sequence[tuple[list[ImageProduct], Optional[Record]]]) -> Sources:
    """The (plane, record) pairs of a batch's replies: each reply's record for the planes of its images."""
    return [(plane, record) for products, record in decoded if record is not None
            for plane in sorted({meta.plane for product in products for meta in product.metas})]


def _per_entry(batch: _Batch, replies: list[list[ImageProduct]]) -> list[dict[str, list[Image2D]]]:
    """Split the batch's reply products into one {name: images} per entry, in reply order."""
    out: list[dict[str, list[Image2D]]] = [{} for _ in batch.entries]
    for products in replies:
        for product in products:
            for index, (meta, _) in enumerate(product.items):
                out[index].setdefault(product.name, []).append(Image2D(meta, product.array[index]))
    return out


def _span(batch: _Batch) -> str:
    first, last = batch.entries[0].entry, batch.entries[-1].entry
    return str(first) if first == last else f"{first}-{last}"
