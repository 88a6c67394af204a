"""``ImageMeta``: genuine larcv1 ``dump()`` text, its parser, and C++ ``ostream`` number formatting."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from ssnet_common.errors import ProtocolError
from ssnet_data.imagemeta import INVALID_PLANE, ImageMeta, format_double

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MANIFEST = SHARED / "data" / "larcv1" / "manifest.json"


def manifest_images() -> list[Any]:
    """One pytest param per image in the manifest (a single skipped param if the shared data is absent)."""
    if not MANIFEST.is_file():
        reason = f"shared LArCV1 sample manifest not found at {MANIFEST}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    manifest = json.loads(MANIFEST.read_text())
    params = []
    for file_name, file_info in manifest["files"].items():
        for producer, info in file_info["producers"].items():
            for entry in info["entries"]:
                for image in entry["images"]:
                    params.append(pytest.param(
                        image, id=f"{file_name}:{producer}:entry{entry['entry']}:image{image['index']}"
                    ))
    assert params, "manifest lists no images"
    return params


def from_manifest(image: dict[str, Any]) -> ImageMeta:
    return ImageMeta(
        width=image["width"], height=image["height"], rows=image["rows"], cols=image["cols"],
        origin_x=image["origin_x"], origin_y=image["origin_y"], plane=image["plane"],
    )


MANIFEST_FIELDS = (
    "origin_x", "origin_y", "width", "height", "rows", "cols", "plane",
    "min_x", "max_x", "min_y", "max_y", "pixel_width", "pixel_height",
)


@pytest.mark.parametrize("image", manifest_images())
def test_dump_matches_genuine_larcv1(image: dict[str, Any]) -> None:
    meta = from_manifest(image)
    assert meta.dump() == image["meta_dump"]
    assert meta.shape == (image["rows"], image["cols"])


@pytest.mark.parametrize("image", manifest_images())
def test_parse_genuine_dump(image: dict[str, Any]) -> None:
    meta = ImageMeta.parse(image["meta_dump"])
    for name in MANIFEST_FIELDS:
        assert getattr(meta, name) == pytest.approx(image[name], rel=1e-12), name
    assert meta == from_manifest(image)
    assert meta.dump() == image["meta_dump"]


# ------------------------------------------------------------------------------------------ %g formatting
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (0, "0"),
        (0.5, "0.5"),
        (-3, "-3"),
        (-3.0, "-3"),
        (1.0, "1"),
        (392.0, "392"),
        (7488.0, "7488"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (1.5e-07, "1.5e-07"),
        (123456.0, "123456"),
        (999999.0, "999999"),
        (1000000.0, "1e+06"),
        (1234567.0, "1.23457e+06"),
        (-1234567.0, "-1.23457e+06"),
        (3.14159265, "3.14159"),
        (2.0 / 3.0, "0.666667"),
        (1e100, "1e+100"),
        (1.7976931348623157e308, "1.79769e+308"),
        (5e-324, "4.94066e-324"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        (-math.nan, "-nan"),
    ],
)
def test_format_double_matches_cpp_ostream(value: float, text: str) -> None:
    assert format_double(value) == text


def test_dump_uses_cpp_formatting() -> None:
    meta = ImageMeta(width=0.5, height=1234567.0, rows=3, cols=2, origin_x=-3, origin_y=1e-05, plane=2)
    assert meta.dump() == (
        "Plane 2 (rows,cols) = (3,2) ... Left Top (-3,1e-05) ... Right Bottom (-2.5,-1.23457e+06)\n"
    )


# --------------------------------------------------------------------------------------- values, geometry
def test_geometry_properties() -> None:
    meta = ImageMeta(width=512, height=3072, rows=512, cols=256, origin_x=392, origin_y=7488, plane=1)
    assert (meta.min_x, meta.max_x, meta.min_y, meta.max_y) == (392.0, 904.0, 4416.0, 7488.0)
    assert (meta.pixel_width, meta.pixel_height) == (2.0, 6.0)
    assert meta.shape == (512, 256)
    assert isinstance(meta.width, float)
    assert isinstance(meta.origin_x, float)


def test_defaults_and_empty_meta() -> None:
    meta = ImageMeta(width=0, height=0, rows=0, cols=0, origin_x=0, origin_y=0)
    assert meta.plane == INVALID_PLANE == 65535
    assert (meta.pixel_width, meta.pixel_height) == (0.0, 0.0)
    assert meta.dump() == "Plane 65535 (rows,cols) = (0,0) ... Left Top (0,0) ... Right Bottom (0,0)\n"


def test_extreme_valid_values() -> None:
    meta = ImageMeta(width=1, height=1, rows=2**64 - 1, cols=0, origin_x=0, origin_y=0, plane=0)
    assert ImageMeta.parse(meta.dump()) == meta


GOOD = {"width": 1.0, "height": 1.0, "rows": 1, "cols": 1, "origin_x": 0.0, "origin_y": 1.0, "plane": 0}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", -1), ("cols", -1), ("rows", 2**64), ("rows", 1.0), ("rows", "1"), ("rows", True), ("cols", None),
        ("plane", -1), ("plane", 65536), ("plane", True), ("plane", False), ("plane", "0"), ("plane", 0.0),
        ("width", "1"), ("height", None), ("origin_x", True), ("origin_y", "7488"), ("width", [1.0]),
    ],
)
def test_invalid_values_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ImageMeta(**{**GOOD, field: value})


def test_meta_is_frozen() -> None:
    meta = ImageMeta(**GOOD)
    with pytest.raises(AttributeError):
        meta.rows = 2  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------- parsing
GENUINE = "Plane 0 (rows,cols) = (512,512) ... Left Top (392,7488) ... Right Bottom (904,4416)\n"


def test_parse_prefix_returns_end_position() -> None:
    text = "xx" + GENUINE + ":(1,2,3)"
    meta, end = ImageMeta.parse_prefix(text, 2)
    assert meta.dump() == GENUINE
    assert text[end:] == ":(1,2,3)"


@pytest.mark.parametrize(
    "value", [0.5, -3.0, 1e-05, 1.5e-07, 1e100, -1234560.0],
)
def test_parse_round_trip_of_representable_values(value: float) -> None:
    meta = ImageMeta(width=1.0, height=2.0, rows=4, cols=5, origin_x=value, origin_y=value + 2.0, plane=7)
    again = ImageMeta.parse(meta.dump())
    assert again.dump() == meta.dump()
    assert again.origin_x == pytest.approx(value, rel=1e-5)


def test_parse_keeps_only_six_digits() -> None:
    meta = ImageMeta(width=1.0, height=1.0, rows=1, cols=1, origin_x=1234567.0, origin_y=0.0)
    assert ImageMeta.parse(meta.dump()).origin_x == 1234570.0


def test_parse_inf_and_nan() -> None:
    text = "Plane 0 (rows,cols) = (1,1) ... Left Top (-inf,nan) ... Right Bottom (inf,-nan)\n"
    meta = ImageMeta.parse(text)
    assert meta.origin_x == -math.inf
    assert math.isnan(meta.origin_y)


BAD_DUMPS = {
    "empty": "",
    "garbage": "hello world\n",
    "missing newline": GENUINE[:-1],
    "CRLF": GENUINE[:-1] + "\r\n",
    "trailing text": GENUINE + "x",
    "trailing newline": GENUINE + "\n",
    "two dumps": GENUINE * 2,
    "leading space": " " + GENUINE,
    "negative rows": GENUINE.replace("(512,512)", "(-512,512)"),
    "float rows": GENUINE.replace("(512,512)", "(512.0,512)"),
    "plane too large": GENUINE.replace("Plane 0", "Plane 65536"),
    "negative plane": GENUINE.replace("Plane 0", "Plane -1"),
    "rows too large": GENUINE.replace("(512,512)", f"({2**64},512)"),
    "bad number": GENUINE.replace("(392,", "(3e9e9,"),
    "word for number": GENUINE.replace("(392,", "(nana,"),
    "spaces in coordinates": GENUINE.replace("(392,7488)", "(392, 7488)"),
    "missing corner": GENUINE.replace(" ... Right Bottom (904,4416)", ""),
    "lower-case plane": GENUINE.replace("Plane", "plane"),
    "event ids": GENUINE + ":(1,2,3)",
}


@pytest.mark.parametrize("text", BAD_DUMPS.values(), ids=BAD_DUMPS.keys())
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ProtocolError):
        ImageMeta.parse(text)


@pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"), reason="this Python has no int digit limit")
def test_parse_rejects_absurdly_long_integer() -> None:
    with pytest.raises(ProtocolError):
        ImageMeta.parse(GENUINE.replace("(512,512)", f"({'1' * 5000},512)"))


def test_parse_rejects_non_ascii_digits() -> None:
    with pytest.raises(ProtocolError):
        ImageMeta.parse(GENUINE.replace("Plane 0", "Plane \u0660"))
