"""Regions of interest: boxes, in an image's wire/tick coordinates, that are the only parts sent to a service.

``ssnet-client --regions FILE`` reads a JSON file of boxes per plane, for all events and per event::

    {
      "all":    {"2": [{"wires": [1200, 1711], "ticks": [3600, 6672]}]},
      "events": [{"run": 5, "subrun": 0, "event": 12,
                  "planes": {"0": [{"wires": [0, 511], "ticks": [2400, 5472]}], "1": []}}]
    }

``all`` applies to every event that ``events`` does not list; an event listed there has exactly its own boxes
(a plane it leaves out, or gives ``[]``, has none).  Coordinates are those of the image's meta: wires along
its columns (``min_x`` .. ``max_x``), ticks along its rows (``min_y`` .. ``max_y``; row 0 is the latest tick).  A
box covers every pixel it touches and is clipped to the image; a box that misses the image is left out.  The
client sends each box's crop with its own meta, and writes whole-view images that are zero outside the boxes
(where boxes overlap, the later one's scores win).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ssnet_common.errors import ConfigError
from ssnet_data.imagemeta import ImageMeta

EventKey = Tuple[int, int, int]  # run, subrun, event


@dataclass(frozen=True)
class Box:
    """Wires ``[wire_min, wire_max]`` by ticks ``[tick_min, tick_max]``."""

    wire_min: float
    wire_max: float
    tick_min: float
    tick_max: float

    def pixels(self, meta: ImageMeta) -> Optional[Tuple[int, int, int, int]]:
        """``(row0, row1, col0, col1)``: the pixels of ``meta``'s image the box touches, or None if it misses."""
        if meta.pixel_width <= 0 or meta.pixel_height <= 0:
            return None
        col0 = max(0, math.floor((self.wire_min - meta.min_x) / meta.pixel_width))
        col1 = min(meta.cols, math.ceil((self.wire_max - meta.min_x) / meta.pixel_width))
        row0 = max(0, math.floor((meta.max_y - self.tick_max) / meta.pixel_height))
        row1 = min(meta.rows, math.ceil((meta.max_y - self.tick_min) / meta.pixel_height))
        if col1 <= col0 or row1 <= row0:
            return None
        return row0, row1, col0, col1


def crop_meta(meta: ImageMeta, row0: int, row1: int, col0: int, col1: int) -> ImageMeta:
    """The meta of pixels ``[row0, row1) x [col0, col1)`` of ``meta``'s image."""
    return ImageMeta(
        width=(col1 - col0) * meta.pixel_width, height=(row1 - row0) * meta.pixel_height, rows=row1 - row0,
        cols=col1 - col0, origin_x=meta.min_x + col0 * meta.pixel_width,
        origin_y=meta.max_y - row0 * meta.pixel_height, plane=meta.plane,
    )


def place(whole: ImageMeta, crop: ImageMeta) -> Tuple[int, int]:
    """``(row0, col0)`` of a crop's meta within the whole view's (metas travel with 6 significant digits)."""
    row0 = round((whole.max_y - crop.max_y) / whole.pixel_height)
    col0 = round((crop.min_x - whole.min_x) / whole.pixel_width)
    if not (row0 >= 0 and row0 + crop.rows <= whole.rows and col0 >= 0 and col0 + crop.cols <= whole.cols):
        raise ValueError(f"the crop {crop.dump().strip()} does not lie within the view {whole.dump().strip()}")
    return row0, col0


PlaneBoxes = Dict[int, List[Box]]


@dataclass(frozen=True)
class Regions:
    """Boxes per plane, for all events (``default``) and per event (``events``)."""

    default: PlaneBoxes
    events: Dict[EventKey, PlaneBoxes]
    source: str = "regions"

    def boxes(self, event: EventKey, plane: int) -> List[Box]:
        planes = self.events.get(event, self.default)
        return planes.get(plane, [])

    @property
    def count(self) -> int:
        return sum(len(b) for planes in [self.default, *self.events.values()] for b in planes.values())

    @classmethod
    def load(cls, path: Union[str, Path]) -> Regions:
        """Read and check a regions file; :class:`ConfigError` naming the file and the place of any problem."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the regions file {str(path)!r}: {exc.strerror or exc}") from None
        try:
            document = json.loads(text)
        except ValueError as exc:
            what = "is empty" if not text.strip() else f"is not JSON ({exc})"
            raise ConfigError(f"regions file {str(path)!r} {what}: expected "
                              '{"all": {PLANE: [BOX, ...]}, "events": [...]}') from None
        regions = cls.parse(document, str(path))
        if regions.count == 0:
            raise ConfigError(f"regions file {str(path)!r} names no box: nothing would be sent")
        return regions

    @classmethod
    def parse(cls, document: Any, source: str = "regions") -> Regions:
        def fail(where: str, problem: str) -> ConfigError:
            return ConfigError(f"regions file {source!r}: {where}: {problem}")

        if not isinstance(document, dict) or set(document) - {"all", "events"}:
            raise fail("top level", 'expected an object with "all" and/or "events"')
        default = _planes(document.get("all", {}), "all", fail)
        events: Dict[EventKey, PlaneBoxes] = {}
        listed = document.get("events", [])
        if not isinstance(listed, list):
            raise fail("events", "expected a list of {run, subrun, event, planes}")
        for n, item in enumerate(listed):
            where = f"events[{n}]"
            if not isinstance(item, dict) or set(item) - {"run", "subrun", "event", "planes"}:
                raise fail(where, "expected an object with run, subrun, event and planes")
            ids = []
            for name in ("run", "subrun", "event"):
                value = item.get(name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise fail(where, f"{name} must be a number 0 or more, got {value!r}")
                ids.append(value)
            key = (ids[0], ids[1], ids[2])
            if key in events:
                raise fail(where, f"event {key[0]}/{key[1]}/{key[2]} is listed twice")
            events[key] = _planes(item.get("planes", {}), f"{where}.planes", fail)
        return cls(default, events, source)


def _planes(value: Any, where: str, fail: Any) -> PlaneBoxes:
    if not isinstance(value, dict):
        raise fail(where, 'expected an object {"PLANE": [BOX, ...]}')
    planes: PlaneBoxes = {}
    for key, boxes in value.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise fail(where, f"plane {key!r} is not a plane number")
        if not isinstance(boxes, list):
            raise fail(f"{where}[{key!r}]", "expected a list of boxes")
        planes[int(key)] = [_box(box, f"{where}[{key!r}][{i}]", fail) for i, box in enumerate(boxes)]
    return planes


def _box(value: Any, where: str, fail: Any) -> Box:
    if not isinstance(value, dict) or set(value) != {"wires", "ticks"}:
        raise fail(where, 'a box is {"wires": [MIN, MAX], "ticks": [MIN, MAX]}')
    bounds = []
    for name in ("wires", "ticks"):
        pair = value[name]
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in pair) or not pair[0] < pair[1]):
            raise fail(where, f"{name} must be [MIN, MAX] with MIN < MAX, got {pair!r}")
        bounds += [float(pair[0]), float(pair[1])]
    return Box(*bounds)


__all__ = ["Box", "Regions", "crop_meta", "place"]
