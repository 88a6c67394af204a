"""Regions files (ssnet_data.regions): boxes in wire/tick coordinates, their pixels, crop metas and placement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ssnet_common.errors import ConfigError
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.regions import Box, Regions, crop_meta, place

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

VIEW = ImageMeta(width=3456, height=6048, rows=1008, cols=3456, origin_x=0, origin_y=8448, plane=2)


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "regions.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_boxes_for_all_events_and_per_event(tmp_path: Path) -> None:
    regions = Regions.load(write(tmp_path, {
        "all": {"2": [{"wires": [0, 512], "ticks": [2400, 5472]}]},
        "events": [{"run": 1, "subrun": 2, "event": 3, "planes": {"0": [{"wires": [10, 20], "ticks": [3000, 3060]}]}}],
    }))
    assert regions.boxes((9, 9, 9), 2) == [Box(0, 512, 2400, 5472)]
    assert regions.boxes((9, 9, 9), 0) == []
    assert regions.boxes((1, 2, 3), 0) == [Box(10, 20, 3000, 3060)]
    assert regions.boxes((1, 2, 3), 2) == []  # an event listed has exactly its own boxes
    assert regions.count == 2


@pytest.mark.parametrize(
    ("box", "pixels"),
    [
        (Box(0, 512, 2400, 5472), (496, 1008, 0, 512)),        # bottom-left corner: row 0 is the latest tick
        (Box(100.5, 101, 8442, 8448), (0, 1, 100, 101)),       # touches one pixel
        (Box(3400, 4000, 8000, 9000), (0, 75, 3400, 3456)),    # over the top-right edge: clipped
        (Box(-100, -1, 3000, 4000), None),                     # left of the image
        (Box(10, 20, 100, 2400), None),                        # below it
    ],
)
def test_box_pixels(box: Box, pixels: Any) -> None:
    assert box.pixels(VIEW) == pixels


def test_crop_meta_and_place_round_trip_through_the_dump() -> None:
    for row0, row1, col0, col1 in [(0, 512, 0, 512), (496, 1008, 2944, 3456), (13, 77, 1001, 1999)]:
        crop = crop_meta(VIEW, row0, row1, col0, col1)
        assert crop.shape == (row1 - row0, col1 - col0) and crop.plane == 2
        assert place(VIEW, ImageMeta.parse(crop.dump())) == (row0, col0)  # 6 significant digits on the wire
    with pytest.raises(ValueError, match="does not lie within"):
        place(VIEW, ImageMeta(width=10, height=60, rows=10, cols=10, origin_x=3450, origin_y=8448, plane=2))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("", "is empty"),
        ("{not json", "is not JSON"),
        ([], "top level"),
        ({"al": {}}, "top level"),
        ({"all": {"x": []}}, "plane 'x' is not a plane number"),
        ({"all": {"0": {}}}, r"all\['0'\]: expected a list of boxes"),
        ({"all": {"0": [{"wires": [5, 1], "ticks": [0, 6]}]}}, r"all\['0'\]\[0\]: wires must be \[MIN, MAX\]"),
        ({"all": {"0": [{"wires": [0, 1]}]}}, "a box is"),
        ({"events": [{"run": 1, "subrun": 0, "event": -1}]}, r"events\[0\]: event must be a number"),
        ({"events": [{"run": 1, "subrun": 0, "event": 1}, {"run": 1, "subrun": 0, "event": 1}]}, "listed twice"),
        ({"all": {"0": []}, "events": []}, "names no box"),
        ({}, "names no box"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, document: Any, message: str) -> None:
    path = write(tmp_path, document)
    with pytest.raises(ConfigError, match=message) as error:
        Regions.load(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the regions file"):
        Regions.load(tmp_path / "nope.json")
