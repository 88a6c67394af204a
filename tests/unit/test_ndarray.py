"""The ndarray codec: header frame ``NDA1`` + JSON, data frame; zero-copy where it can be; strict validation."""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssnet_common.errors import ProtocolError
from ssnet_data.ndarray import (
    DEFAULT_MAX_NBYTES,
    MAGIC,
    MAX_HEADER,
    MAX_NDIM,
    decode_array,
    decode_arrays,
    encode_array,
    encode_arrays,
)

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

TYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]
DTYPES = [np.dtype(t).newbyteorder(order) for t in TYPES for order in "<>"]


def header(dtype: Any = "<f4", shape: Any = (2, 3), compression: Any = None, **extra: Any) -> bytes:
    fields = {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
              "compression": compression, **extra}
    return MAGIC + json.dumps(fields).encode()


def sample(dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return ((values * 37 + 5) % 251).astype(dtype) if dtype.kind != "b" else (values % 3 == 0)


def assert_same(decoded: np.ndarray[Any, Any], original: np.ndarray[Any, Any]) -> None:
    assert decoded.dtype == original.dtype
    assert decoded.dtype.str == original.dtype.str  # byte order kept
    assert decoded.shape == original.shape
    assert np.array_equal(decoded, original)


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.str)
def test_round_trip_every_dtype(dtype: np.dtype[Any], compression: str | None) -> None:
    array = sample(dtype, (3, 5, 7))
    frames = encode_array(array, compression)
    assert len(frames) == 2
    head = json.loads(bytes(frames[0])[len(MAGIC):])
    assert head == {"dtype": dtype.str, "shape": [3, 5, 7], "compression": compression}
    assert_same(decode_array(*frames), array)


def test_float_special_values_survive() -> None:
    array = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float64).tiny, 1e308], dtype="<f8")
    decoded = decode_array(*encode_array(array))
    assert np.array_equal(decoded, array, equal_nan=True)
    assert np.signbit(decoded[3])


def test_integer_extremes_survive() -> None:
    for t in ("i8", "u8", "i1", "u1"):
        info = np.iinfo(t)
        for order in "<>":
            array = np.array([info.min, info.max, 0], dtype=np.dtype(t).newbyteorder(order))
            assert_same(decode_array(*encode_array(array)), array)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize(
    "shape", [(0,), (0, 5), (5, 0, 3), (4,), (1, 1), (2, 3, 4), (1,) * MAX_NDIM, (2, 1, 2, 1, 2, 1, 2, 3)]
)
def test_round_trip_shapes(shape: tuple[int, ...], compression: str | None) -> None:
    array = sample(np.dtype("<i2"), shape)
    decoded = decode_array(*encode_array(array, compression))
    assert_same(decoded, array)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("dtype", ["<f4", ">i8", "|b1", "|u1"])
def test_zero_size_data_frame_is_empty(dtype: str, compression: str | None) -> None:
    array = np.zeros((3, 0), dtype=dtype)
    frames = encode_array(array, compression)
    if compression is None:
        assert bytes(frames[1]) == b""
    assert_same(decode_array(*frames), array)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("value", [np.float32(1.5), np.bool_(True), np.int64(-7)])
def test_round_trip_zero_dimensional(value: Any, compression: str | None) -> None:
    array = np.array(value)
    assert array.ndim == 0
    assert_same(decode_array(*encode_array(array, compression)), array)


def test_decode_zero_dimensional_header() -> None:
    decoded = decode_array(header("<f8", []), np.float64(2.5).tobytes())
    assert decoded.shape == ()
    assert decoded[()] == 2.5


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize(
    "view",
    [
        lambda a: a.T,
        lambda a: a[::2, 1::3],
        lambda a: a[:, ::-1],
        np.asfortranarray,
        lambda a: a[1:, 2],
    ],
    ids=["transposed", "strided", "reversed", "fortran", "column"],
)
def test_round_trip_non_contiguous(view: Any, compression: str | None) -> None:
    array = view(sample(np.dtype("<f4"), (6, 9)))
    decoded = decode_array(*encode_array(array, compression))
    assert_same(decoded, array)
    assert decoded.flags.c_contiguous


