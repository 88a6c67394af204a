"""The ndarray codec: header frame ``NDA1`` + JSON, data frame in one of several codecs (raw, zlib, lz4, sparse,
sparse-lz4); zero-copy where it can be; strict validation, bounded decompression."""

from __future__ import annotations

import json
import zlib
from typing import Any, Optional

import lz4.block
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssnet_common.errors import ProtocolError
from ssnet_data import ndarray
from ssnet_data.ndarray import (
    COMPRESSIONS,
    DEFAULT_CODEC,
    DEFAULT_MAX_NBYTES,
    INDEX_TYPES,
    MAGIC,
    MAX_HEADER,
    MAX_NDIM,
    SPARSE_CODECS,
    array_codec,
    decode_array,
    decode_arrays,
    encode_array,
    encode_arrays,
)

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

TYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]
DTYPES = [np.dtype(t).newbyteorder(order) for t in TYPES for order in "<>"]


CODECS = list(COMPRESSIONS)
CODEC_IDS = [str(c) for c in CODECS]


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
@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.str)
def test_round_trip_every_dtype(dtype: np.dtype[Any], compression: str | None) -> None:
    array = sample(dtype, (3, 5, 7))
    frames = encode_array(array, compression)
    assert len(frames) == 2
    head = json.loads(bytes(frames[0])[len(MAGIC):])
    expected: dict[str, Any] = {"dtype": dtype.str, "shape": [3, 5, 7], "compression": compression}
    if compression in SPARSE_CODECS:
        expected.update(index="<u4", count=int(np.count_nonzero(array)))
    assert head == expected
    assert array_codec(frames[0]) == compression
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


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize(
    "shape", [(0,), (0, 5), (5, 0, 3), (4,), (1, 1), (2, 3, 4), (1,) * MAX_NDIM, (2, 1, 2, 1, 2, 1, 2, 3)]
)
def test_round_trip_shapes(shape: tuple[int, ...], compression: str | None) -> None:
    array = sample(np.dtype("<i2"), shape)
    decoded = decode_array(*encode_array(array, compression))
    assert_same(decoded, array)


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("dtype", ["<f4", ">i8", "|b1", "|u1"])
def test_zero_size_data_frame_is_empty(dtype: str, compression: str | None) -> None:
    array = np.zeros((3, 0), dtype=dtype)
    frames = encode_array(array, compression)
    if compression in (None, "sparse"):
        assert bytes(frames[1]) == b""
    assert_same(decode_array(*frames), array)


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("value", [np.float32(1.5), np.bool_(True), np.int64(-7)])
def test_round_trip_zero_dimensional(value: Any, compression: str | None) -> None:
    array = np.array(value)
    assert array.ndim == 0
    assert_same(decode_array(*encode_array(array, compression)), array)


def test_decode_zero_dimensional_header() -> None:
    decoded = decode_array(header("<f8", []), np.float64(2.5).tobytes())
    assert decoded.shape == ()
    assert decoded[()] == 2.5


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
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
    for compression in COMPRESSIONS:
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
    compression=st.sampled_from(CODECS),
)
def test_round_trip_property(array: np.ndarray[Any, Any], compression: str | None) -> None:
    decoded = decode_array(*encode_array(array, compression))
    assert decoded.dtype.str == array.dtype.str
    assert decoded.shape == array.shape
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


# ------------------------------------------------------------------------- every codec x dtype x shape x content
MATRIX_SHAPES = [(), (0, 5), (97,), (3, 16, 24)]
CONTENTS = ["dense", "zeros", "sparse"]


def content(kind: str, dtype: np.dtype[Any], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """Random bits (floats: NaN payloads, -0.0, subnormals and all), all zeros, or ~3% random nonzero elements."""
    size = int(np.prod(shape))
    if dtype.kind == "b":
        dense = rng.random(size) < 0.5
    else:
        dense = np.frombuffer(rng.bytes(size * dtype.itemsize), dtype=dtype).copy()
    if kind == "zeros":
        dense[...] = 0
    elif kind == "sparse":
        dense[rng.random(size) >= 0.03] = 0
    return dense.reshape(shape)


def assert_bit_identical(decoded: np.ndarray[Any, Any], original: np.ndarray[Any, Any]) -> None:
    assert decoded.dtype.str == original.dtype.str
    assert decoded.shape == original.shape
    assert decoded.tobytes() == original.tobytes()  # bit for bit: NaN payloads and -0.0 too
    assert not decoded.flags.writeable


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.str)
def test_round_trip_matrix(dtype: np.dtype[Any], compression: str | None) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{dtype.str} {compression}".encode()))
    for shape in MATRIX_SHAPES:
        for kind in CONTENTS:
            array = content(kind, dtype, shape, rng)
            frames = encode_array(array, compression)
            assert array_codec(frames[0]) == compression
            assert_bit_identical(decode_array(*frames), array)
            assert_bit_identical(decode_arrays(encode_arrays([array], compression))[0], array)


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_default_codec_and_every_codec_on_a_sparse_image(compression: str | None) -> None:
    assert DEFAULT_CODEC in COMPRESSIONS
    rng = np.random.default_rng(3)
    image = np.where(rng.random((3, 128, 128)) < 0.03, rng.random((3, 128, 128)), 0).astype("<f4")
    frames = encode_array(image, compression)
    assert_bit_identical(decode_array(*frames), image)
    if compression is not None:
        assert len(frames[1]) < image.nbytes / 4, f"{compression} does not compress a 3%-occupied image"


