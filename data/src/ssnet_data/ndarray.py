"""ndarray codec: an array travels as two frames, a small self-describing header and a data frame.

Header frame
    ``NDA1`` followed by compact JSON.  Dense codecs: exactly
    ``{"dtype": "<f4", "shape": [3, 512, 512], "compression": null}``; sparse codecs add exactly two keys,
    ``{..., "compression": "sparse", "index": "<u4", "count": 51784}``.  ``dtype`` is a NumPy type string with
    explicit byte order (``<``, ``>`` or ``|``); only plain numeric kinds are allowed (bool, signed and unsigned
    integers, floats).  ``shape`` is at most :data:`MAX_NDIM` non-negative integers.  ``compression`` names the
    codec of the data frame, one of :data:`COMPRESSIONS`.  ``index`` is the type of the sparse indices,
    ``"<u4"`` or ``"<u8"`` (encoders write ``"<u4"`` when the array has at most 2**32 elements, else ``"<u8"``);
    ``count`` is the number of stored elements, 0 <= count <= the array's element count.  The header is at most
    :data:`MAX_HEADER` bytes.

Data frame, by codec (``N`` = elements, ``S`` = the dtype's item size, ``n`` = ``count``, ``I`` = index size)
    ``null`` (raw)
        The N*S bytes of the array in C order, in the declared byte order.
    ``"zlib"``
        A zlib stream (RFC 1950, with its Adler-32 check) of the raw bytes.
    ``"lz4"``
        One LZ4 block (the block format, no frame header, no stored size) of the raw bytes.  Not byte-shuffled:
        on sparse detector images shuffling halves LZ4's ratio (bench/codecs.py).  At most 2,113,929,216
        (LZ4's limit) raw bytes.
    ``"sparse"``
        The elements whose bytes are not all zero (so ``-0.0`` and NaNs are kept, bit for bit): first their n
        flat C-order indices, strictly increasing, each ``index`` (little-endian), then their n values in the
        declared dtype.  Exactly n*(I+S) bytes; every other element is zero.
    ``"sparse-lz4"``
        The same n indices and values, transformed for compression, in one LZ4 block of exactly n*(I+S) bytes:
        the indices as deltas (the first index, then each index minus the one before, as ``index``) byte-shuffled
        (all n first bytes, then all second bytes, ...), followed by the values byte-shuffled the same way.

Decoding checks everything before it allocates: the header (size, keys, dtype, shape, codec, sparse fields),
then that the decoded size N*S is at most ``max_nbytes``, then decompresses with that exact bound (zlib's
``max_length``, LZ4's ``uncompressed_size``; the payload inflated for ``"sparse-lz4"``, n*(I+S), is held to
``max_nbytes`` too), and refuses a data frame whose length, or whose decompressed length, is not exactly what
the header implies, and sparse indices that are out of range or not strictly increasing.  Every refusal is a
:class:`~ssnet_common.errors.ProtocolError`, never a library error.  Only zlib checksums its payload: a
corrupted LZ4 block or raw frame that still decodes to the declared size is not detected here (the transport,
TCP or IPC, already checks integrity).

Zero copy: on send, a raw array's frame is a ``memoryview`` of the array itself, so with ``copy=False`` ZeroMQ
sends it without copying (pyzmq copies frames below its copy threshold, 64 kB by default, which is cheaper for
small frames anyway); a sparse frame is one new buffer.  On receive, :func:`decode_array` returns a read-only
array, which views the received frame for raw data.

Which codec: chosen per message by the sender (:data:`DEFAULT_CODEC` for detector images); every decoder
accepts every codec, and :func:`array_codec` tells a receiver which one a header declares, so that it can answer
in kind.  Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import lz4.block  # type: ignore[import-untyped]
import numpy as np

from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import Frame, frame_bytes, frame_len, frame_view

if TYPE_CHECKING:
    from numpy.typing import NDArray

MAGIC = b"NDA1"
MAX_HEADER = 4096
MAX_NDIM = 8
DEFAULT_MAX_NBYTES = 2**31  # 2 GiB: larger than any detector image batch we send
COMPRESSIONS: tuple[Optional[str], ...] = (None, "zlib", "lz4", "sparse", "sparse-lz4")
"""Every codec (the header's ``compression``); ``None`` sends the raw bytes."""
# DEFAULT_CODEC: the fastest codec that wins on sparse images, measured by bench/codecs.py (best of 15, this
# project's 2-core machine) on a genuine 3x512x512 float32 wire event (6.6% nonzero) and float16 scores:
#   codec       | event: bytes  ratio  enc MB/s  dec MB/s | scores: bytes  ratio  enc MB/s  dec MB/s
#   raw         |      3145786    1.0   (zero copy)      |       1572922    1.0   (zero copy)
#   sparse      |       414362    7.6      2266      6751 |        306012    5.1      1554      5103
#   sparse-lz4  |       224814   14.0      1462      3032 |        125517   12.5       954      2315
#   lz4         |       335242    9.4      1124      2326 |        228001    6.9      1073      2222
#   zlib        |       303981   10.3       256       538 |        182960    8.6       211       472
# Encode + decode over both (and a synthetic 3% track event): sparse 4.3 ms, sparse-lz4 7.3, lz4 8.0, zlib 39.
# sparse sends 13% of the bytes for the least CPU at both ends; sparse-lz4 halves the bytes again for ~70% more
# CPU (for links much slower than 1 GB/s).  Also measured: byte shuffle halves LZ4's ratio on these images, and
# blosc2 (shuffle) does no better; zstd-1 compresses ~10% more than LZ4 at about half its speed.  (Bytes: both
# frames, header included.)
DEFAULT_CODEC: Optional[str] = "sparse"
SPARSE_CODECS = ("sparse", "sparse-lz4")
INDEX_TYPES = ("<u4", "<u8")
"""Types of sparse indices, as the header's ``index`` names them."""
LZ4_MAX_NBYTES = 0x7E000000  # LZ4_MAX_INPUT_SIZE: the most one LZ4 block holds
_KINDS = "biuf"  # bool, signed int, unsigned int, float
_DENSE_KEYS = frozenset({"dtype", "shape", "compression"})
_SPARSE_KEYS = _DENSE_KEYS | {"index", "count"}


@dataclass(frozen=True)
class _Header:
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    codec: Optional[str]
    size: int  # elements
    index: Optional[np.dtype[Any]] = None  # sparse codecs only
    count: int = 0

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def _check_dtype(text: object) -> np.dtype[Any]:
    if not isinstance(text, str) or len(text) > 8 or text[:1] not in "<>|":
        raise ProtocolError(f"array dtype must be a NumPy type string with byte order, got {text!r}")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise ProtocolError(f"unknown array dtype {text!r}") from None
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"unsupported array dtype {text!r}")
    return dtype


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _read_header(header_frame: Frame) -> _Header:
    """The validated header (everything but the size limit, which :func:`decode_array` applies)."""
    if frame_len(header_frame) > MAX_HEADER:
        raise ProtocolError(f"array header larger than {MAX_HEADER} bytes")
    raw = frame_bytes(header_frame)
    if not raw.startswith(MAGIC):
        raise ProtocolError(f"array header must start with {MAGIC!r}, got {raw[:8]!r}")
    try:
        header = json.loads(raw[len(MAGIC):].decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(f"array header is not JSON: {raw[:80]!r}") from None
    if not isinstance(header, dict) or not set(header) >= _DENSE_KEYS:
        raise ProtocolError(f"array header must have dtype, shape, compression: {raw[:120]!r}")
    codec = header["compression"]
    if codec not in COMPRESSIONS:
        raise ProtocolError(f"unknown array compression {codec!r}")
    sparse = codec in SPARSE_CODECS
    if set(header) != (_SPARSE_KEYS if sparse else _DENSE_KEYS):
        raise ProtocolError(f"array header of compression {codec!r} must have exactly "
                            f"{', '.join(sorted(_SPARSE_KEYS if sparse else _DENSE_KEYS))}: {raw[:120]!r}")
    dtype = _check_dtype(header["dtype"])
    shape = header["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_count(n) for n in shape):
        raise ProtocolError(f"invalid array shape {shape!r} (at most {MAX_NDIM} non-negative integers)")
    size = math.prod(shape)
    if not sparse:
        return _Header(dtype, tuple(shape), codec, size)
    index, count = header["index"], header["count"]
    if index not in INDEX_TYPES:
        raise ProtocolError(f"sparse index type must be one of {INDEX_TYPES}, got {index!r}")
    if not _is_count(count) or count > size:
        raise ProtocolError(f"sparse count must be an integer from 0 to the {size} elements, got {count!r}")
    return _Header(dtype, tuple(shape), codec, size, np.dtype(index), count)


def array_codec(header_frame: Frame) -> Optional[str]:
    """The codec (``compression``) that an array header declares, after validating the whole header.

    Raises :class:`ProtocolError` for a header :func:`decode_array` would refuse (the size limit aside).
    """
    return _read_header(header_frame).codec


# ------------------------------------------------------------------------------------------------- encode
def _shuffled(values: NDArray[Any], out: NDArray[np.uint8]) -> None:
    """Write ``values``' bytes into ``out`` byte-shuffled: every value's first byte, then every second byte..."""
    count, width = values.size, values.dtype.itemsize
    raw = values.view(np.uint8)
    for byte in range(width):  # one strided pass per byte: ~10x faster than NumPy's transposed copy
        out[byte * count:(byte + 1) * count] = raw[byte::width]


def _lz4(payload: Frame) -> bytes:
    if frame_len(payload) > LZ4_MAX_NBYTES:
        raise ValueError(f"lz4 takes at most {LZ4_MAX_NBYTES} bytes, got {frame_len(payload)}: use zlib")
    return lz4.block.compress(payload, store_size=False)  # type: ignore[no-any-return]


def _sparse_payload(flat: NDArray[Any], codec: str) -> tuple[dict[str, Any], Frame]:
    """The sparse header fields and the payload (before LZ4) of a flat C-order array."""
    index = np.dtype(INDEX_TYPES[0] if flat.size <= 2**32 else INDEX_TYPES[1])
    positions = np.flatnonzero(flat.view(f"u{flat.dtype.itemsize}") != 0)  # bitwise: keeps -0.0 and NaNs
    count = positions.size
    split = count * index.itemsize
    payload = np.empty(count * (index.itemsize + flat.dtype.itemsize), dtype=np.uint8)
    if codec == "sparse":
        np.copyto(payload[:split].view(index), positions, casting="unsafe")  # intp -> index: all fit
        np.take(flat, positions, out=payload[split:].view(flat.dtype), mode="clip")  # clip: unbuffered
    else:
        deltas = np.diff(positions, prepend=0).astype(index)
        _shuffled(deltas, payload[:split])
        _shuffled(flat.take(positions), payload[split:])
    return {"index": index.str, "count": count}, payload.data


def encode_array(array: NDArray[Any], compression: Optional[str] = None, level: int = 1) -> list[Frame]:
    """Two frames for ``array``: header and data, in codec ``compression`` (one of :data:`COMPRESSIONS`).

    ``level`` is zlib's compression level.  Non-contiguous arrays are made contiguous (one copy).  Raises
    :class:`ValueError` for an unknown codec, too many dimensions, or an LZ4 codec over LZ4's ~2 GB block limit;
    :class:`ProtocolError` for a dtype the wire does not carry.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    array = np.asarray(array, order="C")
    dtype = _check_dtype(array.dtype.str)
    if array.ndim > MAX_NDIM:
        raise ValueError(f"arrays of more than {MAX_NDIM} dimensions are not supported")
    header: dict[str, Any] = {"dtype": dtype.str, "shape": list(array.shape), "compression": compression}
    data: Frame
    if compression in SPARSE_CODECS:
        fields, data = _sparse_payload(array.reshape(-1), compression)
        header.update(fields)
        if compression == "sparse-lz4":
            data = _lz4(data)
    else:
        data = array.data.cast("B") if array.size else b""
        if compression == "zlib":
            data = zlib.compress(frame_view(data), level)
        elif compression == "lz4":
            data = _lz4(data)
    return [MAGIC + json.dumps(header, separators=(",", ":")).encode("ascii"), data]


# ------------------------------------------------------------------------------------------------- decode
def _inflate_zlib(data: Frame, nbytes: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        buffer = inflater.decompress(frame_view(data), max(nbytes, 1))  # 0 would mean unlimited
    except zlib.error as exc:
        raise ProtocolError(f"array data is not valid zlib: {exc}") from None
    if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
        raise ProtocolError(f"compressed array data does not inflate to exactly {nbytes} bytes")
    return buffer


def _inflate_lz4(data: Frame, nbytes: int) -> bytes:
    if nbytes > LZ4_MAX_NBYTES:
        raise ProtocolError(f"lz4 array data cannot hold {nbytes} bytes (at most {LZ4_MAX_NBYTES})")
    try:  # LZ4 never writes past uncompressed_size: it allocates exactly that, and fails on more
        buffer: bytes = lz4.block.decompress(frame_view(data), uncompressed_size=nbytes)
    except (lz4.block.LZ4BlockError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"array data is not a valid lz4 block of {nbytes} bytes: {exc}") from None
    if len(buffer) != nbytes:
        raise ProtocolError(f"lz4 array data inflates to {len(buffer)} bytes, not {nbytes}")
    return buffer


def _unshuffled(shuffled: NDArray[np.uint8], dtype: np.dtype[Any], count: int) -> NDArray[Any]:
    """The ``count`` values of ``dtype`` whose bytes :func:`_shuffled` wrote into ``shuffled``."""
    values = np.empty(count, dtype=dtype)
    raw, width = values.view(np.uint8), dtype.itemsize
    for byte in range(width):
        raw[byte::width] = shuffled[byte * count:(byte + 1) * count]
    return values


def _check_indices(indices: NDArray[Any], size: int) -> None:
    if indices.size and (int(indices[-1]) >= size or not bool(np.all(indices[1:] > indices[:-1]))):
        raise ProtocolError(f"sparse indices must be strictly increasing and below {size}")


def _decode_sparse(head: _Header, index: np.dtype[Any], data: Frame, max_nbytes: int) -> NDArray[Any]:
    dtype, count = head.dtype, head.count
    split = count * index.itemsize
    payload_nbytes = split + count * dtype.itemsize
    if head.codec == "sparse":
        if frame_len(data) != payload_nbytes:
            raise ProtocolError(f"sparse array data is {frame_len(data)} bytes, but {count} elements of "
                                f"{index.str} + {dtype.str} are {payload_nbytes}")
        view = frame_view(data)
        indices = np.frombuffer(view, dtype=index, count=count) if count else np.zeros(0, index)
        values = np.frombuffer(view, dtype=dtype, count=count, offset=split) if count else np.zeros(0, dtype)
    else:
        if payload_nbytes > max_nbytes:
            raise ProtocolError(f"sparse payload of {count} elements is {payload_nbytes} bytes, "
                                f"over the limit {max_nbytes}")
        inflated = _inflate_lz4(data, payload_nbytes)
        payload = np.frombuffer(inflated, dtype=np.uint8) if inflated else np.zeros(0, np.uint8)
        # Deltas summed in the index type: a wrap-around makes the sequence decrease, which the check refuses.
        indices = np.cumsum(_unshuffled(payload[:split], index, count), dtype=index.newbyteorder("="))
        values = _unshuffled(payload[split:], dtype, count)
    _check_indices(indices, head.size)
    array = np.zeros(head.size, dtype=dtype)
    array[indices] = values
    return array


def decode_array(
    header_frame: Frame, data_frame: Frame, max_nbytes: int = DEFAULT_MAX_NBYTES
) -> NDArray[Any]:
    """The array described by ``header_frame`` with the contents of ``data_frame``, in any codec.

    Raises :class:`ProtocolError` for a bad header (not ours, unknown dtype or codec, absurd shape, decoded
    size over ``max_nbytes``) or a data frame that does not decode to exactly that array.  The result is
    read-only; for raw data it views the received frame.
    """
    head = _read_header(header_frame)
    nbytes = head.nbytes
    if nbytes > max_nbytes:
        raise ProtocolError(f"array of shape {list(head.shape)} {head.dtype.str} is {nbytes} bytes, "
                            f"over the limit {max_nbytes}")
    if head.index is not None:  # a sparse codec
        flat = _decode_sparse(head, head.index, data_frame, max_nbytes)
        flat.flags.writeable = False
        return _shaped(flat, head.shape)
    buffer: Frame = data_frame
    if head.codec == "zlib":
        buffer = _inflate_zlib(data_frame, nbytes)
    elif head.codec == "lz4":
        buffer = _inflate_lz4(data_frame, nbytes)
    size = frame_len(buffer)
    if size != nbytes:
        raise ProtocolError(f"array data is {size} bytes, header says shape {list(head.shape)} {head.dtype.str} "
                            f"= {nbytes}")
    if nbytes == 0:
        empty = np.zeros(0, dtype=head.dtype)
        empty.flags.writeable = False
        return _shaped(empty, head.shape)
    return _shaped(np.frombuffer(frame_view(buffer).toreadonly(), dtype=head.dtype), head.shape)


def _shaped(flat: NDArray[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    try:
        return flat.reshape(shape)
    except ValueError as exc:  # e.g. (0, 2**63 - 1): no bytes, but more elements than NumPy can index
        raise ProtocolError(f"invalid array shape {list(shape)}: {exc}") from None


def encode_arrays(arrays: Sequence[NDArray[Any]], compression: Optional[str] = None) -> list[Frame]:
    """Frames for several arrays, two per array."""
    return [frame for array in arrays for frame in encode_array(array, compression)]


def decode_arrays(frames: Sequence[Frame], max_nbytes: int = DEFAULT_MAX_NBYTES) -> list[NDArray[Any]]:
    """Arrays from frames made by :func:`encode_arrays`."""
    if len(frames) % 2:
        raise ProtocolError(f"array frames come in (header, data) pairs, got {len(frames)} frames")
    return [decode_array(frames[i], frames[i + 1], max_nbytes) for i in range(0, len(frames), 2)]
