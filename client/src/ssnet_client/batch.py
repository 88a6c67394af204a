"""``BatchClient``: training batches from a pool of data workers (``ssnet-worker --kind batch``), prefetched.

A training loop iterates a :class:`BatchClient`; each :class:`Batch` holds, per producer, a float32 array
``(batch, planes, rows, cols)`` (read-only; it views the received message, no copy), the entries' global
indexes, their run/subrun/event ids (exact uint64) and metas, and how long the loop waited for it.
:meth:`Batch.torch` wraps the arrays as torch tensors without copying (torch is imported only then)::

    with BatchClient("tcp://broker:5559", producers=["wire"], batch_size=16, seed=7, epochs=10,
                     preprocess=Preprocess(planes=(2,), crop=(256, 256), threshold=10, clip=500)) as feed:
        for batch in feed:
            loss = step(batch.torch()["wire"].to("cuda", non_blocking=True))
        print(feed.stats.text())

Schedule.  The client decides every batch (see :mod:`ssnet_data.batchmsg` for why): epoch ``e`` visits the
dataset's entries once each, in order (``shuffle=False``) or in the seeded permutation :func:`epoch_order`
``(entries, e, seed)``, cut into batches of ``batch_size`` (the last one shorter unless ``drop_last``).  The
permutation is a sort by SplitMix64 hashes: the same on every machine and NumPy version, so a seed reproduces
a run.  The schedule does not depend on the deployment: with sharded workers each batch is split by shard
(one request per shard with entries in it) and reassembled in schedule order.

Prefetch.  ``prefetch`` batches stay requested while the loop works on the current one (``Client.imap``),
across epoch boundaries.  Replies come back in schedule order whatever order the workers answer in.

Failures.  A data worker that dies mid-request costs nothing but time: the broker gives its request to another
worker, and the client re-sends a request that times out.  If the broker gives up on it anyway (``worker_lost``,
or ``queue_timeout`` while a shard has no worker) the client requests that batch part again, until
``max_attempts`` workers in all have had it (:class:`~ssnet_client.jobs.RetryPolicy`; counted in
``stats.resubmits``).  A worker's error reply (bad entries, unreadable file)
raises :class:`~ssnet_common.errors.WorkerError`.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional, cast

import numpy as np

from ssnet_client.base import Client, ClientConfig, Reply
from ssnet_client.jobs import FanOut, JobStats, RetryPolicy
from ssnet_common.curve import CurveKeys
from ssnet_common.errors import (
    ConfigError,
    NoSuchService,
    ProtocolError,
)
from ssnet_data.batchmsg import (
    BatchReply,
    BatchRequest,
    DatasetInfo,
    InfoRequest,
    Preprocess,
    shard_of,
    shard_service,
)
from ssnet_data.imagemeta import ImageMeta

if TYPE_CHECKING:
    import zmq
    from numpy.typing import NDArray
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

_MASK = 2**64 - 1


# ------------------------------------------------------------------------------------------------ schedule
def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _splitmix64_array(values: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64's finaliser on every element (uint64 arithmetic wraps around, as intended)."""
    x = values + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))  # type: ignore[no-any-return]


def epoch_order(entries: int, epoch: int, seed: int = 0, shuffle: bool = True) -> NDArray[np.uint64]:
    """The order in which epoch ``epoch`` visits entries ``0 .. entries-1``: each exactly once.

    ``shuffle=False``: ascending.  Otherwise the entries sorted by ``splitmix64(i ^ salt(seed, epoch))``, a
    bijection of ``i``, so there are no ties: a permutation that depends only on (entries, epoch, seed).
    """
    if entries < 0 or epoch < 0:
        raise ValueError(f"entries and epoch must be 0 or more, got {entries}, {epoch}")
    indexes = np.arange(entries, dtype=np.uint64)
    if not shuffle:
        return indexes
    salt = _splitmix64(_splitmix64(seed & _MASK) ^ epoch)
    keys = _splitmix64_array(indexes ^ np.uint64(salt))
    return indexes[np.argsort(keys, kind="stable")]


