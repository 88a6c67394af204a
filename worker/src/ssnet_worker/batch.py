"""The data worker of the training network (``ssnet-worker --kind batch``) and its preprocessing.

A :class:`BatchWorker` opens one or more LArCV1 files (or a file list) for a fixed set of Image2D producers
and answers :class:`~ssnet_data.batchmsg.BatchRequest` messages with one batch each: the named entries as
arrays ``(batch, planes, rows, cols)`` per producer, their run/subrun/event ids and metas, after the request's
:class:`~ssnet_data.batchmsg.Preprocess` steps.  It also answers :class:`~ssnet_data.batchmsg.InfoRequest`
with the dataset's size, producers, fingerprint and the worker's shard.

Design (the full rationale is in :mod:`ssnet_data.batchmsg`).  The worker is stateless: the client names
every entry of every batch from a seeded schedule, so the broker may give a request to any worker of the
service, and a dead worker's request served again elsewhere yields the same batch.  With
``shard_index``/``shard_count`` the worker owns the contiguous shard
:func:`~ssnet_data.batchmsg.shard_range` of the entries instead, registers as ``<service>_shard<k>`` and
refuses entries outside it; the client splits each batch by shard.  Sharding keeps each worker's reading and
cache to its part of the files; several workers may serve the same shard (replicas).

Reading.  :class:`EntryCache` keeps decoded entries up to a byte budget (least recently used out first) and
reads misses in aligned blocks of ``read_ahead`` consecutive entries (the reader opens the file once per
block, and LArCV1 baskets hold neighbouring entries anyway).  A dataset (or shard) that fits the budget is read
once; a larger one is re-read every epoch.

The preprocessing steps are pure NumPy functions (:func:`select_images`, :func:`activity_window`,
:func:`crop_meta`, :func:`assemble_batch`, and :func:`ssnet_data.preprocess.threshold_clip`, which the SSNet
worker applies too), usable and tested without any socket.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from ssnet_common.config import EnvOptions, non_negative_float, non_negative_int, positive_int
from ssnet_common.errors import ConfigError, DataError
from ssnet_common.protocol import Frame
from ssnet_data.batchmsg import (
    BatchProduct,
    BatchReply,
    BatchRequest,
    DatasetInfo,
    InfoRequest,
    Preprocess,
    decode_request,
    shard_range,
    shard_service,
)
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import Image2D, LArCV1Entry, LArCV1Reader
from ssnet_data.preprocess import threshold_clip
from ssnet_worker.base import Worker, WorkerConfig

if TYPE_CHECKING:
    import zmq
    from numpy.typing import NDArray
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

DEFAULT_CACHE_MB = 1024
DEFAULT_READ_AHEAD = 8


# ---------------------------------------------------------------------------------------- preprocessing
def select_images(images: Sequence[Image2D], planes: Optional[Sequence[int]], where: str = "") -> list[Image2D]:
    """The images whose ``meta.plane`` is in ``planes``, in the order of ``planes``; every image if None.

    :class:`DataError` (naming ``where``) if a wanted plane is missing or held by several images.
    """
    if planes is None:
        return list(images)
    chosen = []
    for plane in planes:
        found = [image for image in images if image.meta.plane == plane]
        if len(found) != 1:
            have = [image.meta.plane for image in images]
            raise DataError(f"{where}: {'no' if not found else 'several'} image(s) of plane {plane} "
                            f"(the entry's images have planes {have})")
        chosen.append(found[0])
    return chosen


def activity_window(
    image: NDArray[Any], size: tuple[int, int], threshold: float = 0.0
) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``size`` window centred on the image's activity.

    Activity: the pixels above ``threshold``, weighted by ``pixel - threshold``; the window is centred on their
    weighted centre (the image's centre if there is none) and moved inside the image if it sticks out.
    ``ValueError`` if the image is smaller than the window.
    """
    rows, cols = size
    height, width = image.shape
    if rows > height or cols > width:
        raise ValueError(f"crop {rows}x{cols} is larger than the image {height}x{width}")
    weights = np.where(image > threshold, image.astype(np.float64) - threshold, 0.0)
    total = float(weights.sum())
    if total > 0:
        centre_row = float(weights.sum(axis=1) @ np.arange(height, dtype=np.float64)) / total
        centre_col = float(weights.sum(axis=0) @ np.arange(width, dtype=np.float64)) / total
    else:
        centre_row, centre_col = (height - 1) / 2, (width - 1) / 2
    # The window [top, top + rows) is centred on the pixel centre when (rows - 1) / 2 away from it.
    top = int(np.floor(centre_row - (rows - 1) / 2 + 0.5))
    left = int(np.floor(centre_col - (cols - 1) / 2 + 0.5))
    return min(max(top, 0), height - rows), min(max(left, 0), width - cols)


