"""The LArCV1 image message: triplets of name, meta text (``dump() + ":(run,subrun,event)"``) and array."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zmq

from ssnet_common.errors import ProtocolError
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1msg import (
    MAX_META_TEXT,
    EventId,
    ImageProduct,
    decode_images,
    encode_images,
    format_meta_text,
    parse_meta_text,
)
from ssnet_data.ndarray import encode_array

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

MAX_U64 = 2**64 - 1


def meta(plane: int = 0, rows: int = 4, cols: int = 3, x: float = 392.0, y: float = 7488.0) -> ImageMeta:
    return ImageMeta(width=float(cols), height=6.0 * rows, rows=rows, cols=cols, origin_x=x, origin_y=y, plane=plane)


GENUINE = ImageMeta(width=512, height=3072, rows=512, cols=512, origin_x=392, origin_y=7488, plane=0)


def items(k: int, rows: int = 4, cols: int = 3) -> tuple[tuple[ImageMeta, EventId], ...]:
    return tuple((meta(i % 3, rows, cols, x=100.0 * i), EventId(5007, 101, 3001 + i)) for i in range(k))


def pixels(k: int, rows: int = 4, cols: int = 3, dtype: str = "<f4") -> np.ndarray[Any, Any]:
    return np.arange(k * rows * cols, dtype=dtype).reshape(k, rows, cols)


# ------------------------------------------------------------------------------------------------ meta text
def test_meta_text_for_one_event_is_exact() -> None:
    text = format_meta_text([(GENUINE, EventId(5007, 101, 3001))])
    assert text == GENUINE.dump() + ":(5007,101,3001)"
    assert text == (
        "Plane 0 (rows,cols) = (512,512) ... Left Top (392,7488) ... Right Bottom (904,4416)\n:(5007,101,3001)"
    )


def test_meta_text_for_three_events_joins_with_newlines() -> None:
    batch = items(3)
    text = format_meta_text(batch)
    assert text == "\n".join(f"{m.dump()}:({i.run},{i.subrun},{i.event})" for m, i in batch)
    assert text.count("\n") == 5
    assert not text.endswith("\n")


@pytest.mark.parametrize(
    "ids",
    [
        [EventId(0, 0, 0)],
        [EventId(MAX_U64, MAX_U64, MAX_U64)],
        [EventId(1, 2, 3), EventId(MAX_U64, 0, 2**63), EventId(7, 7, 7)],
    ],
    ids=["zeros", "u64 max", "three"],
)
def test_meta_text_round_trip(ids: list[EventId]) -> None:
    batch = tuple((meta(plane=i, x=10.0 * i), event) for i, event in enumerate(ids))
    text = format_meta_text(batch)
    assert parse_meta_text(text) == batch
    assert format_meta_text(parse_meta_text(text)) == text
    if ids[0].run == MAX_U64:
        assert text.endswith(":(18446744073709551615,18446744073709551615,18446744073709551615)")


def test_event_id_str() -> None:
    assert str(EventId(1, 2, MAX_U64)) == "(1,2,18446744073709551615)"


@pytest.mark.parametrize(
    "values", [(-1, 0, 0), (0, MAX_U64 + 1, 0), (0, 0, 1.0), (True, 0, 0), (0, "1", 0)],
)
def test_event_id_invalid(values: tuple[Any, Any, Any]) -> None:
    with pytest.raises(ValueError):
        EventId(*values)


ONE = GENUINE.dump() + ":(1,2,3)"
BAD_META_TEXTS = {
    "empty": "",
    "dump only": GENUINE.dump(),
    "dump without newline": GENUINE.dump()[:-1] + ":(1,2,3)",
    "missing ids": GENUINE.dump() + ":",
    "two ids": GENUINE.dump() + ":(1,2)",
    "four ids": GENUINE.dump() + ":(1,2,3,4)",
    "negative id": GENUINE.dump() + ":(-1,2,3)",
    "id too large": GENUINE.dump() + f":(1,{MAX_U64 + 1},3)",
    "float id": GENUINE.dump() + ":(1,2.0,3)",
    "space in ids": GENUINE.dump() + ":(1, 2,3)",
    "no colon": GENUINE.dump() + "(1,2,3)",
    "trailing newline": ONE + "\n",
    "trailing text": ONE + " ",
    "blank line between": ONE + "\n\n" + ONE,
    "CRLF between": ONE + "\r\n" + ONE,
    "second event incomplete": ONE + "\n" + GENUINE.dump(),
    "garbage": "Plane 0\n:(1,2,3)",
}


@pytest.mark.parametrize("text", BAD_META_TEXTS.values(), ids=BAD_META_TEXTS.keys())
def test_parse_meta_text_rejects(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_meta_text(text)


# ------------------------------------------------------------------------------------------------ messages
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_encode_decode_round_trip(compression: str | None) -> None:
    products = [
        ImageProduct("wire", items(3), pixels(3)),
        ImageProduct("segment_ü", items(1, 2, 5), pixels(1, 2, 5, dtype=">u2")),
        ImageProduct("empty", items(2, 0, 3), pixels(2, 0, 3)),
    ]
    frames = encode_images(products, compression)
    assert len(frames) == 4 * len(products)
    assert frames[0] == b"wire"
    assert frames[1] == format_meta_text(items(3)).encode("ascii")
    decoded = decode_images(frames)
    assert len(decoded) == len(products)
    for got, want in zip(decoded, products):
        assert got.name == want.name
        assert got.items == want.items
        assert got.metas == want.metas
        assert got.ids == want.ids
        assert got.array.dtype.str == want.array.dtype.str
        assert np.array_equal(got.array, want.array)


def test_decode_accepts_zmq_frames() -> None:
    frames = encode_images([ImageProduct("wire", items(2), pixels(2))])
    decoded = decode_images([zmq.Frame(bytes(f)) for f in frames])
    assert decoded[0].ids == (EventId(5007, 101, 3001), EventId(5007, 101, 3002))
    assert np.array_equal(decoded[0].array, pixels(2))


def test_two_dimensional_array_with_one_meta_gets_batch_axis() -> None:
    image = pixels(1)[0]
    product = ImageProduct("wire", items(1), image)
    assert product.array.shape == (1, 4, 3)
    assert np.shares_memory(product.array, image)
    decoded = decode_images(encode_images([product]))[0]
    assert decoded.array.shape == (1, 4, 3)
    assert np.array_equal(decoded.array[0], image)


def test_genuine_meta_round_trip_through_message() -> None:
    product = ImageProduct("wire", ((GENUINE, EventId(5007, 101, 3001)),), np.zeros((512, 512), "<f4"))
    frames = encode_images([product], "zlib")
    assert bytes(frames[1]).decode() == GENUINE.dump() + ":(5007,101,3001)"
    assert decode_images(frames)[0].items == product.items


# -------------------------------------------------------------------------------------- product rejections
@pytest.mark.parametrize(
    ("name", "batch", "array"),
    [
        ("", items(1), pixels(1)),
        ("x" * 256, items(1), pixels(1)),
        ("wire", (), pixels(0)),
        ("wire", items(2), pixels(3)),
        ("wire", items(3), pixels(2)),
        ("wire", items(2), pixels(1)[0]),  # 2-D array with two metas
        ("wire", items(1, 4, 3), pixels(1, 3, 4)),
        ("wire", items(1, 4, 3), pixels(1, 4, 4)),
        ("wire", items(1), np.zeros((1, 1, 4, 3), "<f4")),
        ("wire", items(1), np.zeros(12, "<f4")),
    ],
    ids=["empty name", "long name", "no meta", "k2 vs 3", "k3 vs 2", "2-D with two metas", "transposed",
         "cols mismatch", "4-D", "1-D"],
)
def test_invalid_product_rejected(name: str, batch: Any, array: np.ndarray[Any, Any]) -> None:
    with pytest.raises(ProtocolError):
        ImageProduct(name, batch, array)


def test_mixed_meta_shapes_rejected() -> None:
    batch = (items(1, 4, 3)[0], items(1, 3, 4)[0])
    with pytest.raises(ProtocolError, match="rows,cols"):
        ImageProduct("wire", batch, pixels(2, 4, 3))


def good_frames() -> list[Any]:
    return encode_images([ImageProduct("wire", items(2), pixels(2))])


def replace(index: int, value: Any) -> list[Any]:
    frames = good_frames()
    frames[index] = value
    return frames


def meta_frame(batch: Any) -> bytes:
    return format_meta_text(batch).encode("ascii")


BAD_MESSAGES = {
    "no frames": [],
    "one frame": good_frames()[:1],
    "three frames": good_frames()[:3],
    "five frames": [*good_frames(), b"extra"],
    "seven frames": [*good_frames(), *good_frames()[:3]],
    "empty name": replace(0, b""),
    "name not UTF-8": replace(0, b"\xff"),
    "meta not ASCII": replace(1, meta_frame(items(2)).replace(b"Plane", "Plané".encode())),
    "meta not text": replace(1, b"\xff\xfe"),
    "meta garbage": replace(1, b"hello"),
    "meta too large": replace(1, b" " * (MAX_META_TEXT + 1)),
    "one meta for two images": replace(1, meta_frame(items(1))),
    "three metas for two images": replace(1, meta_frame(items(3))),
    "meta shape mismatch": replace(1, meta_frame(items(2, 3, 4))),
    "negative id": replace(1, meta_frame(items(2)).replace(b":(5007,", b":(-5007,")),
    "id too large": replace(1, meta_frame(items(2)).replace(b":(5007,", b":(18446744073709551616,")),
    "missing ids": replace(1, meta_frame(items(2)).replace(b":(5007,101,3001)", b":")),
    "missing event": replace(1, meta_frame(items(2)).replace(b":(5007,101,3001)", b":(5007,101)")),
    "array header garbage": replace(2, b"garbage"),
    "array data short": replace(3, b"\x00" * 8),
    "2-D array with two metas": [*good_frames()[:2], *encode_array(pixels(1)[0])],
    "1-D array": [*good_frames()[:2], *encode_array(np.zeros(24, "<f4"))],
}


@pytest.mark.parametrize("frames", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_decode_rejects(frames: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_images(frames)


def test_second_product_is_validated_too() -> None:
    frames = good_frames() + replace(1, meta_frame(items(1)))
    with pytest.raises(ProtocolError):
        decode_images(frames)


def test_decode_respects_max_nbytes() -> None:
    frames = good_frames()
    assert decode_images(frames, max_nbytes=2 * 4 * 3 * 4)
    with pytest.raises(ProtocolError, match="limit"):
        decode_images(frames, max_nbytes=2 * 4 * 3 * 4 - 1)
