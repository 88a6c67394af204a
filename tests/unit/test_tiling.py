"""Tiles over whole detector views and the stitching of their scores (ssnet_worker.tiling, ssnet.Tiling)."""

from __future__ import annotations

import numpy as np
import pytest

from ssnet_common.errors import ConfigError
from ssnet_worker.ssnet import Tiling
from ssnet_worker.tiling import Stitcher, Tile, tile_grid

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)


def covered(shape: tuple[int, int], tiles: list[Tile]) -> np.ndarray:
    counts = np.zeros(shape, np.int32)
    for tile in tiles:
        counts[tile.region] += 1
    return counts


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "rows", "cols"),
    [
        ((1008, 3456), (512, 512), (0, 0), [0, 496], [0, 512, 1024, 1536, 2048, 2560, 2944]),
        ((1008, 2400), (512, 512), (64, 64), [0, 448, 496], [0, 448, 896, 1344, 1792, 1888]),
        ((512, 512), (512, 512), (0, 0), [0], [0]),          # exactly one tile
        ((300, 200), (512, 512), (0, 0), [0], [0]),          # smaller than a tile: one tile of its own size
        ((1000, 200), (512, 512), (0, 0), [0, 488], [0]),    # not a multiple of the tile, narrower than it
        ((1024, 1024), (512, 512), (0, 0), [0, 512], [0, 512]),
        ((1024, 513), (512, 512), (100, 100), [0, 412, 512], [0, 1]),
    ],
)
def test_grid_covers_the_image_inside_it(shape: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int],
                                         rows: list[int], cols: list[int]) -> None:
    tiles = tile_grid(shape, tile, overlap)
    assert sorted({t.row for t in tiles}) == rows and sorted({t.col for t in tiles}) == cols
    assert len(tiles) == len(rows) * len(cols)
    assert [(t.row, t.col) for t in tiles] == sorted((t.row, t.col) for t in tiles)  # row by row
    for t in tiles:
        assert (t.rows, t.cols) == (min(tile[0], shape[0]), min(tile[1], shape[1]))
        assert t.row >= 0 and t.col >= 0 and t.row + t.rows <= shape[0] and t.col + t.cols <= shape[1]
    assert covered(shape, tiles).min() >= 1
    for axis, starts, size in ((0, rows, tile[0]), (1, cols, tile[1])):  # neighbours overlap at least `overlap`
        for a, b in zip(starts, starts[1:]):
            assert a + size - b >= overlap[axis]


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [((0, 10), (4, 4), (0, 0)), ((10, 10), (0, 4), (0, 0)), ((10, 10), (4, 4), (4, 0)), ((10, 10), (4, 4), (-1, 0))],
)
def test_grid_rejects(shape: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        tile_grid(shape, tile, overlap)


def owner_by_brute_force(shape: tuple[int, int], tiles: list[Tile]) -> np.ndarray:
    """For every pixel, the tile whose nearest border inside the image is farthest (first on ties)."""
    height, width = shape
    owner = np.full(shape, -1)
    for r in range(height):
        for c in range(width):
            best = -1.0
            for k, t in enumerate(tiles):
                if not (t.row <= r < t.row + t.rows and t.col <= c < t.col + t.cols):
                    continue
                borders = [r - t.row if t.row > 0 else np.inf, t.row + t.rows - 1 - r if t.row + t.rows < height
                           else np.inf, c - t.col if t.col > 0 else np.inf,
                           t.col + t.cols - 1 - c if t.col + t.cols < width else np.inf]
                if min(borders) > best:
                    best, owner[r, c] = min(borders), k
    return owner


@pytest.mark.parametrize(("shape", "overlap"), [((40, 70), 0), ((40, 70), 5), ((17, 33), 3), ((16, 16), 0)])
def test_center_stitch_takes_each_pixel_from_the_tile_it_is_deepest_in(shape: tuple[int, int], overlap: int) -> None:
    tiles = tile_grid(shape, (16, 16), (overlap, overlap))
    outs = [np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)]
    stitcher = Stitcher(outs, "center")
    for k, tile in enumerate(tiles):
        stitcher.paint(tile, [np.full((tile.rows, tile.cols), k, np.float32),
                              np.full((tile.rows, tile.cols), -k, np.float32)])
    owner = owner_by_brute_force(shape, tiles)
    np.testing.assert_array_equal(outs[0], owner)
    np.testing.assert_array_equal(outs[1], -owner)


def test_overwrite_stitch_paints_tiles_in_order() -> None:
    shape = (40, 70)
    tiles = tile_grid(shape, (16, 16), (4, 4))
    out = np.full(shape, np.nan, np.float32)
    stitcher = Stitcher([out], "overwrite")
    expected = np.full(shape, -1.0, np.float32)
    for k, tile in enumerate(tiles):
        stitcher.paint(tile, [np.full((tile.rows, tile.cols), k, np.float32)])
        expected[tile.region] = k
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="stitch mode"):
        Stitcher([out], "blend")


def test_tiling_settings() -> None:
    assert Tiling().grid((1008, 3456), (512, 512)) == tile_grid((1008, 3456), (512, 512), (0, 0))
    assert Tiling(tile=None).grid((1008, 3456), (512, 512)) == [Tile(0, 0, 1008, 3456)]
    assert len(Tiling(tile=(256, 256), overlap=32).grid((512, 512), (512, 512))) == 9
    with pytest.raises(ConfigError, match="smaller than the tile"):
        Tiling(tile=(64, 64), overlap=64)
    with pytest.raises(ConfigError, match="stitch mode"):
        Tiling(stitch="blend")
