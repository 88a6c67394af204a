"""The messages of the training network: a training loop asks data workers for batches of LArCV1 entries.

Who decides what.  The *client* decides every batch: it computes a seeded schedule from the dataset size
(:func:`ssnet_client.batch.epoch_order`) and names the exact entries of each batch in its request.  A data
worker is stateless: it reads the entries it is given, preprocesses them and answers.  So any worker of a
service serves a request identically, a request whose worker died is simply served again by another one (the
broker re-queues it; the client re-sends it), and no entry is served twice or lost within an epoch whatever
the number of workers.  The cost is 8 bytes per entry in the request.  Rejected alternatives: workers that
iterate the data themselves (each keeps a cursor: a dead worker's place in the epoch is lost, and several
workers need coordination not to repeat entries), and requests that carry only (seed, epoch, batch index)
(as robust, but every worker must then compute the same permutation, so client and workers must agree on the
algorithm and the dataset size forever; explicit entries keep the worker trivially correct).

Sharding.  A data worker may own one shard of the entries instead (``shard_index``/``shard_count``): shard
``k`` of ``S`` is the contiguous range :func:`shard_range` ``(n, k, S)``, and the worker registers as service
:func:`shard_service` ``(service, k, S)`` (``batch_shard0``, ``batch_shard1``, ...) and refuses entries outside
its range.  The client then splits every batch of the *same* schedule by shard, sends one request per shard
that has entries in it and puts the parts back in batch order; batches and their order do not depend on how
the workers are deployed.  Shards buy locality (a worker reads and caches only its part of the files).  Their
price: up to S requests per batch and one copy in the client to join the parts (an unsharded batch is handed
out without copies), and a shard needs a live worker: the request of a dead shard worker waits in the broker
until a replica or a restarted worker of that shard registers (``--queue-timeout``), where an unsharded
request is served by any survivor at once.  Within an epoch the training loop sees every entry exactly once
either way (a worker that dies after reading an entry has not delivered it).

Frames.  Every message starts with a tag frame; JSON frames are compact, strictly validated (exact keys,
types, ranges) and size-limited; arrays go through :mod:`ssnet_data.ndarray`; ids are exact ``uint64``
arrays; metas are :meth:`ImageMeta.dump` texts.  Nothing is pickled.  Every ``decode`` raises
:class:`ProtocolError` on anything that is not a valid message::

    InfoRequest   client -> worker   [b"ssnb1.info"]
    DatasetInfo   worker -> client   [b"ssnb1.dataset", JSON]
    BatchRequest  client -> worker   [b"ssnb1.get", JSON spec, entries (uint64 (B,): 2 frames)]
    BatchReply    worker -> client   [b"ssnb1.batch", JSON header, entries (uint64 (B,)), ids (uint64 (B, 3)),
                                      then per product: metas text, array (B, planes, rows, cols)]

A product's metas text holds ``B * planes`` dumps, entry by entry and plane by plane, each ending with its
newline; it describes the pixels as sent (a cropped image has the meta of the crop).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import Frame, frame_bytes, frame_len
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.ndarray import COMPRESSIONS, DEFAULT_MAX_NBYTES, decode_array, encode_array
from ssnet_data.services import SHARD, sub_service

if TYPE_CHECKING:
    from numpy.typing import NDArray

TAG_INFO = b"ssnb1.info"
TAG_DATASET = b"ssnb1.dataset"
TAG_GET = b"ssnb1.get"
TAG_BATCH = b"ssnb1.batch"

MAX_JSON = 64 * 1024
MAX_BATCH = 65536
MAX_METAS_TEXT = 16 * 1024 * 1024
MAX_PRODUCERS = 64
MAX_PLANES = 64
MAX_NAME = 255
MAX_U64 = 2**64 - 1
_NAME_RE = re.compile(r"\w+", re.ASCII)  # LArCV1 producer names
_DATASET_RE = re.compile(r"[0-9a-f]{1,64}", re.ASCII)


# ------------------------------------------------------------------------------------------------ shards
def shard_range(entries: int, index: int, count: int) -> tuple[int, int]:
    """Entries ``[start, stop)`` owned by shard ``index`` of ``count``: contiguous, sizes differ by at most one."""
    if count < 1 or not 0 <= index < count or entries < 0:
        raise ValueError(f"shard {index} of {count} over {entries} entries does not exist")
    return index * entries // count, (index + 1) * entries // count


def shard_of(entries: NDArray[Any], total: int, count: int) -> NDArray[np.int64]:
    """The shard index of each entry (inverse of :func:`shard_range`)."""
    starts = np.array([shard_range(total, k, count)[0] for k in range(count)], dtype=np.int64)
    return np.searchsorted(starts, np.asarray(entries, dtype=np.int64), side="right").astype(np.int64) - 1


def shard_service(service: str, index: int, count: int) -> str:
    """The service a shard's workers register: ``service`` itself when unsharded, else ``<service>_shard<k>``."""
    shard_range(0, index, count)  # validates index and count
    return service if count == 1 else sub_service(service, SHARD, index)


