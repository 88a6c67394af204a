"""Tiles over a whole detector view, and stitching their scores back into one image.

SSNet was trained on 512x512 crops and its activations take about 1 GB per 512² image in float32, so a whole
MicroBooNE plane (1008x3456) runs as tiles of the net's input size.  Tiles are never padded: padding would change
the per-image BatchNorm statistics the net normalises with.  Instead the tiles of a row (or column) start every
``tile - overlap`` pixels and the last one is aligned to the image's edge, so the tiles always lie inside the
image and cover it whole.  A dimension no larger than the tile is one tile of the image's own extent.

Stitching, where tiles overlap:

* ``center`` (default): each pixel takes its score from the tile in which it lies farthest from a tile border
  that is inside the image (a border on the image's own edge is no worse in one tile than in another, so it does
  not count); ties go to the earlier tile.  Every pixel is then scored by the tile that sees most context
  around it.
* ``overwrite``: tiles are painted in order, row by row, each over the earlier ones (what the original
  production chain did with its crops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

STITCH_MODES = ("center", "overwrite")


@dataclass(frozen=True)
class Tile:
    """Rows ``[row, row + rows)`` and columns ``[col, col + cols)`` of the image."""

    row: int
    col: int
    rows: int
    cols: int

    @property
    def region(self) -> Tuple[slice, slice]:
        return slice(self.row, self.row + self.rows), slice(self.col, self.col + self.cols)


def _starts(size: int, tile: int, overlap: int) -> List[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return [*starts, size - tile]


def tile_grid(shape: Tuple[int, int], tile: Tuple[int, int], overlap: Tuple[int, int]) -> List[Tile]:
    """The tiles covering an image of ``shape``, row by row (see the module's text)."""
    (height, width), (tile_rows, tile_cols), (over_rows, over_cols) = shape, tile, overlap
    if height < 1 or width < 1:
        raise ValueError(f"an image of {height}x{width} pixels has nothing to tile")
    if tile_rows < 1 or tile_cols < 1:
        raise ValueError(f"tile must be at least 1x1, got {tile_rows}x{tile_cols}")
    if not (0 <= over_rows < tile_rows and 0 <= over_cols < tile_cols):
        raise ValueError(f"overlap {over_rows}x{over_cols} must be 0 or more and smaller than the tile "
                         f"{tile_rows}x{tile_cols}")
    rows, cols = min(tile_rows, height), min(tile_cols, width)
    return [Tile(r, c, rows, cols) for r in _starts(height, tile_rows, over_rows)
            for c in _starts(width, tile_cols, over_cols)]


def _border_distance(start: int, length: int, size: int) -> np.ndarray:
    """Per pixel of a tile's extent along one axis: the distance to its nearest border inside the image."""
    index = np.arange(length, dtype=np.float32)
    near = index if start > 0 else np.full(length, np.inf, np.float32)
    far = (length - 1 - index) if start + length < size else np.full(length, np.inf, np.float32)
    return np.minimum(near, far)


class Stitcher:
    """Paints the scores of tiles into whole-view arrays ``out`` (each ``(rows, cols)``), by ``mode``."""

    def __init__(self, outs: List[np.ndarray], mode: str = "center") -> None:
        if mode not in STITCH_MODES:
            raise ValueError(f"stitch mode must be one of {', '.join(STITCH_MODES)}, got {mode!r}")
        self.outs = outs
        self.mode = mode
        self.shape = outs[0].shape
        self._best: Optional[np.ndarray] = None
        if mode == "center":
            self._best = np.full(self.shape, -1.0, np.float32)

    def paint(self, tile: Tile, scores: List[np.ndarray]) -> None:
        """``scores[k]``: the tile's ``(tile.rows, tile.cols)`` scores for ``outs[k]``."""
        region = tile.region
        if self._best is None:
            for out, score in zip(self.outs, scores):
                out[region] = score
            return
        distance = np.minimum.outer(_border_distance(tile.row, tile.rows, self.shape[0]),
                                    _border_distance(tile.col, tile.cols, self.shape[1]))
        best = self._best[region]
        better = distance > best
        best[better] = distance[better]
        for out, score in zip(self.outs, scores):
            out[region][better] = score[better]


__all__ = ["STITCH_MODES", "Stitcher", "Tile", "tile_grid"]