def test_zlib_compresses() -> None:
    array = np.zeros((256, 256), dtype="<f4")
    head, data = encode_array(array, "zlib")
    assert len(data) < array.nbytes // 100
    assert_same(decode_array(head, data), array)


def test_encode_arrays_and_decode_arrays() -> None:
    arrays = [sample(np.dtype("<f4"), (2, 3)), sample(np.dtype(">u2"), (4,)), np.zeros((0, 2), "|b1")]
    for compression in (None, "zlib"):
        frames = encode_arrays(arrays, compression)
        assert len(frames) == 6
        decoded = decode_arrays(frames)
        assert len(decoded) == 3
        for got, want in zip(decoded, arrays):
            assert_same(got, want)
    assert decode_arrays([]) == []


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=MAX_NDIM, min_side=0, max_side=4),
    ),
    compression=st.sampled_from([None, "zlib"]),
)
def test_round_trip_property(array: np.ndarray[Any, Any], compression: str | None) -> None:
    decoded = decode_array(*encode_array(array, compression))
    assert decoded.dtype.str == array.dtype.str
    assert decoded.shape == array.shape
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


# --------------------------------------------------------------------------------------------- zero copy
def test_send_side_does_not_copy() -> None:
    array = sample(np.dtype("<f4"), (128, 256))
    _, data = encode_array(array)
    assert np.shares_memory(array, np.frombuffer(data, dtype=np.uint8))


def send_over_inproc(array: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], list[zmq.Frame]]:
    """Send ``array`` over an inproc PAIR with ``copy=False``; the decoded array and the received frames."""
    assert array.nbytes > 64 * 1024  # above pyzmq's copy threshold: really sent zero-copy
    context = zmq.Context()
    try:
        sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        receiver.bind("inproc://ndarray-zero-copy")
        sender.connect("inproc://ndarray-zero-copy")
        sender.send_multipart(encode_array(array), copy=False)
        frames = receiver.recv_multipart(copy=False)
        assert all(isinstance(f, zmq.Frame) for f in frames)
        return decode_array(*frames), frames
    finally:
        context.destroy(linger=0)


def test_receive_side_views_the_frame_over_zmq() -> None:
    array = sample(np.dtype("<f4"), (256, 256))
    decoded, frames = send_over_inproc(array)
    assert_same(decoded, array)
    assert not decoded.flags.owndata
    assert np.shares_memory(decoded, np.frombuffer(frames[1].buffer, dtype=np.uint8))


def test_array_decoded_from_zmq_frame_is_read_only() -> None:
    array = sample(np.dtype("<f4"), (256, 256))
    decoded, _ = send_over_inproc(array)
    assert not decoded.flags.writeable


def test_decoded_array_from_bytes_is_read_only_view() -> None:
    array = sample(np.dtype("<i4"), (10, 10))
    head, data = encode_array(array)
    frame = bytes(data)
    decoded = decode_array(head, frame)
    assert not decoded.flags.writeable
    assert np.shares_memory(decoded, np.frombuffer(frame, dtype=np.uint8))