def epoch_batches(
    entries: int, epoch: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = False
) -> list[NDArray[np.uint64]]:
    """The batches of epoch ``epoch``: :func:`epoch_order` cut into pieces of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    order = epoch_order(entries, epoch, seed, shuffle)
    stop = entries - entries % batch_size if drop_last else entries
    return [order[start:start + batch_size] for start in range(0, stop, batch_size)]


# ------------------------------------------------------------------------------------------------- batches
def as_torch(array: NDArray[Any]) -> Any:
    """``torch.from_numpy(array)``: a tensor sharing the array's memory (no copy).  torch is imported here.

    Arrays of a :class:`Batch` are read-only views of the received message; torch warns about that and this
    function silences the warning: treat the tensor as read-only (``.clone()`` it, or move it to a device,
    before modifying it in place).
    """
    torch = importlib.import_module("torch")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(array)


@dataclass(frozen=True, eq=False)
class Batch:
    """One training batch, its entries in schedule order.

    ``arrays[producer]``: float32 ``(batch, planes, rows, cols)``; ``metas[producer][i][p]``: the meta of
    ``arrays[producer][i, p]``; ``entries`` (batch,) and ``ids`` (batch, 3: run, subrun, event) as uint64.
    ``wait``: seconds the loop waited for this batch in ``next()``; ``rtt``: round trip of its slowest request.
    """

    epoch: int
    index: int
    entries: NDArray[np.uint64]
    ids: NDArray[np.uint64]
    arrays: dict[str, NDArray[Any]]
    metas: dict[str, tuple[tuple[ImageMeta, ...], ...]]
    wait: float = 0.0
    rtt: float = 0.0

    def __len__(self) -> int:
        return int(self.entries.size)

    def __getitem__(self, producer: str) -> NDArray[Any]:
        return self.arrays[producer]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())

    def torch(self) -> dict[str, Any]:
        """``{producer: torch tensor}`` sharing the arrays' memory (see :func:`as_torch`)."""
        return {name: as_torch(array) for name, array in self.arrays.items()}


# ------------------------------------------------------------------------------------------------- client
@dataclass(frozen=True, eq=False)
class _Part:
    """The entries of one batch that one shard serves, and where they sit in the batch."""

    service: str
    positions: NDArray[np.intp]
    request: BatchRequest


@dataclass(frozen=True, eq=False)
class _Planned:
    epoch: int
    index: int
    entries: NDArray[np.uint64]
    parts: list[_Part]