def crop_meta(meta: ImageMeta, row: int, col: int, rows: int, cols: int) -> ImageMeta:
    """The meta of pixels ``[row:row+rows, col:col+cols]`` of an image with ``meta`` (row 0 at the top)."""
    if not (row >= 0 and rows >= 0 and row + rows <= meta.rows and col >= 0 and cols >= 0
            and col + cols <= meta.cols):
        raise ValueError(f"crop rows [{row}, {row + rows}) x cols [{col}, {col + cols}) is outside {meta.shape}")
    return ImageMeta(
        width=cols * meta.pixel_width, height=rows * meta.pixel_height, rows=rows, cols=cols,
        origin_x=meta.origin_x + col * meta.pixel_width, origin_y=meta.origin_y - row * meta.pixel_height,
        plane=meta.plane,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class AssembledBatch:
    """What :func:`assemble_batch` builds: ``ids`` (B, 3) uint64 and one product per producer."""

    ids: NDArray[np.uint64]
    products: tuple[BatchProduct, ...]


def assemble_batch(
    entries: Sequence[LArCV1Entry], producers: Sequence[str], preprocess: Preprocess
) -> AssembledBatch:
    """The batch of ``entries`` for ``producers`` after ``preprocess`` (see :class:`Preprocess` for the steps).

    Raises :class:`DataError` naming the entry and producer when the images cannot be stacked: a missing
    plane, a different number of images, different shapes (select planes or crop to a fixed size).
    """
    if not entries or not producers:
        raise ValueError("a batch needs at least one entry and one producer")
    crop = preprocess.crop
    reference = preprocess.crop_producer or producers[0]
    adc = preprocess.adc_producers if preprocess.adc_producers is not None else (producers[0],)
    wanted = [(p, "adc_producers") for p in adc]
    if crop is not None:
        wanted.append((reference, "crop_producer"))
    for name, what in wanted:
        if name not in producers:
            raise DataError(f"{what} {name!r} is not one of the producers requested {list(producers)}")

    selected = [
        {p: select_images(entry.products[p], preprocess.planes, f"entry {entry.entry}, producer {p!r}")
         for p in producers}
        for entry in entries
    ]
    arrays: dict[str, NDArray[np.float32]] = {}
    metas: dict[str, list[tuple[ImageMeta, ...]]] = {p: [] for p in producers}
    for position, (entry, images) in enumerate(zip(entries, selected)):
        windows: Optional[list[tuple[int, int]]] = None
        if crop is not None:
            windows = [activity_window(image.pixels, crop, preprocess.crop_threshold)
                       if image.pixels.shape[0] >= crop[0] and image.pixels.shape[1] >= crop[1] else (-1, -1)
                       for image in images[reference]]
        for producer in producers:
            these = images[producer]
            where = f"entry {entry.entry}, producer {producer!r}"
            if not these:
                raise DataError(f"{where}: no images")
            if crop is not None:
                assert windows is not None
                if len(these) != len(windows):
                    raise DataError(f"{where}: {len(these)} images but {len(windows)} in producer {reference!r}")
            array = arrays.get(producer)
            if array is None:
                shape = crop if crop is not None else these[0].meta.shape
                array = arrays[producer] = np.empty((len(entries), len(these), *shape), dtype=np.float32)
            shape = (array.shape[2], array.shape[3])
            if len(these) != array.shape[1]:
                raise DataError(f"{where}: {len(these)} images, the first entry of the batch has {array.shape[1]} "
                                "(select planes)")
            row_metas = []
            for plane, image in enumerate(these):
                if crop is None:
                    if image.meta.shape != shape:
                        raise DataError(f"{where}, image {plane}: shape {image.meta.shape}, the batch's images are "
                                        f"{shape} (crop to a fixed size)")
                    array[position, plane] = image.pixels
                    row_metas.append(image.meta)
                    continue
                assert windows is not None
                top, left = windows[plane]
                if top < 0:
                    raise DataError(f"{where}, image {plane}: crop {crop[0]}x{crop[1]} is larger than the image "
                                    f"{image.meta.shape}")
                if image.meta.shape != images[reference][plane].meta.shape:
                    raise DataError(f"{where}, image {plane}: shape {image.meta.shape} differs from producer "
                                    f"{reference!r}'s {images[reference][plane].meta.shape}")
                array[position, plane] = image.pixels[top:top + crop[0], left:left + crop[1]]
                row_metas.append(crop_meta(image.meta, top, left, *crop))
            metas[producer].append(tuple(row_metas))
    for producer in adc:
        threshold_clip(arrays[producer], preprocess.threshold, preprocess.clip, out=arrays[producer])
    ids = np.array([[e.run, e.subrun, e.event] for e in entries], dtype=np.uint64).reshape(len(entries), 3)
    return AssembledBatch(ids, tuple(BatchProduct(p, tuple(metas[p]), arrays[p]) for p in producers))


# ----------------------------------------------------------------------------------------------- reading
def read_file_list(path: Union[str, os.PathLike[str]]) -> list[str]:
    """Paths listed in a text file, one per line (blank lines and ``#`` comments skipped); relative paths are
    relative to the list's directory.
    """
    where = Path(path)
    try:
        lines = where.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the file list {str(where)!r}: {exc.strerror or exc}") from None
    paths = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if text:
            paths.append(str(where.parent / text) if not os.path.isabs(text) else text)
    if not paths:
        raise ConfigError(f"the file list {str(where)!r} names no file")
    return paths


def entry_nbytes(entry: LArCV1Entry) -> int:
    return sum(image.pixels.nbytes for images in entry.products.values() for image in images)


class EntryCache:
    """Entries ``[start, stop)`` of ``reader``, kept up to ``capacity`` bytes, misses read in aligned blocks of
    ``read_ahead`` entries (only the missing entries themselves when ``capacity`` is 0).
    """

    def __init__(self, reader: LArCV1Reader, start: int, stop: int, capacity: int, read_ahead: int) -> None:
        self.reader = reader
        self.start = start
        self.stop = stop
        self.capacity = capacity
        self.read_ahead = read_ahead
        self._entries: collections.OrderedDict[int, LArCV1Entry] = collections.OrderedDict()
        self._sizes: dict[int, int] = {}
        self.nbytes = 0
        self.hits = 0
        self.reads = 0  # entries read from the files

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, indexes: Sequence[int]) -> list[LArCV1Entry]:
        """The entries ``indexes`` (each in ``[start, stop)``), in that order."""
        found: dict[int, LArCV1Entry] = {}
        missing: list[int] = []
        for index in indexes:
            entry = self._entries.get(index)
            if entry is None:
                missing.append(index)
            else:
                self._entries.move_to_end(index)
                found[index] = entry
        self.hits += len(found)
        wanted = set(missing)
        for first, last in self._ranges(missing):
            for entry in self.reader.iter_range(first, last):
                self.reads += 1
                if entry.entry in wanted:
                    found[entry.entry] = entry
                self._put(entry)
        return [found[index] for index in indexes]

    def preload(self) -> int:
        """Read entries from ``start`` on until the cache is full or the range ends; the number read."""
        stop = self.start
        budget = 0
        for entry in self.reader.iter_range(self.start, self.stop):
            budget += entry_nbytes(entry)
            if budget > self.capacity:
                break
            self.reads += 1
            self._put(entry)
            stop += 1
        return stop - self.start

    def _ranges(self, missing: list[int]) -> list[tuple[int, int]]:
        """Ranges to read for ``missing``: aligned blocks when caching, runs of consecutive entries if not."""
        if not missing:
            return []
        if self.capacity > 0 and self.read_ahead > 1:
            blocks = sorted({(i - self.start) // self.read_ahead for i in missing})
            return [(self.start + b * self.read_ahead, min(self.start + (b + 1) * self.read_ahead, self.stop))
                    for b in blocks]
        ranges: list[tuple[int, int]] = []
        for index in sorted(missing):
            if ranges and ranges[-1][1] == index:
                ranges[-1] = (ranges[-1][0], index + 1)
            else:
                ranges.append((index, index + 1))
        return ranges

    def _put(self, entry: LArCV1Entry) -> None:
        if entry.entry in self._entries:
            self._entries.move_to_end(entry.entry)
            return
        size = entry_nbytes(entry)
        if size > self.capacity:
            return
        while self._entries and self.nbytes + size > self.capacity:
            old, _ = self._entries.popitem(last=False)
            self.nbytes -= self._sizes.pop(old)
        self._entries[entry.entry] = entry
        self._sizes[entry.entry] = size
        self.nbytes += size


def dataset_fingerprint(reader: LArCV1Reader) -> str:
    """16 hex digits that equal for workers reading the same files (names, sizes, entries) and producers."""
    digest = hashlib.sha256()
    digest.update("\0".join(reader.producers).encode())
    for path in reader.paths:
        digest.update(f"\0{path.name}\0{path.stat().st_size}".encode())
    digest.update(f"\0{len(reader)}".encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ worker
class BatchWorker(Worker):
    """Serves batches of the entries of ``inputs`` (LArCV1 files read as one sequence) for ``producers``.

    With ``shard_count > 1`` the worker serves shard ``shard_index`` only and its service becomes
    ``<config.service>_shard<shard_index>``.  ``cache_bytes``/``read_ahead``: see :class:`EntryCache`;
    ``preload``: fill the cache before registering; ``delay``: seconds added to every batch (tests, demos).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        inputs: Sequence[str],
        producers: Sequence[str] = ("wire",),
        shard_index: int = 0,
        shard_count: int = 1,
        cache_bytes: int = DEFAULT_CACHE_MB * 2**20,
        read_ahead: int = DEFAULT_READ_AHEAD,
        preload: bool = False,
        delay: float = 0.0,
        registry: Optional[CollectorRegistry] = None,
        context: Optional[zmq.Context[Any]] = None,
    ) -> None:
        if not inputs:
            raise ConfigError("the batch worker needs at least one input file")
        if not producers or len(set(producers)) != len(producers):
            raise ConfigError(f"producers must be distinct and at least one, got {list(producers)}")
        if shard_count < 1 or not 0 <= shard_index < shard_count:
            raise ConfigError(f"shard index must be in [0, {shard_count}), got {shard_index}")
        if cache_bytes < 0 or read_ahead < 1 or delay < 0:
            raise ConfigError("cache size and delay must be 0 or more, read-ahead at least 1")
        config = dataclasses.replace(config, service=shard_service(config.service, shard_index, shard_count))
        super().__init__(config, registry=registry, context=context)
        self.inputs = tuple(inputs)
        self.producers = tuple(producers)
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.cache_bytes = cache_bytes
        self.read_ahead = read_ahead
        self.preload = preload
        self.delay = delay
        self._reader: Optional[LArCV1Reader] = None
        self._cache: Optional[EntryCache] = None
        self._info: Optional[DatasetInfo] = None

    def setup(self) -> None:
        """Open the files (counting entries, checking the producers) and, if asked, fill the cache."""
        reader = LArCV1Reader(list(self.inputs), producers=list(self.producers))
        start, stop = shard_range(len(reader), self.shard_index, self.shard_count)
        self._reader = reader
        self._info = DatasetInfo(
            entries=len(reader), producers=self.producers, dataset=dataset_fingerprint(reader),
            files=tuple(p.name for p in reader.paths), shard_index=self.shard_index, shard_count=self.shard_count,
        )
        self._cache = EntryCache(reader, start, stop, self.cache_bytes, self.read_ahead)
        log.info(
            "dataset %s: %d entries of %s in %d file(s); serving shard %d/%d = entries [%d, %d)",
            self._info.dataset, len(reader), ",".join(self.producers), len(reader.paths), self.shard_index,
            self.shard_count, start, stop,
        )
        if start == stop:
            log.warning("shard %d of %d holds no entries", self.shard_index, self.shard_count)
        if self.preload:
            began = time.perf_counter()
            count = self._cache.preload()
            log.info("preloaded %d entries (%.1f MB) in %.2f s", count, self._cache.nbytes / 1e6,
                     time.perf_counter() - began)

    @property
    def info(self) -> DatasetInfo:
        if self._info is None:
            self.setup()
        assert self._info is not None
        return self._info

    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        request = decode_request(payload)
        if isinstance(request, InfoRequest):
            return self.info.encode()
        return self.batch(request).encode(request.compression)

    def batch(self, request: BatchRequest) -> BatchReply:
        """The reply to one batch request (no socket involved)."""
        info = self.info
        assert self._cache is not None
        start, stop = info.shard
        entries = request.entries
        outside = entries[(entries < start) | (entries >= stop)]
        if outside.size:
            owner = f"shard {self.shard_index} of {self.shard_count}, " if self.shard_count > 1 else ""
            raise DataError(f"entries {outside[:8].tolist()} are outside the entries [{start}, {stop}) this "
                            f"worker serves ({owner}dataset of {info.entries})")
        producers = request.producers or self.producers
        unknown = [p for p in producers if p not in self.producers]
        if unknown:
            raise DataError(f"producers {unknown} are not served here (producers: {list(self.producers)})")
        began = time.perf_counter()
        read_before = self._cache.reads
        rows = self._cache.get([int(i) for i in entries])
        assembled = assemble_batch(rows, producers, request.preprocess)
        if self.delay:
            time.sleep(self.delay)
        log.debug("batch %d/%d: %d entries (%d read from files) in %.3f s", request.epoch, request.index,
                  entries.size, self._cache.reads - read_before, time.perf_counter() - began)
        return BatchReply(request.epoch, request.index, info.dataset, entries, assembled.ids, assembled.products)


# ------------------------------------------------------------------------------------------ command line
def add_options(options: EnvOptions) -> None:
    """The ``--batch-*`` options of ``ssnet-worker`` (for ``--kind batch``)."""
    options.add("--batch-input", default=None, nargs="+", help="LArCV1 file(s), read as one sequence")
    options.add("--batch-file-list", default=None,
                help="a text file naming LArCV1 files, one per line (after --batch-input's)")
    options.add("--batch-producers", default=("wire",), nargs="+",
                help="Image2D producers served (e.g. wire segment)")
    options.add("--batch-shard-index", default=0, type=non_negative_int,
                help="the shard of the entries this worker owns (0 .. shard count - 1)")
    options.add("--batch-shard-count", default=1, type=positive_int,
                help="number of shards; above 1 the service becomes <service>_shard<index>")
    options.add("--batch-cache-mb", default=DEFAULT_CACHE_MB, type=non_negative_int,
                help="MB of decoded entries kept in memory (0: no cache)")
    options.add("--batch-read-ahead", default=DEFAULT_READ_AHEAD, type=positive_int,
                help="entries read together on a cache miss (aligned blocks)")
    options.add_flag("--batch-preload", help="fill the cache from the shard's start before registering")
    options.add("--batch-delay", default=0.0, type=non_negative_float,
                help="seconds added to every batch, to simulate slow preprocessing (tests, demos)")


def from_args(config: WorkerConfig, args: argparse.Namespace, registry: CollectorRegistry) -> BatchWorker:
    """The worker of ``ssnet-worker --kind batch`` from its parsed options; :class:`ConfigError` if they are bad."""
    inputs = list(args.batch_input or [])
    if args.batch_file_list:
        inputs += read_file_list(args.batch_file_list)
    if not inputs:
        raise ConfigError("--kind batch needs --batch-input or --batch-file-list (or SSNET_WORKER_BATCH_INPUT)")
    producers = list(args.batch_producers)
    if args.batch_shard_index >= args.batch_shard_count:
        raise ConfigError(f"--batch-shard-index {args.batch_shard_index} must be below --batch-shard-count "
                          f"{args.batch_shard_count}")
    return BatchWorker(
        config, inputs=inputs, producers=producers, shard_index=args.batch_shard_index,
        shard_count=args.batch_shard_count, cache_bytes=args.batch_cache_mb * 2**20,
        read_ahead=args.batch_read_ahead, preload=args.batch_preload, delay=args.batch_delay, registry=registry,
    )