# ------------------------------------------------------------------------------------------------ helpers
def _tag(frames: Sequence[Frame], tag: bytes, count: Optional[int], what: str) -> None:
    if not frames or frame_len(frames[0]) > 32 or frame_bytes(frames[0]) != tag:
        first = frame_bytes(frames[0])[:32] if frames and frame_len(frames[0]) <= 4096 else b"..."
        raise ProtocolError(f"{what} must start with the tag frame {tag!r}, got {first!r}")
    if count is not None and len(frames) != count:
        raise ProtocolError(f"{what} has {count} frames, got {len(frames)}")


def _dump_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


def _load_json(frame: Frame, keys: Sequence[str], what: str) -> dict[str, Any]:
    if frame_len(frame) > MAX_JSON:
        raise ProtocolError(f"{what} is larger than {MAX_JSON} bytes")
    raw = frame_bytes(frame)
    try:
        value = json.loads(raw.decode("ascii"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(f"{what} is not JSON: {raw[:80]!r}") from None
    if not isinstance(value, dict) or set(value) != set(keys):
        raise ProtocolError(f"{what} must have exactly the keys {sorted(keys)}: {raw[:200]!r}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _int(value: object, what: str, low: int = 0, high: int = MAX_U64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{what} must be a producer name (letters, digits, '_'), got {value!r}")
    return value


def _names(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) > MAX_PRODUCERS:
        raise ValueError(f"{what} must be a list of at most {MAX_PRODUCERS} producer names, got {value!r}")
    names = tuple(_name(v, what) for v in value)
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be distinct, got {list(names)}")
    return names


def _optional(value: object, convert: Any, what: str) -> Any:
    return None if value is None else convert(value, what)


def _decoded(factory: Any, what: str) -> Any:
    """Call ``factory()``; a ``ValueError`` (a field out of range) becomes a :class:`ProtocolError`."""
    try:
        return factory()
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def _entries_array(value: object, what: str) -> NDArray[np.uint64]:
    if isinstance(value, (list, tuple)):  # Python ints: exactly (NumPy would make [1, 2**64 - 1] float64)
        array = np.array([_int(v, f"each of {what}") for v in value], dtype=np.uint64)
    else:
        array = np.asarray(value)
    if array.ndim != 1 or not 1 <= array.size <= MAX_BATCH:
        raise ValueError(f"{what} must be a 1-D array of 1 to {MAX_BATCH} entry indexes, got shape {array.shape}")
    if array.dtype.kind == "i":
        if (array < 0).any():
            raise ValueError(f"{what} must not be negative")
    elif array.dtype.kind != "u":
        raise ValueError(f"{what} must be integers, got dtype {array.dtype}")
    entries = array.astype(np.uint64)
    if np.unique(entries).size != entries.size:
        raise ValueError(f"{what} must be distinct")
    return entries


def _decode_array(frames: Sequence[Frame], what: str, max_nbytes: int = DEFAULT_MAX_NBYTES) -> NDArray[Any]:
    try:
        return decode_array(frames[0], frames[1], max_nbytes)
    except ProtocolError as exc:
        raise ProtocolError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------------------------- preprocess
@dataclass(frozen=True)
class Preprocess:
    """What a data worker does to each batch, in this order (pure functions: :mod:`ssnet_worker.batch`).

    1. ``planes``: per entry and producer, keep the images whose ``meta.plane`` is in ``planes``, in that
       order (an entry without one of them is an error); ``None`` keeps every image in stored order.
    2. ``crop`` ``(rows, cols)``: cut every image to that size around its activity: the charge-weighted
       centre of the pixels above ``crop_threshold`` in producer ``crop_producer`` (default: the first
       producer requested), clamped inside the image (the image's centre if it has no activity).  The same
       window cuts every producer of that entry and plane, and the metas describe the crop.
    3. ``threshold`` / ``clip``: in ``adc_producers`` (default: the first producer requested), pixels below
       ``threshold`` become 0 and pixels above ``clip`` become ``clip``.
    """

    planes: Optional[tuple[int, ...]] = None
    crop: Optional[tuple[int, int]] = None
    crop_threshold: float = 0.0
    crop_producer: Optional[str] = None
    threshold: Optional[float] = None
    clip: Optional[float] = None
    adc_producers: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if self.planes is not None:
            planes: object = self.planes
            if isinstance(planes, (str, bytes)) or not isinstance(planes, (list, tuple)) or not (
                1 <= len(planes) <= MAX_PLANES
            ):
                raise ValueError(f"planes must be a list of 1 to {MAX_PLANES} plane numbers, got {planes!r}")
            checked = tuple(_int(p, "a plane", 0, 65535) for p in planes)
            if len(set(checked)) != len(checked):
                raise ValueError(f"planes must be distinct, got {list(checked)}")
            object.__setattr__(self, "planes", checked)
        if self.crop is not None:
            crop: object = self.crop
            if isinstance(crop, (str, bytes)) or not isinstance(crop, (list, tuple)) or len(crop) != 2:
                raise ValueError(f"crop must be (rows, cols), got {crop!r}")
            size = (_int(crop[0], "crop rows", 1, 2**31), _int(crop[1], "crop cols", 1, 2**31))
            object.__setattr__(self, "crop", size)
        object.__setattr__(self, "crop_threshold", _number(self.crop_threshold, "crop_threshold"))
        object.__setattr__(self, "crop_producer", _optional(self.crop_producer, _name, "crop_producer"))
        object.__setattr__(self, "threshold", _optional(self.threshold, _number, "threshold"))
        object.__setattr__(self, "clip", _optional(self.clip, _number, "clip"))
        object.__setattr__(self, "adc_producers", _optional(self.adc_producers, _names, "adc_producers"))
        if self.threshold is not None and self.clip is not None and self.clip < self.threshold:
            raise ValueError(f"clip ({self.clip}) must not be below threshold ({self.threshold})")

    def to_json(self) -> dict[str, Any]:
        return {
            "planes": None if self.planes is None else list(self.planes),
            "crop": None if self.crop is None else list(self.crop),
            "crop_threshold": self.crop_threshold,
            "crop_producer": self.crop_producer,
            "threshold": self.threshold,
            "clip": self.clip,
            "adc_producers": None if self.adc_producers is None else list(self.adc_producers),
        }

    @classmethod
    def from_json(cls, value: object) -> Preprocess:
        keys = ("planes", "crop", "crop_threshold", "crop_producer", "threshold", "clip", "adc_producers")
        if not isinstance(value, dict) or set(value) != set(keys):
            raise ProtocolError(f"preprocess must have exactly the keys {sorted(keys)}, got {value!r:.200}")
        return _decoded(lambda: cls(**value), "preprocess")  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------- info
@dataclass(frozen=True)
class InfoRequest:
    """What a data service serves: answered with a :class:`DatasetInfo`."""

    def encode(self) -> list[Frame]:
        return [TAG_INFO]

    @classmethod
    def decode(cls, frames: Sequence[Frame]) -> InfoRequest:
        _tag(frames, TAG_INFO, 1, "info request")
        return cls()


@dataclass(frozen=True)
class DatasetInfo:
    """A data worker's dataset: ``entries`` in all (every shard's), its ``producers``, a ``dataset``
    fingerprint (hex; equal for workers that read the same files), the file names, and the worker's shard.
    """

    entries: int
    producers: tuple[str, ...]
    dataset: str
    files: tuple[str, ...] = ()
    shard_index: int = 0
    shard_count: int = 1

    def __post_init__(self) -> None:
        _int(self.entries, "entries", 0, 2**63 - 1)
        object.__setattr__(self, "producers", _names(self.producers, "producers"))
        if not self.producers:
            raise ValueError("a dataset has at least one producer")
        if not isinstance(self.dataset, str) or not _DATASET_RE.fullmatch(self.dataset):
            raise ValueError(f"dataset must be 1 to 64 lower-case hex digits, got {self.dataset!r}")
        files: object = self.files
        if isinstance(files, str) or not isinstance(files, (list, tuple)) or not all(
            isinstance(f, str) and 0 < len(f) <= 4096 for f in files
        ):
            raise ValueError(f"files must be a list of file names, got {files!r:.200}")
        object.__setattr__(self, "files", tuple(files))
        _int(self.shard_count, "shard_count", 1, 65536)
        _int(self.shard_index, "shard_index", 0, self.shard_count - 1)

    @property
    def shard(self) -> tuple[int, int]:
        """The entries ``[start, stop)`` this worker serves."""
        return shard_range(self.entries, self.shard_index, self.shard_count)

    def encode(self) -> list[Frame]:
        return [TAG_DATASET, _dump_json({
            "entries": self.entries, "producers": list(self.producers), "dataset": self.dataset,
            "files": list(self.files), "shard_index": self.shard_index, "shard_count": self.shard_count,
        })]

    @classmethod
    def decode(cls, frames: Sequence[Frame]) -> DatasetInfo:
        _tag(frames, TAG_DATASET, 2, "dataset info")
        value = _load_json(frames[1], ("entries", "producers", "dataset", "files", "shard_index", "shard_count"),
                           "dataset info")
        return _decoded(lambda: cls(**value), "dataset info")  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------ batches
@dataclass(frozen=True, eq=False)
class BatchRequest:
    """Batch ``index`` of ``epoch``: the given ``entries`` (global indexes, distinct), in that order.

    ``producers``: which of the worker's producers to send, in this order (empty: all of them, in the
    worker's order).  ``compression``: the ndarray codec's compression for the reply's image arrays.
    ``epoch`` and ``index`` only label the batch (the reply repeats them).
    """

    epoch: int
    index: int
    entries: NDArray[np.uint64]
    producers: tuple[str, ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    compression: Optional[str] = None

    def __post_init__(self) -> None:
        _int(self.epoch, "epoch")
        _int(self.index, "index")
        object.__setattr__(self, "entries", _entries_array(self.entries, "entries"))
        object.__setattr__(self, "producers", _names(self.producers, "producers"))
        if not isinstance(self.preprocess, Preprocess):
            raise ValueError(f"preprocess must be a Preprocess, got {type(self.preprocess).__name__}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")

    def encode(self) -> list[Frame]:
        spec = _dump_json({
            "epoch": self.epoch, "index": self.index, "producers": list(self.producers),
            "preprocess": self.preprocess.to_json(), "compression": self.compression,
        })
        return [TAG_GET, spec, *encode_array(self.entries.astype("<u8", copy=False))]

    @classmethod
    def decode(cls, frames: Sequence[Frame]) -> BatchRequest:
        _tag(frames, TAG_GET, 4, "batch request")
        spec = _load_json(frames[1], ("epoch", "index", "producers", "preprocess", "compression"), "batch request")
        entries = _decode_array(frames[2:4], "batch request entries", max_nbytes=8 * MAX_BATCH)
        if entries.dtype.kind != "u" or entries.dtype.itemsize != 8:
            raise ProtocolError(f"batch request entries must be uint64, got {entries.dtype}")
        preprocess = Preprocess.from_json(spec["preprocess"])
        return _decoded(  # type: ignore[no-any-return]
            lambda: cls(spec["epoch"], spec["index"], entries, spec["producers"], preprocess, spec["compression"]),
            "batch request",
        )


Request = Union[InfoRequest, BatchRequest]


def decode_request(frames: Sequence[Frame]) -> Request:
    """The request a data worker received (:class:`InfoRequest` or :class:`BatchRequest`)."""
    if frames and frame_len(frames[0]) <= 32 and frame_bytes(frames[0]) == TAG_INFO:
        return InfoRequest.decode(frames)
    return BatchRequest.decode(frames)


@dataclass(frozen=True, eq=False)
class BatchProduct:
    """One producer's images of a batch: ``array`` (B, planes, rows, cols) and ``metas[entry][plane]``."""

    name: str
    metas: tuple[tuple[ImageMeta, ...], ...]
    array: NDArray[Any]

    def __post_init__(self) -> None:
        _name(self.name, "product name")
        array = self.array
        if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"product {self.name!r}: array must be (batch, planes, rows, cols), "
                             f"got {getattr(array, 'shape', type(array).__name__)}")
        metas = tuple(tuple(row) for row in self.metas)
        if len(metas) != array.shape[0] or any(len(row) != array.shape[1] for row in metas):
            raise ValueError(f"product {self.name!r}: metas are not (batch, planes) = {array.shape[:2]}")
        for entry, row in enumerate(metas):
            for plane, meta in enumerate(row):
                if not isinstance(meta, ImageMeta) or meta.shape != array.shape[2:]:
                    raise ValueError(f"product {self.name!r}, batch entry {entry}, image {plane}: meta "
                                     f"{getattr(meta, 'shape', meta)} does not match the images {array.shape[2:]}")
        object.__setattr__(self, "metas", metas)

    def metas_text(self) -> str:
        return "".join(meta.dump() for row in self.metas for meta in row)


def _parse_metas(text: str, batch: int, planes: int, what: str) -> tuple[tuple[ImageMeta, ...], ...]:
    metas: list[ImageMeta] = []
    pos = 0
    while pos < len(text):
        if len(metas) == batch * planes:
            raise ProtocolError(f"{what}: more than {batch * planes} metas")
        meta, pos = ImageMeta.parse_prefix(text, pos)
        metas.append(meta)
    if len(metas) != batch * planes:
        raise ProtocolError(f"{what}: {len(metas)} metas for (batch, planes) = ({batch}, {planes})")
    return tuple(tuple(metas[i * planes:(i + 1) * planes]) for i in range(batch))


@dataclass(frozen=True, eq=False)
class BatchReply:
    """Batch ``index`` of ``epoch``: its ``entries`` (B,), their ``ids`` (B, 3: run, subrun, event, exact
    uint64) and one :class:`BatchProduct` per producer, all in the order of the request's entries.
    ``dataset``: the fingerprint of the worker's files (see :class:`DatasetInfo`).
    """

    epoch: int
    index: int
    dataset: str
    entries: NDArray[np.uint64]
    ids: NDArray[np.uint64]
    products: tuple[BatchProduct, ...]

    def __post_init__(self) -> None:
        _int(self.epoch, "epoch")
        _int(self.index, "index")
        if not isinstance(self.dataset, str) or not _DATASET_RE.fullmatch(self.dataset):
            raise ValueError(f"dataset must be 1 to 64 lower-case hex digits, got {self.dataset!r}")
        entries = _entries_array(self.entries, "entries")
        ids = np.asarray(self.ids)
        if ids.shape != (entries.size, 3) or ids.dtype.kind != "u" or ids.dtype.itemsize != 8:
            raise ValueError(f"ids must be uint64 of shape ({entries.size}, 3), got {ids.dtype} {ids.shape}")
        products = tuple(self.products)
        if not 1 <= len(products) <= MAX_PRODUCERS or not all(isinstance(p, BatchProduct) for p in products):
            raise ValueError(f"a batch has 1 to {MAX_PRODUCERS} products")
        names = [p.name for p in products]
        if len(set(names)) != len(names):
            raise ValueError(f"product names must be distinct, got {names}")
        for product in products:
            if product.array.shape[0] != entries.size:
                raise ValueError(f"product {product.name!r} holds {product.array.shape[0]} entries, "
                                 f"the batch {entries.size}")
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "products", products)

    def product(self, name: str) -> BatchProduct:
        for product in self.products:
            if product.name == name:
                return product
        raise KeyError(f"no product {name!r} in the batch (it has {[p.name for p in self.products]})")

    def encode(self, compression: Optional[str] = None) -> list[Frame]:
        header = _dump_json({
            "epoch": self.epoch, "index": self.index, "dataset": self.dataset,
            "producers": [p.name for p in self.products],
        })
        frames: list[Frame] = [
            TAG_BATCH, header,
            *encode_array(self.entries.astype("<u8", copy=False)),
            *encode_array(np.asarray(self.ids).astype("<u8", copy=False)),
        ]
        for product in self.products:
            frames.append(product.metas_text().encode("ascii"))
            frames.extend(encode_array(product.array, compression))
        return frames

    @classmethod
    def decode(cls, frames: Sequence[Frame], max_nbytes: int = DEFAULT_MAX_NBYTES) -> BatchReply:
        _tag(frames, TAG_BATCH, None, "batch reply")
        if len(frames) < 9 or (len(frames) - 6) % 3:
            raise ProtocolError(f"a batch reply has 6 + 3 per product frames, got {len(frames)}")
        header = _load_json(frames[1], ("epoch", "index", "dataset", "producers"), "batch reply header")
        names = _decoded(lambda: _names(header["producers"], "producers"), "batch reply header")
        if len(names) != (len(frames) - 6) // 3:
            raise ProtocolError(f"batch reply header names {len(names)} producers, the frames hold "
                                f"{(len(frames) - 6) // 3}")
        entries = _decode_array(frames[2:4], "batch reply entries", max_nbytes=8 * MAX_BATCH)
        ids = _decode_array(frames[4:6], "batch reply ids", max_nbytes=24 * MAX_BATCH)
        for what, array in (("entries", entries), ("ids", ids)):
            if array.dtype.kind != "u" or array.dtype.itemsize != 8:
                raise ProtocolError(f"batch reply {what} must be uint64, got {array.dtype}")
        products = []
        for number, name in enumerate(names):
            base = 6 + 3 * number
            what = f"batch reply product {name!r}"
            array = _decode_array(frames[base + 1:base + 3], what, max_nbytes)
            if array.ndim != 4:
                raise ProtocolError(f"{what}: array must be (batch, planes, rows, cols), got shape {array.shape}")
            if frame_len(frames[base]) > MAX_METAS_TEXT:
                raise ProtocolError(f"{what}: metas text larger than {MAX_METAS_TEXT} bytes")
            try:
                text = frame_bytes(frames[base]).decode("ascii")
            except UnicodeDecodeError:
                raise ProtocolError(f"{what}: metas are not ASCII text") from None
            metas = _parse_metas(text, array.shape[0], array.shape[1], what)
            products.append(_decoded(lambda n=name, m=metas, a=array: BatchProduct(n, m, a), what))
        return _decoded(  # type: ignore[no-any-return]
            lambda: cls(header["epoch"], header["index"], header["dataset"], entries, ids, tuple(products)),
            "batch reply",
        )