def test_sparse_keeps_negative_zero_and_nans() -> None:
    array = np.array([0.0, -0.0, np.nan, 0.0, 1.0, 0.0], dtype="<f8")
    for codec in SPARSE_CODECS:
        head, data = encode_array(array, codec)
        assert json.loads(bytes(head)[len(MAGIC):])["count"] == 3
        decoded = decode_array(head, data)
        assert decoded.tobytes() == array.tobytes()
        assert np.signbit(decoded[1])


def test_sparse_wire_layout() -> None:
    """``sparse``: little-endian indices, then the values in the declared dtype; nothing else."""
    array = np.zeros((2, 5), dtype=">i2")
    array[0, 1], array[1, 3], array[1, 4] = -2, 7, 300
    head, data = encode_array(array, "sparse")
    assert json.loads(bytes(head)[len(MAGIC):]) == {
        "dtype": ">i2", "shape": [2, 5], "compression": "sparse", "index": "<u4", "count": 3}
    assert bytes(data) == np.array([1, 8, 9], "<u4").tobytes() + np.array([-2, 7, 300], ">i2").tobytes()
    by_hand = np.array([0, 9], "<u8").tobytes() + np.array([5, 6], ">i2").tobytes()
    decoded = decode_array(header(">i2", (2, 5), "sparse", index="<u8", count=2), by_hand)
    assert decoded.tolist() == [[5, 0, 0, 0, 0], [0, 0, 0, 0, 6]]


def shuffled(values: np.ndarray[Any, Any]) -> bytes:
    raw = values.view(np.uint8).reshape(values.size, values.itemsize)
    return raw.T.tobytes()


def test_sparse_lz4_wire_layout() -> None:
    """``sparse-lz4``: one LZ4 block of the byte-shuffled index deltas, then the byte-shuffled values."""
    array = np.zeros(40, dtype="<f4")
    array[[3, 4, 20, 39]] = [1.5, -2.0, 3.25, 1e-30]
    head, data = encode_array(array, "sparse-lz4")
    assert json.loads(bytes(head)[len(MAGIC):])["count"] == 4
    payload = shuffled(np.array([3, 1, 16, 19], "<u4")) + shuffled(array[[3, 4, 20, 39]])
    assert lz4.block.decompress(bytes(data), uncompressed_size=len(payload)) == payload
    by_hand = lz4.block.compress(payload, store_size=False)
    assert_bit_identical(decode_array(head, by_hand), array)


def test_lz4_wire_layout() -> None:
    """``lz4``: one LZ4 block (no stored size) of the raw C-order bytes."""
    array = np.arange(12, dtype=">u8").reshape(3, 4)
    head, data = encode_array(array, "lz4")
    assert lz4.block.decompress(bytes(data), uncompressed_size=array.nbytes) == array.tobytes()
    assert_same(decode_array(head, lz4.block.compress(array.tobytes(), store_size=False)), array)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_array_codec(codec: Optional[str]) -> None:
    head, _ = encode_array(np.zeros((2, 2), "<f4"), codec)
    assert array_codec(head) == codec
    assert array_codec(zmq.Frame(head)) == codec
    assert array_codec(header("|u1", [2**40], codec, **sparse_fields(codec))) == codec  # no size limit here


