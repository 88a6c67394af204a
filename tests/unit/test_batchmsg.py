"""The training network's messages: info, batch request and batch reply round trips, strict decoding, shards."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import zmq

from ssnet_common.errors import ProtocolError
from ssnet_data.batchmsg import (
    MAX_BATCH,
    TAG_BATCH,
    TAG_GET,
    BatchProduct,
    BatchReply,
    BatchRequest,
    DatasetInfo,
    InfoRequest,
    Preprocess,
    decode_request,
    shard_of,
    shard_range,
    shard_service,
)
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.ndarray import encode_array

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

MAX_U64 = 2**64 - 1


def meta(plane: int, rows: int = 4, cols: int = 3, x: float = 392.0, y: float = 7488.0) -> ImageMeta:
    return ImageMeta(width=float(cols), height=6.0 * rows, rows=rows, cols=cols, origin_x=x, origin_y=y, plane=plane)


def product(name: str = "wire", batch: int = 2, planes: int = 3, rows: int = 4, cols: int = 3) -> BatchProduct:
    array = np.arange(batch * planes * rows * cols, dtype=np.float32).reshape(batch, planes, rows, cols)
    metas = tuple(tuple(meta(p, rows, cols, x=100.0 * i + p) for p in range(planes)) for i in range(batch))
    return BatchProduct(name, metas, array)


def reply(batch: int = 2, names: tuple[str, ...] = ("wire", "segment")) -> BatchReply:
    ids = np.array([[5007, 101, 3001 + i] for i in range(batch)], dtype=np.uint64)
    ids[-1] = [MAX_U64, MAX_U64 - 1, 2**63 + 1]  # exact 64-bit ids
    return BatchReply(3, 17, "0123456789abcdef", np.arange(batch, dtype=np.uint64) * 5, ids,
                      tuple(product(n, batch) for n in names))


def as_zmq_frames(frames: list[Any]) -> list[zmq.Frame]:
    """Frames as a receiving socket hands them over (read-only buffers)."""
    return [zmq.Frame(bytes(memoryview(f))) for f in frames]


# ---------------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("entries", [0, 1, 2, 3, 10, 11, 1000])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_the_entries_contiguously(entries: int, count: int) -> None:
    ranges = [shard_range(entries, k, count) for k in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == entries
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1
    owners = shard_of(np.arange(entries, dtype=np.uint64), entries, count)
    for k, (start, stop) in enumerate(ranges):
        assert (owners[start:stop] == k).all()


def test_shard_service_names() -> None:
    assert shard_service("batch", 0, 1) == "batch"
    assert [shard_service("batch", k, 3) for k in range(3)] == ["batch_shard0", "batch_shard1", "batch_shard2"]
    for index, count in [(1, 1), (-1, 2), (2, 2), (0, 0)]:
        with pytest.raises(ValueError, match="shard"):
            shard_service("batch", index, count)


# ------------------------------------------------------------------------------------------------------ info
def test_info_round_trip() -> None:
    info = DatasetInfo(10, ("wire", "segment"), "4e38d6d3e846d3d9", ("a.root", "b.root"), 1, 3)
    assert InfoRequest.decode(InfoRequest().encode()) == InfoRequest()
    assert isinstance(decode_request(InfoRequest().encode()), InfoRequest)
    back = DatasetInfo.decode(as_zmq_frames(info.encode()))
    assert back == info
    assert back.shard == (3, 6)


@pytest.mark.parametrize("change", [
    {"entries": -1}, {"entries": True}, {"producers": []}, {"producers": ["a b"]}, {"producers": ["w", "w"]},
    {"producers": "wire"}, {"dataset": "XYZ"}, {"dataset": ""}, {"files": "a.root"}, {"shard_index": 3},
    {"shard_count": 0}, {"extra": 1},
])
def test_info_decoding_is_strict(change: dict[str, Any]) -> None:
    body = {"entries": 10, "producers": ["wire"], "dataset": "ab", "files": [], "shard_index": 0, "shard_count": 3}
    body.update(change)
    with pytest.raises(ProtocolError):
        DatasetInfo.decode([b"ssnb1.dataset", json.dumps(body).encode()])


# ---------------------------------------------------------------------------------------------------- request
def test_batch_request_round_trip_with_every_preprocessing_option() -> None:
    preprocess = Preprocess(planes=(2, 0), crop=(256, 128), crop_threshold=7.5, crop_producer="wire",
                            threshold=10, clip=500.0, adc_producers=("wire",))
    request = BatchRequest(2, 41, [9, 0, MAX_U64], ("wire", "segment"), preprocess, "zlib")
    back = decode_request(as_zmq_frames(request.encode()))
    assert isinstance(back, BatchRequest)
    assert (back.epoch, back.index, back.producers, back.compression) == (2, 41, ("wire", "segment"), "zlib")
    assert back.entries.dtype == np.uint64 and back.entries.tolist() == [9, 0, MAX_U64]
    assert back.preprocess == preprocess
    assert back.preprocess.threshold == 10.0 and isinstance(back.preprocess.threshold, float)


def test_batch_request_defaults() -> None:
    back = BatchRequest.decode(BatchRequest(0, 0, np.array([4], dtype=np.int32)).encode())
    assert back.producers == () and back.preprocess == Preprocess() and back.compression is None


@pytest.mark.parametrize("entries", [[], [1, 1], [-1], [[1, 2]], [1.5], np.zeros(MAX_BATCH + 1, np.uint64)])
def test_batch_request_entries_must_be_distinct_indexes(entries: Any) -> None:
    with pytest.raises(ValueError):
        BatchRequest(0, 0, entries)


@pytest.mark.parametrize("kwargs", [
    {"planes": []}, {"planes": [0, 0]}, {"planes": [70000]}, {"planes": "012"}, {"crop": (0, 4)}, {"crop": (4,)},
    {"crop": (True, 4)}, {"threshold": float("nan")}, {"clip": float("inf")}, {"threshold": 10, "clip": 5},
    {"crop_producer": "a/b"}, {"adc_producers": "wire"}, {"crop_threshold": None},
])
def test_preprocess_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Preprocess(**kwargs)


def _request_frames(spec_change: dict[str, Any] | None = None, entries: Any = None) -> list[Any]:
    frames = BatchRequest(1, 2, [3, 4]).encode()
    spec = json.loads(bytes(frames[1]))
    spec.update(spec_change or {})
    frames[1] = json.dumps(spec).encode()
    if entries is not None:
        frames[2:4] = encode_array(entries)
    return frames


@pytest.mark.parametrize("frames", [
    [],
    [b"ssnb1.nope"],
    [TAG_GET],
    _request_frames()[:3],
    [*_request_frames(), b""],
    _request_frames({"epoch": -1}),
    _request_frames({"epoch": 1.0}),
    _request_frames({"index": None}),
    _request_frames({"producers": ["wire", "wire"]}),
    _request_frames({"compression": "gzip"}),
    _request_frames({"extra": 0}),
    _request_frames({"preprocess": {"planes": [0]}}),
    _request_frames({"preprocess": {**Preprocess().to_json(), "crop": [0, 3]}}),
    _request_frames({"preprocess": {**Preprocess().to_json(), "unknown": 1}}),
    _request_frames(entries=np.array([3, 4], dtype=np.int64)),
    _request_frames(entries=np.array([3.0, 4.0])),
    _request_frames(entries=np.array([3, 3], dtype=np.uint64)),
    _request_frames(entries=np.zeros((1, 2), dtype=np.uint64)),
    [TAG_GET, b"{" * 5000, b"", b""],
    [TAG_GET, b'{"epoch": NaN}', b"", b""],
], ids=range(20))
def test_batch_request_decoding_is_strict(frames: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_request(frames)


# ------------------------------------------------------------------------------------------------------ reply
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_batch_reply_round_trip(compression: str | None) -> None:
    original = reply()
    back = BatchReply.decode(as_zmq_frames(original.encode(compression)))
    assert (back.epoch, back.index, back.dataset) == (3, 17, "0123456789abcdef")
    assert back.entries.tolist() == [0, 5]
    assert back.ids.dtype == np.uint64 and back.ids.tolist() == original.ids.tolist()
    assert back.ids[-1].tolist() == [MAX_U64, MAX_U64 - 1, 2**63 + 1]
    assert [p.name for p in back.products] == ["wire", "segment"]
    for got, want in zip(back.products, original.products):
        assert got.array.dtype == np.float32 and got.array.shape == (2, 3, 4, 3)
        np.testing.assert_array_equal(got.array, want.array)
        assert got.metas == want.metas
    assert back.product("segment") is back.products[1]
    with pytest.raises(KeyError):
        back.product("nope")


def test_batch_reply_arrays_view_the_received_frames() -> None:
    frames = as_zmq_frames(reply(names=("wire",)).encode())
    back = BatchReply.decode(frames)
    array = back.products[0].array
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(frames[-1].buffer, dtype=np.uint8))


def test_batch_reply_metas_are_dump_text_entry_then_plane() -> None:
    frames = reply(batch=2, names=("wire",)).encode()
    text = bytes(frames[6]).decode()
    assert text == "".join(meta(p, x=100.0 * i + p).dump() for i in range(2) for p in range(3))


def _reply_frames() -> list[Any]:
    return reply(names=("wire",)).encode()


def _with(index: int, frame: Any) -> list[Any]:
    frames = _reply_frames()
    frames[index] = frame
    return frames


def _with_header(**change: Any) -> list[Any]:
    frames = _reply_frames()
    header = json.loads(bytes(frames[1]))
    header.update(change)
    frames[1] = json.dumps(header).encode()
    return frames


def _with_array(index: int, array: Any) -> list[Any]:
    frames = _reply_frames()
    frames[index:index + 2] = encode_array(array)
    return frames


@pytest.mark.parametrize("frames", [
    [TAG_BATCH],
    _reply_frames()[:-1],
    [*_reply_frames(), b"x", b"y", b"z"],
    _with(0, b"ssnb1.batcH"),
    _with_header(producers=["wire", "segment"]),
    _with_header(producers=["segment"], extra=1),
    _with_header(dataset="not hex"),
    _with_header(epoch=-3),
    _with(6, b"Plane 0 garbage"),
    _with(6, bytes(_reply_frames()[6])[:-1]),                   # last meta without its newline
    _with(6, bytes(_reply_frames()[6]) * 2),                    # too many metas
    _with(6, "é".encode()),
    _with_array(2, np.array([0, 5], dtype=np.int64)),           # entries not uint64
    _with_array(2, np.array([0, 0], dtype=np.uint64)),          # entries not distinct
    _with_array(2, np.array([0, 5, 6], dtype=np.uint64)),       # 3 entries, 2 images
    _with_array(4, np.zeros((2, 3), dtype=np.uint32)),          # ids not uint64
    _with_array(4, np.zeros((2, 2), dtype=np.uint64)),          # ids not (B, 3)
    _with_array(7, np.zeros((2, 3, 4), dtype=np.float32)),      # array not 4-D
    _with_array(7, np.zeros((2, 3, 5, 3), dtype=np.float32)),   # metas say 4 rows
    _with_array(7, np.zeros((2, 2, 4, 3), dtype=np.float32)),   # metas say 3 planes
    _with(8, b"short"),
], ids=range(21))
def test_batch_reply_decoding_is_strict(frames: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        BatchReply.decode(frames)


def test_batch_reply_and_product_validation() -> None:
    with pytest.raises(ValueError, match="metas"):
        BatchProduct("wire", ((meta(0),),), np.zeros((1, 2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        BatchProduct("wire", ((meta(0, rows=5),),), np.zeros((1, 1, 4, 3), np.float32))
    with pytest.raises(ValueError, match="distinct"):
        BatchReply(0, 0, "ab", np.arange(2, dtype=np.uint64), np.zeros((2, 3), np.uint64),
                   (product("wire"), product("wire")))
    with pytest.raises(ValueError, match="holds 2 entries"):
        BatchReply(0, 0, "ab", np.arange(3, dtype=np.uint64), np.zeros((3, 3), np.uint64), (product("wire"),))