class BatchClient:
    """Iterates training batches served by data service ``service`` through the broker at ``broker``.

    ``producers``: which of the workers' producers to get (default: all, in the workers' order).
    ``batch_size``, ``shuffle``, ``seed``, ``drop_last``: the schedule (:func:`epoch_batches`).
    ``epochs``: how many epochs iterating yields (None: without end), from ``start_epoch``.
    ``prefetch``: batches kept requested while the caller works on one.
    ``preprocess``: what the workers do to each batch (:class:`~ssnet_data.batchmsg.Preprocess`).
    ``compression``: ``"zlib"`` to compress the image arrays on the wire (slow networks only).
    ``shards``: None to find out (a service ``service``, else ``service_shard0`` ... whose info gives the
    count), 1 for unsharded workers, S for workers registered as ``service_shard0`` .. ``service_shard<S-1>``.
    ``timeout``/``retries``: per request attempt, as :class:`~ssnet_client.base.ClientConfig`;
    ``max_attempts``: workers a batch part may be given to in all, across requests sent again after the broker
    gave up on it (:class:`~ssnet_client.jobs.RetryPolicy`).
    ``discover_timeout``: how long to wait for the service's first worker.
    ``client``: a :class:`Client` to use (default: one of our own, closed by :meth:`close`).
    ``curve``: this client's CURVE key pair and the broker's public key (:func:`ssnet_common.curve.peer_keys`).

    Use it from one thread (as :class:`Client`).  Iterating twice starts the schedule again; :attr:`stats`
    accumulates over every iteration.
    """

    def __init__(
        self,
        broker: str,
        *,
        service: str = "batch",
        producers: Optional[Sequence[str]] = None,
        batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        epochs: Optional[int] = 1,
        start_epoch: int = 0,
        drop_last: bool = False,
        prefetch: int = 4,
        preprocess: Optional[Preprocess] = None,
        compression: Optional[str] = None,
        shards: Optional[int] = None,
        timeout: float = 60.0,
        retries: int = 2,
        max_attempts: int = 5,
        discover_timeout: float = 60.0,
        client: Optional[Client] = None,
        curve: Optional[CurveKeys] = None,
        registry: Optional[CollectorRegistry] = None,
        context: Optional[zmq.Context[Any]] = None,
    ) -> None:
        if batch_size < 1 or prefetch < 0 or start_epoch < 0 or (epochs is not None and epochs < 0):
            raise ConfigError(f"need batch_size >= 1, prefetch >= 0, start_epoch >= 0, epochs >= 0 or None; got "
                              f"{batch_size}, {prefetch}, {start_epoch}, {epochs}")
        if shards is not None and shards < 1:
            raise ConfigError(f"shards must be at least 1 (or None to find out), got {shards}")
        if max_attempts < 1 or not discover_timeout > 0:
            raise ConfigError("max_attempts must be at least 1 and discover_timeout positive")
        self.service = service
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epochs = epochs
        self.start_epoch = start_epoch
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.preprocess = preprocess if preprocess is not None else Preprocess()
        self.compression = compression
        self.policy = RetryPolicy(max_attempts)
        self.discover_timeout = discover_timeout
        self.timeout = timeout
        self.stats = JobStats(unit="batch")
        self._producers = tuple(producers) if producers is not None else None
        self._shards = shards
        self._info: Optional[DatasetInfo] = None
        self._own_client = client is None
        self.client = client if client is not None else Client(
            broker, ClientConfig(timeout=timeout, retries=retries, curve=curve), registry=registry, context=context,
        )

    # ---------------------------------------------------------------------------------------------- info
    @property
    def info(self) -> DatasetInfo:
        """The dataset the workers serve (asked once; waits up to ``discover_timeout`` for a worker)."""
        if self._info is None:
            self._info = self._discover()
        return self._info

    @property
    def shards(self) -> int:
        self.info  # noqa: B018 - discovery sets the shard count
        assert self._shards is not None
        return self._shards

    @property
    def producers(self) -> tuple[str, ...]:
        return self._producers if self._producers is not None else self.info.producers

    def __len__(self) -> int:
        """Batches per epoch."""
        entries = self.info.entries
        return entries // self.batch_size if self.drop_last else -(-entries // self.batch_size)

    def _discover(self) -> DatasetInfo:
        shards = self._shards
        if shards is None:
            deadline = time.monotonic() + self.discover_timeout
            first_shard = shard_service(self.service, 0, 2)  # the name shard 0 registers when sharded
            while shards is None:
                if self.client.has_service(self.service, timeout=self.discover_timeout):
                    shards = 1
                elif self.client.has_service(first_shard, timeout=self.discover_timeout):
                    shards = self._ask_info(first_shard).shard_count
                elif time.monotonic() > deadline:
                    raise NoSuchService(f"no worker serves {self.service!r} or {first_shard!r} after "
                                        f"{self.discover_timeout:g} s", service=self.service)
                else:
                    time.sleep(0.05)  # MMI answers at once: pace the polling while workers start
        services = [shard_service(self.service, k, shards) for k in range(shards)]
        replies = self.client.imap(
            ((name, InfoRequest().encode()) for name in services), timeout=self.discover_timeout, window=shards,
        )
        infos = [self._decode_info(name, reply) for name, reply in zip(services, replies)]
        first = infos[0]
        for k, info in enumerate(infos):
            if (info.shard_index, info.shard_count) != (k, shards):
                raise ConfigError(f"service {services[k]!r} serves shard {info.shard_index} of "
                                  f"{info.shard_count}, expected shard {k} of {shards}")
            if (info.entries, info.dataset, info.producers) != (first.entries, first.dataset, first.producers):
                raise ConfigError(f"shards disagree on the dataset: {services[0]!r} has {first.entries} entries of "
                                  f"{first.dataset} {list(first.producers)}, {services[k]!r} {info.entries} of "
                                  f"{info.dataset} {list(info.producers)}")
        if self._producers is not None:
            unknown = [p for p in self._producers if p not in first.producers]
            if unknown or not self._producers:
                raise ConfigError(f"producers {list(self._producers)}: the workers serve {list(first.producers)}")
        self._shards = shards
        log.info("dataset %s: %d entries of %s in %s, %d shard(s)", first.dataset, first.entries,
                 ",".join(first.producers), ",".join(first.files), shards)
        return first

    def _ask_info(self, service: str) -> DatasetInfo:
        payload = self.client.request(service, InfoRequest().encode(), timeout=self.discover_timeout)
        return self._decode_info(service, payload)

    @staticmethod
    def _decode_info(service: str, reply: Any) -> DatasetInfo:
        payload = reply.payload if isinstance(reply, Reply) else reply
        try:
            return DatasetInfo.decode(payload)
        except ProtocolError as exc:
            raise ProtocolError(f"service {service!r} answered the info request with something else: {exc}") from None

    # ------------------------------------------------------------------------------------------ schedule
    def plan(self, epoch: int) -> list[NDArray[np.uint64]]:
        """The entries of every batch of ``epoch``, in order."""
        return epoch_batches(self.info.entries, epoch, self.batch_size, seed=self.seed, shuffle=self.shuffle,
                             drop_last=self.drop_last)

    def _planned(self, epochs: Iterator[int]) -> Iterator[_Planned]:
        info, shards = self.info, self.shards
        producers = self.producers if self._producers is not None else ()
        for epoch in epochs:
            for index, entries in enumerate(self.plan(epoch)):
                owners = shard_of(entries, info.entries, shards) if shards > 1 else np.zeros(entries.size, np.int64)
                parts = []
                for shard in np.unique(owners).tolist():
                    positions = np.flatnonzero(owners == shard)
                    request = BatchRequest(epoch, index, entries[positions], producers, self.preprocess,
                                           self.compression)
                    parts.append(_Part(shard_service(self.service, shard, shards), positions, request))
                yield _Planned(epoch, index, entries, parts)

    # --------------------------------------------------------------------------------------------- batches
    def __iter__(self) -> Iterator[Batch]:
        """Every batch of epochs ``start_epoch`` .. ``start_epoch + epochs - 1`` (no end if ``epochs`` is None)."""
        if self.epochs is None:
            return self._batches(itertools.count(self.start_epoch))
        return self._batches(iter(range(self.start_epoch, self.start_epoch + self.epochs)))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch."""
        return self._batches(iter([epoch]))

    def _batches(self, epochs: Iterator[int]) -> Iterator[Batch]:
        self.info  # noqa: B018 - discover before the clock starts
        fan: FanOut[_Planned] = FanOut(
            self.client, self.stats, describe=lambda planned: f"batch {planned.epoch}/{planned.index}",
            policy=self.policy, window=(self.prefetch + 1) * self.shards, timeout=self.timeout,
        )
        units = ((planned, [(part.service, part.request.encode()) for part in planned.parts])
                 for planned in self._planned(epochs))
        stream = fan.run(units)
        try:
            while True:
                began = time.monotonic()
                try:
                    planned, replies = next(stream)
                except StopIteration:
                    return
                answers = cast("list[Reply]", replies)  # FanOut raises a failed request's error
                batch = _assemble(planned, [(part, self._decode(planned, part, reply), reply.rtt)
                                            for part, reply in zip(planned.parts, answers)])
                yield replace(batch, wait=self.stats.handed(len(batch), batch.nbytes, waited_since=began))
        finally:
            stream.close()

    def _decode(self, planned: _Planned, part: _Part, reply: Reply) -> BatchReply:
        try:
            decoded = BatchReply.decode(reply.payload)
        except ProtocolError as exc:
            raise ProtocolError(f"service {part.service!r}, batch {planned.epoch}/{planned.index}: not a "
                                f"batch reply: {exc}") from None
        self._check(planned, part, decoded)
        return decoded

    def _check(self, planned: _Planned, part: _Part, reply: BatchReply) -> None:
        where = f"service {part.service!r}, batch {planned.epoch}/{planned.index}"
        if (reply.epoch, reply.index) != (planned.epoch, planned.index):
            raise ProtocolError(f"{where}: the reply is batch {reply.epoch}/{reply.index}")
        if not np.array_equal(reply.entries, part.request.entries):
            raise ProtocolError(f"{where}: the reply holds entries {reply.entries.tolist()[:8]}..., "
                                f"asked for {part.request.entries.tolist()[:8]}...")
        if reply.dataset != self.info.dataset:
            raise ConfigError(f"{where}: the worker reads dataset {reply.dataset}, not {self.info.dataset}: "
                              "the service's workers do not read the same files")
        names = tuple(p.name for p in reply.products)
        if names != self.producers:
            raise ProtocolError(f"{where}: the reply holds producers {list(names)}, asked for {list(self.producers)}")

    # ------------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the client's connection (if it made it); batches not yet handed out are abandoned."""
        if self._own_client:
            self.client.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _assemble(planned: _Planned, replies: list[tuple[_Part, BatchReply, float]]) -> Batch:
    """One :class:`Batch` from the replies of its parts (no copy when one part holds it all)."""
    rtt = max(r for _, _, r in replies)
    if len(replies) == 1:
        (_, reply, _), = replies
        return Batch(planned.epoch, planned.index, reply.entries, reply.ids,
                     {p.name: p.array for p in reply.products}, {p.name: p.metas for p in reply.products}, rtt=rtt)
    size = planned.entries.size
    ids = np.empty((size, 3), dtype=np.uint64)
    arrays: dict[str, NDArray[Any]] = {}
    metas: dict[str, list[Any]] = {}
    for part, reply, _ in replies:
        ids[part.positions] = reply.ids
        for product in reply.products:
            array = arrays.get(product.name)
            if array is None:
                array = arrays[product.name] = np.empty((size, *product.array.shape[1:]), product.array.dtype)
                metas[product.name] = [None] * size
            if array.shape[1:] != product.array.shape[1:] or array.dtype != product.array.dtype:
                raise ProtocolError(
                    f"batch {planned.epoch}/{planned.index}, producer {product.name!r}: shards sent "
                    f"{array.shape[1:]} {array.dtype} and {product.array.shape[1:]} {product.array.dtype}; "
                    "crop to a fixed size or select planes"
                )
            array[part.positions] = product.array
            for position, row in zip(part.positions.tolist(), product.metas):
                metas[product.name][position] = row
    return Batch(planned.epoch, planned.index, planned.entries, ids, arrays,
                 {name: tuple(rows) for name, rows in metas.items()}, rtt=rtt)