def sparse_fields(codec: Optional[str], index: str = "<u4", count: int = 0) -> dict[str, Any]:
    return {"index": index, "count": count} if codec in SPARSE_CODECS else {}


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
    "compression LZ4": header(compression="LZ4"),
    "compression raw": header(compression="raw"),
    "compression sparse-zstd": header(compression="sparse-zstd"),
    "compression list": header(compression=["sparse"]),
    "sparse without index and count": header(compression="sparse"),
    "sparse without count": header(compression="sparse", index="<u4"),
    "sparse-lz4 without index": header(compression="sparse-lz4", count=0),
    "sparse extra key": header(compression="sparse", index="<u4", count=0, order="C"),
    "raw with index and count": header(index="<u4", count=0),
    "lz4 with count": header(compression="lz4", count=0),
    "index u2": header(compression="sparse", index="<u2", count=0),
    "index big-endian": header(compression="sparse", index=">u4", count=0),
    "index without order": header(compression="sparse", index="u4", count=0),
    "index signed": header(compression="sparse", index="<i8", count=0),
    "index null": header(compression="sparse", index=None, count=0),
    "index number": header(compression="sparse", index=4, count=0),
    "count negative": header(compression="sparse", index="<u4", count=-1),
    "count bool": header(compression="sparse", index="<u4", count=False),
    "count float": header(compression="sparse", index="<u4", count=0.0),
    "count string": header(compression="sparse", index="<u4", count="0"),
    "count null": header(compression="sparse", index="<u4", count=None),
    "count over size": header(compression="sparse-lz4", index="<u4", count=7),
    "count huge": header(compression="sparse", index="<u8", count=2**64),
}