# ------------------------------------------------------------------------------------------------- rejected
DATA_6_F4 = np.zeros(6, "<f4").tobytes()
BAD_HEADERS = {
    "empty": b"",
    "no magic": header()[len(MAGIC):],
    "wrong magic": b"NDA2" + header()[len(MAGIC):],
    "lower-case magic": b"nda1" + header()[len(MAGIC):],
    "magic only": MAGIC,
    "not JSON": MAGIC + b"{dtype: <f4}",
    "truncated JSON": header()[:-1],
    "not UTF-8": MAGIC + b'{"dtype": "\xff"}',
    "JSON list": MAGIC + b'["<f4", [2, 3], null]',
    "JSON null": MAGIC + b"null",
    "JSON number": MAGIC + b"1",
    "extra key": header(order="C"),
    "missing dtype": MAGIC + b'{"shape": [2, 3], "compression": null}',
    "missing shape": MAGIC + b'{"dtype": "<f4", "compression": null}',
    "missing compression": MAGIC + b'{"dtype": "<f4", "shape": [2, 3]}',
    "complex": header("<c8", (3,)),
    "object": header("|O", (3,)),
    "object 8": header("|O8", (3,)),
    "unicode": header("<U4", (1,)),
    "bytes": header("|S4", (1,)),
    "void without order": header("V8", (1,)),
    "void": header("|V8", (1,)),
    "datetime": header("<M8[s]", (3,)),
    "timedelta": header("<m8", (3,)),
    "no byte order": header("f4"),
    "native byte order": header("=f4"),
    "dtype name": header("float32"),
    "empty dtype": header(""),
    "bad order char": header("!f4"),
    "unknown size": header("<f3"),
    "structured": header("<i4,<i4", (3,)),
    "subarray": header("<(2,)i4", (3,)),
    "long dtype": header("<" + "f" * 20),
    "dtype number": header(4),
    "dtype null": header(None),
    "dtype list": header(["<f4"]),
    "negative dim": header(shape=[2, -3]),
    "bool dim": header(shape=[True, 6]),
    "float dim": header(shape=[2.0, 3]),
    "string dim": header(shape=["2", 3]),
    "null dim": header(shape=[None]),
    "nested dim": header(shape=[[6]]),
    "shape not a list": header(shape=6),
    "shape string": header(shape="6"),
    "shape object": header(shape={"0": 6}),
    "shape null": header(shape=None),
    "huge dim": header(shape=[2**63]),
    "too many dims": header(shape=[1] * (MAX_NDIM + 1) + [6]),
    "unknown compression": header(compression="gzip"),
    "compression true": header(compression=True),
    "compression upper": header(compression="ZLIB"),
}


