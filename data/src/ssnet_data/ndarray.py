"""ndarray codec: an array travels as two frames, a small self-describing header and the raw buffer.

Header frame: ``NDA1`` followed by compact JSON ``{"dtype": "<f4", "shape": [512, 512], "compression": null}``.
``dtype`` is a NumPy type string with explicit byte order (``<``, ``>`` or ``|``); only plain numeric kinds
are allowed (bool, signed and unsigned integers, floats).  ``compression`` is ``null`` or ``"zlib"``.

Data frame: the C-order bytes of the array (zlib-compressed if so declared).  On send, an uncompressed array's
frame is a ``memoryview`` of the array itself, so with ``copy=False`` ZeroMQ sends it without copying (pyzmq
copies frames below its copy threshold, 64 kB by default, which is cheaper for small frames anyway).  On
receive, :func:`decode_array` returns a read-only array that views the frame's memory.

Nothing is ever unpickled; every header is validated before any memory is allocated.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import Frame, frame_bytes, frame_len, frame_view

if TYPE_CHECKING:
    from numpy.typing import NDArray

MAGIC = b"NDA1"
MAX_HEADER = 4096
MAX_NDIM = 8
DEFAULT_MAX_NBYTES = 2**31  # 2 GiB: larger than any detector image batch we send
COMPRESSIONS = (None, "zlib")
_KINDS = "biuf"  # bool, signed int, unsigned int, float


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


def encode_array(array: NDArray[Any], compression: Optional[str] = None, level: int = 1) -> list[Frame]:
    """Two frames for ``array``: header and data.  Non-contiguous arrays are made contiguous (one copy)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    array = np.asarray(array, order="C")
    dtype = _check_dtype(array.dtype.str)
    if array.ndim > MAX_NDIM:
        raise ValueError(f"arrays of more than {MAX_NDIM} dimensions are not supported")
    header = {"dtype": dtype.str, "shape": list(array.shape), "compression": compression}
    data: Frame = array.data.cast("B") if array.size else b""
    if compression == "zlib":
        data = zlib.compress(frame_view(data), level)
    return [MAGIC + json.dumps(header, separators=(",", ":")).encode("ascii"), data]


def decode_array(
    header_frame: Frame, data_frame: Frame, max_nbytes: int = DEFAULT_MAX_NBYTES
) -> NDArray[Any]:
    """The array described by ``header_frame`` with the contents of ``data_frame``.

    Raises :class:`ProtocolError` for a bad header (not ours, unknown dtype, absurd shape, too large) or a
    data frame whose size does not match.  The result is read-only when it views the received frame.
    """
    if frame_len(header_frame) > MAX_HEADER:
        raise ProtocolError(f"array header larger than {MAX_HEADER} bytes")
    raw = frame_bytes(header_frame)
    if not raw.startswith(MAGIC):
        raise ProtocolError(f"array header must start with {MAGIC!r}, got {raw[:8]!r}")
    try:
        header = json.loads(raw[len(MAGIC):].decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(f"array header is not JSON: {raw[:80]!r}") from None
    if not isinstance(header, dict) or set(header) != {"dtype", "shape", "compression"}:
        raise ProtocolError(f"array header must have exactly dtype, shape, compression: {raw[:120]!r}")
    dtype = _check_dtype(header["dtype"])
    shape = header["shape"]
    if (
        not isinstance(shape, list) or len(shape) > MAX_NDIM
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**63 for n in shape)
    ):
        raise ProtocolError(f"invalid array shape {shape!r} (at most {MAX_NDIM} non-negative integers)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_nbytes:
        raise ProtocolError(f"array of shape {shape} {dtype.str} is {nbytes} bytes, over the limit {max_nbytes}")
    compression = header["compression"]
    if compression not in COMPRESSIONS:
        raise ProtocolError(f"unknown array compression {compression!r}")

    buffer: Frame = data_frame
    if compression == "zlib":
        inflater = zlib.decompressobj()
        try:
            buffer = inflater.decompress(frame_view(data_frame), max(nbytes, 1))  # 0 would mean unlimited
        except zlib.error as exc:
            raise ProtocolError(f"array data is not valid zlib: {exc}") from None
        if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
            raise ProtocolError(f"compressed array data does not inflate to exactly {nbytes} bytes")
    size = frame_len(buffer)
    if size != nbytes:
        raise ProtocolError(f"array data is {size} bytes, header says shape {shape} {dtype.str} = {nbytes}")
    if nbytes == 0:
        try:
            return np.zeros(shape, dtype=dtype)
        except ValueError as exc:  # e.g. (0, 2**63 - 1): no bytes, but more elements than NumPy can index
            raise ProtocolError(f"invalid array shape {shape!r}: {exc}") from None
    return np.frombuffer(frame_view(buffer).toreadonly(), dtype=dtype).reshape(shape)


def encode_arrays(arrays: Sequence[NDArray[Any]], compression: Optional[str] = None) -> list[Frame]:
    """Frames for several arrays, two per array."""
    return [frame for array in arrays for frame in encode_array(array, compression)]


def decode_arrays(frames: Sequence[Frame], max_nbytes: int = DEFAULT_MAX_NBYTES) -> list[NDArray[Any]]:
    """Arrays from frames made by :func:`encode_arrays`."""
    if len(frames) % 2:
        raise ProtocolError(f"array frames come in (header, data) pairs, got {len(frames)} frames")
    return [decode_array(frames[i], frames[i + 1], max_nbytes) for i in range(0, len(frames), 2)]