@pytest.mark.parametrize("head", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_header_rejected(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_array(head, DATA_6_F4)
    with pytest.raises(ProtocolError):
        array_codec(head)


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


# ---------------------------------------------------------------------------- corrupt payloads in every codec
SPARSE_SAMPLE = np.zeros((4, 25), dtype="<f4")
SPARSE_SAMPLE[0, 3], SPARSE_SAMPLE[1, 0], SPARSE_SAMPLE[2, 24], SPARSE_SAMPLE[3, 7] = 1.5, -3.0, 2.0, 9.0


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("cut", [0, 1, 5, -1], ids=["empty", "one byte", "five bytes", "last byte cut"])
def test_truncated_data_rejected(compression: str | None, cut: int) -> None:
    head, data = encode_array(SPARSE_SAMPLE, compression)
    with pytest.raises(ProtocolError):
        decode_array(head, bytes(data)[:cut])


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("extra", [b"\x00", b"junk", bytes(8)], ids=["zero", "junk", "eight zeros"])
def test_extended_data_rejected(compression: str | None, extra: bytes) -> None:
    head, data = encode_array(SPARSE_SAMPLE, compression)
    with pytest.raises(ProtocolError):
        decode_array(head, bytes(data) + extra)


@settings(max_examples=300, deadline=None)
@given(
    compression=st.sampled_from(CODECS),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    extra=st.binary(max_size=8),
)
def test_corrupt_data_is_refused_or_well_formed(
    compression: str | None, edits: list[tuple[int, int]], cut: int | None, extra: bytes
) -> None:
    """Flipped bytes, cuts and additions: a ProtocolError or an array of the declared dtype and shape; nothing else
    (no library exception, no over-allocation).  Only zlib checksums: other codecs may decode different values."""
    head, data = encode_array(SPARSE_SAMPLE, compression)
    corrupt = bytearray(data)
    for position, flip in edits:
        if corrupt:
            corrupt[position % len(corrupt)] ^= flip
    if cut is not None and corrupt:
        del corrupt[cut % len(corrupt):]
    corrupt += extra
    try:
        decoded = decode_array(head, bytes(corrupt), max_nbytes=SPARSE_SAMPLE.nbytes)
    except ProtocolError:
        return
    assert decoded.shape == SPARSE_SAMPLE.shape and decoded.dtype == SPARSE_SAMPLE.dtype


def test_flipped_zlib_bytes_rejected() -> None:
    head, data = encode_array(SPARSE_SAMPLE, "zlib")
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x55
        with pytest.raises(ProtocolError):
            decode_array(head, bytes(corrupt))


def sparse_frames(indices: list[int], values: list[float], shape: Any = (10,), index: str = "<u4",
                  count: int | None = None, dtype: str = "<f4") -> tuple[bytes, bytes]:
    count = len(indices) if count is None else count
    data = np.array(indices, index).tobytes() + np.array(values, dtype).tobytes()
    return header(dtype, shape, "sparse", index=index, count=count), data


@pytest.mark.parametrize(
    ("indices", "shape"),
    [([10], (10,)), ([3, 2**32 - 1], (10,)), ([0, 3, 3], (10,)), ([5, 4], (10,)), ([1, 0], (2, 5)),
     ([0], (0,)), ([1], ())],
    ids=["index = size", "index huge", "repeated", "decreasing", "decreasing 2-d", "index into empty", "0-d over"],
)
@pytest.mark.parametrize("index", INDEX_TYPES)
def test_sparse_bad_indices_rejected(indices: list[int], shape: Any, index: str) -> None:
    head, data = sparse_frames(indices, [1.0] * len(indices), shape, index)
    with pytest.raises(ProtocolError):
        decode_array(head, data)


def test_sparse_good_indices_accepted() -> None:
    for index in INDEX_TYPES:
        assert decode_array(*sparse_frames([0, 9], [1.0, 2.0], index=index))[[0, 9]].tolist() == [1.0, 2.0]
        assert decode_array(*sparse_frames([0], [7.0], (), index))[()] == 7.0
        assert decode_array(*sparse_frames([], [], (0, 3), index)).shape == (0, 3)


@pytest.mark.parametrize("count", [0, 1, 3, 4], ids=["zero", "fewer", "more", "many more"])
def test_sparse_count_not_matching_frame_rejected(count: int) -> None:
    head, data = sparse_frames([1, 5], [1.0, 2.0], count=count)
    with pytest.raises(ProtocolError, match="bytes"):
        decode_array(head, data)


def sparse_lz4_frames(deltas: list[int], values: list[float], shape: Any = (10,), index: str = "<u4",
                      count: int | None = None) -> tuple[bytes, bytes]:
    count = len(deltas) if count is None else count
    payload = shuffled(np.array(deltas, index)) + shuffled(np.array(values, "<f4"))
    return (header("<f4", shape, "sparse-lz4", index=index, count=count),
            lz4.block.compress(payload, store_size=False))


@pytest.mark.parametrize(
    "deltas",
    [[10], [3, 7], [0, 0], [4, 2**32 - 2], [2**32 - 1, 2]],
    ids=["first = size", "sum = size", "repeated", "wraps to decrease", "huge first"],
)
def test_sparse_lz4_bad_deltas_rejected(deltas: list[int]) -> None:
    with pytest.raises(ProtocolError, match="sparse indices"):
        decode_array(*sparse_lz4_frames(deltas, [1.0] * len(deltas)))


def test_sparse_lz4_wrapping_u8_deltas_rejected() -> None:
    with pytest.raises(ProtocolError, match="sparse indices"):
        decode_array(*sparse_lz4_frames([4, 2**64 - 2], [1.0, 2.0], index="<u8"))


@pytest.mark.parametrize("count", [0, 1, 3], ids=["zero", "fewer", "more"])
def test_sparse_lz4_count_not_matching_payload_rejected(count: int) -> None:
    with pytest.raises(ProtocolError):
        decode_array(*sparse_lz4_frames([1, 4], [1.0, 2.0], count=count))


def test_sparse_lz4_good_deltas_accepted() -> None:
    assert decode_array(*sparse_lz4_frames([0, 9], [1.0, 2.0]))[[0, 9]].tolist() == [1.0, 2.0]
    assert decode_array(*sparse_lz4_frames([2, 1], [1.0, 2.0], index="<u8"))[[2, 3]].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("actual", [0, 7, 9, 16])
def test_lz4_inflating_to_wrong_size_rejected(actual: int) -> None:
    with pytest.raises(ProtocolError):
        decode_array(header("|u1", [8], "lz4"), lz4.block.compress(bytes(actual), store_size=False))


@pytest.mark.parametrize(
    "data",
    [b"", b"not lz4 at all", b"\xff" * 16, lz4.block.compress(bytes(64), store_size=True),
     lz4.block.compress(bytes(range(64)), store_size=False)[:-3]],
    ids=["empty", "garbage", "ff", "stored size", "truncated"],
)
@pytest.mark.parametrize("compression", ["lz4", "sparse-lz4"])
def test_bad_lz4_rejected(data: bytes, compression: str) -> None:
    with pytest.raises(ProtocolError):
        decode_array(header("|u1", [64], compression, **sparse_fields(compression, count=4)), data)


# ----------------------------------------------------------------------------- bombs and oversized declarations
class DecompressSpy:
    """Records the output bounds given to LZ4 and zlib, and the bytes they produced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bounds: list[int] = []
        self.produced: list[int] = []
        real_lz4, real_zlib = lz4.block.decompress, zlib.decompressobj
        spy = self

        def lz4_decompress(data: Any, uncompressed_size: int = -1, **kwargs: Any) -> bytes:
            spy.bounds.append(uncompressed_size)
            out: bytes = real_lz4(data, uncompressed_size=uncompressed_size, **kwargs)
            spy.produced.append(len(out))
            return out

        class Inflater:
            def __init__(self) -> None:
                self._inner = real_zlib()

            def decompress(self, data: Any, max_length: int = 0) -> bytes:
                spy.bounds.append(max_length)
                out = self._inner.decompress(data, max_length)
                spy.produced.append(len(out))
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        monkeypatch.setattr(lz4.block, "decompress", lz4_decompress)
        monkeypatch.setattr(zlib, "decompressobj", Inflater)


BOMB_LZ4 = lz4.block.compress(bytes(10_000_000), store_size=False)


def test_lz4_bomb_rejected_without_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(BOMB_LZ4) < 50_000
    spy = DecompressSpy(monkeypatch)
    with pytest.raises(ProtocolError, match="lz4"):
        decode_array(header("|u1", [8], "lz4"), BOMB_LZ4)
    assert spy.bounds == [8] and sum(spy.produced) == 0


def test_sparse_lz4_bomb_rejected_without_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = DecompressSpy(monkeypatch)
    with pytest.raises(ProtocolError, match="lz4"):
        decode_array(header("<f4", [8], "sparse-lz4", index="<u4", count=2), BOMB_LZ4)
    assert spy.bounds == [2 * (4 + 4)] and sum(spy.produced) == 0


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_oversized_declaration_rejected_before_decompressing(
    compression: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DecompressSpy(monkeypatch)
    big = header("<f8", [129], compression, **sparse_fields(compression, count=1))
    for data in (b"", BOMB_LZ4, zlib.compress(bytes(10_000_000)), bytes(1032)):
        with pytest.raises(ProtocolError, match="over the limit"):
            decode_array(big, data, max_nbytes=1024)
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_array(header("|u1", [2**62, 4], compression, **sparse_fields(compression, "<u8")), BOMB_LZ4)
    assert spy.bounds == []


def test_sparse_lz4_payload_held_to_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sparse-lz4 payload to inflate (indices + values) larger than max_nbytes is refused before inflating;
    plain sparse, whose frame is already in memory, only needs the decoded array within the limit."""
    dense = np.arange(1, 65, dtype="<f4")
    spy = DecompressSpy(monkeypatch)
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_array(*encode_array(dense, "sparse-lz4"), max_nbytes=dense.nbytes)
    assert spy.bounds == []
    assert_same(decode_array(*encode_array(dense, "sparse-lz4"), max_nbytes=2 * dense.nbytes), dense)
    assert_same(decode_array(*encode_array(dense, "sparse"), max_nbytes=dense.nbytes), dense)


def test_lz4_block_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ndarray, "LZ4_MAX_NBYTES", 16)
    for compression in ("lz4", "sparse-lz4"):
        with pytest.raises(ValueError, match="lz4"):
            encode_array(np.arange(1, 6, dtype="<u4"), compression)
    spy = DecompressSpy(monkeypatch)
    with pytest.raises(ProtocolError, match="lz4"):
        decode_array(header("|u1", [17], "lz4"), BOMB_LZ4)
    with pytest.raises(ProtocolError, match="lz4"):
        decode_array(header("<u4", [5], "sparse-lz4", index="<u4", count=3), BOMB_LZ4)
    assert spy.bounds == []
    assert_same(decode_array(*encode_array(np.arange(4, dtype="<u4"), "lz4")), np.arange(4, dtype="<u4"))


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_size_at_limit_accepted_in_every_codec(compression: str | None) -> None:
    array = np.zeros(256, "<f4")
    array[::50] = 1.0
    assert_same(decode_array(*encode_array(array, compression), max_nbytes=array.nbytes), array)
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_array(*encode_array(array, compression), max_nbytes=array.nbytes - 1)


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_zero_size_shape_with_huge_dims_rejected_in_every_codec(compression: str | None) -> None:
    empty = encode_array(np.zeros((0, 3), "<f4"), compression)[1]
    with pytest.raises(ProtocolError):
        decode_array(header("<f4", [0, 2**63 - 1], compression, **sparse_fields(compression)), empty)


@pytest.mark.parametrize("count", [1, 3, 5])
def test_decode_arrays_odd_frame_count(count: int) -> None:
    frames = encode_arrays([np.zeros(2, "<f4")] * 3)[:count]
    with pytest.raises(ProtocolError, match="pairs"):
        decode_arrays(frames)


def test_decoders_accept_zmq_frames() -> None:
    array = sample(np.dtype(">i4"), (3, 4))
    for compression in COMPRESSIONS:
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
    for compression in ("gzip", "ZLIB", "", 1, "raw", "LZ4", "sparse-zstd"):
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