@pytest.mark.parametrize("head", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_header_rejected(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_array(head, DATA_6_F4)


def test_header_size_limit() -> None:
    base = header("<f4", (6,))
    padding = MAX_HEADER - len(base)
    exactly = base[:-1] + b" " * padding + b"}"
    assert len(exactly) == MAX_HEADER
    assert decode_array(exactly, DATA_6_F4).shape == (6,)
    with pytest.raises(ProtocolError, match="header"):
        decode_array(exactly[:-1] + b" }", DATA_6_F4)


def test_deeply_nested_header_rejected() -> None:
    with pytest.raises(ProtocolError):
        decode_array(MAGIC + b"[" * (MAX_HEADER - len(MAGIC)), b"")


@pytest.mark.parametrize("shape", [[0, 2**63 - 1], [0, 2**40, 2**40]])
def test_zero_size_shape_with_huge_dims_rejected(shape: list[int]) -> None:
    with pytest.raises(ProtocolError):
        decode_array(header("<f4", shape), b"")


def test_zero_size_shape_with_large_dim_is_fine() -> None:
    assert decode_array(header("<f8", [0, 2**40]), b"").shape == (0, 2**40)


@pytest.mark.parametrize(
    ("shape", "dtype", "limit"),
    [([2**31 + 1], "|u1", DEFAULT_MAX_NBYTES), ([2**30, 2], "<f2", DEFAULT_MAX_NBYTES),
     ([2**62, 2**62], "<f8", DEFAULT_MAX_NBYTES), ([1025], "|u1", 1024), ([129], "<f8", 1024)],
)
def test_size_over_limit_rejected(shape: list[int], dtype: str, limit: int) -> None:
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_array(header(dtype, shape), b"", max_nbytes=limit)


def test_size_at_limit_accepted() -> None:
    assert decode_array(header("|u1", [1024]), bytes(1024), max_nbytes=1024).shape == (1024,)
    assert decode_arrays([header("|u1", [4]), bytes(4)], max_nbytes=4)[0].shape == (4,)
    with pytest.raises(ProtocolError):
        decode_arrays([header("|u1", [5]), bytes(5)], max_nbytes=4)


@pytest.mark.parametrize("size", [0, 23, 25, 48], ids=["empty", "short", "long", "double"])
def test_data_size_mismatch_rejected(size: int) -> None:
    with pytest.raises(ProtocolError, match="bytes"):
        decode_array(header("<f4", (2, 3)), bytes(size))


def test_data_given_for_zero_size_array_rejected() -> None:
    with pytest.raises(ProtocolError):
        decode_array(header("<f4", (0, 3)), b"\x00")


def zheader(shape: Any, dtype: str = "|u1") -> bytes:
    return header(dtype, shape, "zlib")


@pytest.mark.parametrize(
    "data",
    [b"", b"not zlib at all", zlib.compress(bytes(8))[:-5], zlib.compress(bytes(8))[:2], b"\x78\x9c\xff\xff"],
    ids=["empty", "garbage", "truncated", "header only", "bad block"],
)
def test_bad_zlib_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_array(zheader([8]), data)


@pytest.mark.parametrize("actual", [0, 7, 9, 16])
def test_zlib_inflating_to_wrong_size_rejected(actual: int) -> None:
    with pytest.raises(ProtocolError):
        decode_array(zheader([8]), zlib.compress(bytes(actual)))


def test_zlib_for_zero_size_array() -> None:
    assert decode_array(zheader([0, 4]), zlib.compress(b"")).shape == (0, 4)
    with pytest.raises(ProtocolError):
        decode_array(zheader([0, 4]), zlib.compress(b"x"))


def test_zip_bomb_rejected_without_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = zlib.compress(bytes(10_000_000), 9)
    assert len(bomb) < 20_000
    produced: list[int] = []
    real = zlib.decompressobj

    class Spy:
        def __init__(self) -> None:
            self._inner = real()

        def decompress(self, data: Any, max_length: int = 0) -> bytes:
            out = self._inner.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Spy)
    with pytest.raises(ProtocolError, match="inflate"):
        decode_array(zheader([8]), bomb)
    assert sum(produced) <= 8


def test_zlib_trailing_garbage_rejected() -> None:
    head, data = encode_array(np.arange(8, dtype="|u1"), "zlib")
    with pytest.raises(ProtocolError):
        decode_array(head, bytes(data) + b"trailing")


@pytest.mark.parametrize("count", [1, 3, 5])
def test_decode_arrays_odd_frame_count(count: int) -> None:
    frames = encode_arrays([np.zeros(2, "<f4")] * 3)[:count]
    with pytest.raises(ProtocolError, match="pairs"):
        decode_arrays(frames)


def test_decoders_accept_zmq_frames() -> None:
    array = sample(np.dtype(">i4"), (3, 4))
    for compression in (None, "zlib"):
        frames = [zmq.Frame(bytes(f)) for f in encode_array(array, compression)]
        assert_same(decode_array(*frames), array)
    with pytest.raises(ProtocolError):
        decode_array(zmq.Frame(b"NDA0{}"), zmq.Frame(b""))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=10))
def test_any_dtype_string_is_accepted_or_protocol_error(text: str) -> None:
    try:
        decoded = decode_array(header(text, [1]), bytes(16))
    except ProtocolError:
        return
    assert decoded.dtype.kind in "biuf"


# ------------------------------------------------------------------------------------------- encode errors
def test_encode_unsupported_compression() -> None:
    for compression in ("gzip", "ZLIB", "", 1):
        with pytest.raises(ValueError, match="compression"):
            encode_array(np.zeros(3), compression)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "array",
    [np.array([object(), 1], dtype=object), np.zeros(3, "<c16"), np.array(["ab"]), np.zeros(2, "<M8[s]"),
     np.zeros(2, [("a", "<i4"), ("b", "<f4")])],
    ids=["object", "complex", "unicode", "datetime", "structured"],
)
def test_encode_unsupported_dtype(array: np.ndarray[Any, Any]) -> None:
    with pytest.raises(ProtocolError, match="dtype"):
        encode_array(array)


def test_encode_too_many_dimensions() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        encode_array(np.zeros((1,) * (MAX_NDIM + 1)))
