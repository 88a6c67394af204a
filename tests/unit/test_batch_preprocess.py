"""The data worker's preprocessing (pure NumPy), its entry cache, and the worker's answers without sockets."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from ssnet_common.config import ArgumentParser, EnvOptions
from ssnet_common.errors import ConfigError, DataError
from ssnet_data.batchmsg import BatchReply, BatchRequest, DatasetInfo, InfoRequest, Preprocess
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import Image2D, LArCV1Entry
from ssnet_data.preprocess import threshold_clip
from ssnet_worker.base import WorkerConfig
from ssnet_worker.batch import (
    BatchWorker,
    EntryCache,
    activity_window,
    add_options,
    assemble_batch,
    crop_meta,
    entry_nbytes,
    from_args,
    read_file_list,
    select_images,
)

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

MAX_U64 = 2**64 - 1
SAMPLE = "ssnet_sample_512.root"


def meta(plane: int, rows: int = 8, cols: int = 10, x: float = 100.0, y: float = 6000.0) -> ImageMeta:
    return ImageMeta(width=float(cols), height=6.0 * rows, rows=rows, cols=cols, origin_x=x, origin_y=y, plane=plane)


def image(plane: int, pixels: Any, x: float = 100.0) -> Image2D:
    array = np.asarray(pixels, dtype=np.float32)
    return Image2D(meta(plane, *array.shape, x=x), array)


def entry(index: int, products: dict[str, list[Image2D]], ids: tuple[int, int, int] | None = None) -> LArCV1Entry:
    run, subrun, event = ids or (5007, 101, 3000 + index)
    return LArCV1Entry(index, run, subrun, event, {p: tuple(images) for p, images in products.items()})


def hot(rows: int, cols: int, *spots: tuple[int, int, float]) -> np.ndarray[Any, Any]:
    array = np.zeros((rows, cols), dtype=np.float32)
    for row, col, value in spots:
        array[row, col] = value
    return array


# --------------------------------------------------------------------------------------------- threshold
def test_threshold_clip() -> None:
    pixels = np.array([[-5.0, 0.0, 9.99, 10.0], [11.0, 499.0, 500.0, 1e6]], dtype=np.float32)
    before = pixels.copy()
    result = threshold_clip(pixels, 10.0, 500.0)
    np.testing.assert_array_equal(result, [[0, 0, 0, 10], [11, 499, 500, 500]])
    np.testing.assert_array_equal(pixels, before)  # a new array unless out= is given
    np.testing.assert_array_equal(threshold_clip(pixels, None, 100.0), np.minimum(pixels, 100))
    np.testing.assert_array_equal(threshold_clip(pixels, 10.0, None), np.where(pixels < 10, 0, pixels))
    np.testing.assert_array_equal(threshold_clip(pixels), pixels)
    out = threshold_clip(pixels, 10.0, 500.0, out=pixels)
    assert out is pixels
    np.testing.assert_array_equal(pixels, result)
    other = np.empty_like(before)
    assert threshold_clip(before, 10.0, 500.0, out=other) is other
    np.testing.assert_array_equal(other, result)


# ------------------------------------------------------------------------------------------------- crop
def test_activity_window_centres_on_one_hit() -> None:
    assert activity_window(hot(100, 80, (50, 40, 20.0)), (10, 20)) == (50 - 4, 40 - 9)
    assert activity_window(hot(100, 80, (50, 40, 20.0)), (11, 21)) == (45, 30)  # odd sizes: the hit at the centre


def test_activity_window_is_charge_weighted_and_ignores_pixels_below_threshold() -> None:
    pixels = hot(100, 100, (20, 20, 30.0), (20, 80, 10.0), (90, 90, 5.0))
    # weights (pixel - threshold) with threshold 5: 25 at col 20, 5 at col 80, the 5.0 pixel does not count
    top, left = activity_window(pixels, (10, 10), threshold=5.0)
    assert (top, left) == (round(20 - 4.5), round((25 * 20 + 5 * 80) / 30 - 4.5))


def test_activity_window_stays_inside_the_image() -> None:
    assert activity_window(hot(100, 80, (0, 0, 9.0)), (10, 20)) == (0, 0)
    assert activity_window(hot(100, 80, (99, 79, 9.0)), (10, 20)) == (90, 60)
    assert activity_window(hot(100, 80, (99, 79, 9.0)), (100, 80)) == (0, 0)


def test_activity_window_without_activity_is_the_centre() -> None:
    assert activity_window(np.zeros((100, 80), np.float32), (10, 20)) == (45, 30)
    assert activity_window(hot(100, 80, (3, 3, 4.0)), (10, 20), threshold=4.0) == (45, 30)


def test_activity_window_larger_than_the_image() -> None:
    with pytest.raises(ValueError, match="larger than the image"):
        activity_window(np.zeros((100, 80), np.float32), (101, 20))


def test_crop_meta() -> None:
    full = ImageMeta(width=512, height=3072, rows=512, cols=512, origin_x=392, origin_y=7488, plane=2)
    assert crop_meta(full, 0, 0, 512, 512) == full
    cropped = crop_meta(full, 100, 30, 256, 128)
    assert cropped == ImageMeta(width=128, height=1536, rows=256, cols=128, origin_x=422, origin_y=7488 - 600, plane=2)
    assert cropped.dump() == "Plane 2 (rows,cols) = (256,128) ... Left Top (422,6888) ... Right Bottom (550,5352)\n"
    for bad in [(-1, 0, 10, 10), (0, 0, 513, 10), (500, 0, 13, 10), (0, 510, 10, 3)]:
        with pytest.raises(ValueError, match="outside"):
            crop_meta(full, *bad)


# ---------------------------------------------------------------------------------------------- planes
def test_select_images_by_plane_number_in_the_order_asked() -> None:
    images = [image(2, np.full((8, 10), 2)), image(0, np.zeros((8, 10))), image(1, np.ones((8, 10)))]
    assert select_images(images, None) == images
    assert [i.meta.plane for i in select_images(images, [0, 1, 2])] == [0, 1, 2]
    assert [i.meta.plane for i in select_images(images, (2,))] == [2]
    with pytest.raises(DataError, match=r"entry 7.*no image\(s\) of plane 5"):
        select_images(images, [0, 5], "entry 7")
    with pytest.raises(DataError, match="several"):
        select_images([*images, image(2, np.zeros((8, 10)))], [2])


# -------------------------------------------------------------------------------------------- assembling
def three_planes(seed: int, rows: int = 8, cols: int = 10, order: tuple[int, ...] = (0, 1, 2)) -> list[Image2D]:
    rng = np.random.default_rng(seed)
    return [image(p, rng.integers(0, 100, (rows, cols)), x=10.0 * p + seed) for p in order]


def test_assemble_without_preprocessing_stacks_entries_and_planes() -> None:
    entries = [entry(i, {"wire": three_planes(i)}, ids=(MAX_U64, 2**63, i)) for i in (4, 1)]
    batch = assemble_batch(entries, ["wire"], Preprocess())
    assert batch.ids.dtype == np.uint64 and batch.ids.tolist() == [[MAX_U64, 2**63, 4], [MAX_U64, 2**63, 1]]
    (wire,) = batch.products
    assert wire.name == "wire" and wire.array.shape == (2, 3, 8, 10) and wire.array.dtype == np.float32
    for position, item in enumerate(entries):
        for plane, img in enumerate(item.products["wire"]):
            np.testing.assert_array_equal(wire.array[position, plane], img.pixels)
            assert wire.metas[position][plane] == img.meta


def test_assemble_selects_planes_whatever_the_stored_order() -> None:
    entries = [entry(0, {"wire": three_planes(0, order=(2, 0, 1))}), entry(1, {"wire": three_planes(1)})]
    batch = assemble_batch(entries, ["wire"], Preprocess(planes=(2, 0)))
    wire = batch.products[0]
    assert wire.array.shape == (2, 2, 8, 10)
    assert [[m.plane for m in row] for row in wire.metas] == [[2, 0], [2, 0]]
    np.testing.assert_array_equal(wire.array[0, 0], entries[0].products["wire"][0].pixels)  # stored first: plane 2
    np.testing.assert_array_equal(wire.array[1, 1], entries[1].products["wire"][0].pixels)


def test_assemble_crops_every_producer_with_the_window_of_the_crop_producer() -> None:
    wire = [image(p, hot(40, 50, (30, 10 + p, 50.0), (2, 45, 1.0))) for p in range(3)]
    segment = [image(p, np.arange(2000).reshape(40, 50) + 10000 * p) for p in range(3)]
    item = entry(0, {"wire": wire, "segment": segment})
    batch = assemble_batch([item], ["wire", "segment"], Preprocess(crop=(10, 12), crop_threshold=2.0))
    got_wire, got_segment = batch.products
    assert got_wire.array.shape == got_segment.array.shape == (1, 3, 10, 12)
    for plane in range(3):
        top, left = activity_window(wire[plane].pixels, (10, 12), 2.0)
        assert (top, left) == (30 - 4, 10 + plane - 5)  # the 1.0 pixel is below the crop threshold
        np.testing.assert_array_equal(got_wire.array[0, plane], wire[plane].pixels[top:top + 10, left:left + 12])
        np.testing.assert_array_equal(got_segment.array[0, plane],
                                      segment[plane].pixels[top:top + 10, left:left + 12])
        assert got_wire.metas[0][plane] == got_segment.metas[0][plane] == crop_meta(wire[plane].meta, top, left,
                                                                                     10, 12)
    # the window may come from another producer
    by_segment = assemble_batch([item], ["wire", "segment"], Preprocess(crop=(10, 12), crop_producer="segment"))
    top, left = activity_window(segment[0].pixels, (10, 12))
    np.testing.assert_array_equal(by_segment.products[0].array[0, 0], wire[0].pixels[top:top + 10, left:left + 12])


def test_assemble_threshold_and_clip_touch_only_the_adc_producers() -> None:
    values = np.array([[1, 10, 600], [5, 50, 499]], dtype=np.float32)
    item = entry(0, {"wire": [image(0, values)], "segment": [image(0, values)]})
    batch = assemble_batch([item], ["wire", "segment"], Preprocess(threshold=10, clip=500))
    np.testing.assert_array_equal(batch.products[0].array[0, 0], [[0, 10, 500], [0, 50, 499]])
    np.testing.assert_array_equal(batch.products[1].array[0, 0], values)  # labels untouched
    both = assemble_batch([item], ["wire", "segment"],
                          Preprocess(threshold=10, clip=500, adc_producers=("wire", "segment")))
    np.testing.assert_array_equal(both.products[1].array[0, 0], [[0, 10, 500], [0, 50, 499]])
    np.testing.assert_array_equal(item.products["wire"][0].pixels, values)  # the entry itself is not modified


@pytest.mark.parametrize(("entries", "preprocess", "message"), [
    ([entry(0, {"wire": three_planes(0)}), entry(1, {"wire": three_planes(1, rows=9)})], Preprocess(),
     "crop to a fixed size"),
    ([entry(0, {"wire": three_planes(0)}), entry(1, {"wire": three_planes(1)[:2]})], Preprocess(),
     "select planes"),
    ([entry(0, {"wire": []})], Preprocess(), "no images"),
    ([entry(0, {"wire": three_planes(0)})], Preprocess(crop=(9, 4)), "larger than the image"),
    ([entry(0, {"wire": three_planes(0)})], Preprocess(crop=(4, 4), crop_producer="segment"), "crop_producer"),
    ([entry(0, {"wire": three_planes(0)})], Preprocess(adc_producers=("segment",)), "adc_producers"),
    ([entry(3, {"wire": three_planes(0)[1:]})], Preprocess(planes=(0,)), "entry 3.*plane 0"),
], ids=["shapes", "counts", "empty", "crop-too-large", "crop-producer", "adc-producer", "missing-plane"])
def test_assemble_errors_name_the_problem(entries: list[LArCV1Entry], preprocess: Preprocess, message: str) -> None:
    with pytest.raises(DataError, match=message):
        assemble_batch(entries, ["wire"], preprocess)


def test_assemble_crop_needs_the_same_shapes_in_every_producer() -> None:
    item = entry(5, {"wire": three_planes(0), "segment": three_planes(1, rows=9)})
    with pytest.raises(DataError, match=r"entry 5, producer 'segment'.*differs"):
        assemble_batch([item], ["wire", "segment"], Preprocess(crop=(4, 4)))


# ------------------------------------------------------------------------------------------------- cache
class FakeReader:
    """Entries of 3 planes 8x10 (960 bytes each), counting what is read."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.ranges: list[tuple[int, int]] = []

    def iter_range(self, start: int, stop: int) -> Iterator[LArCV1Entry]:
        assert 0 <= start < stop <= self.entries
        self.ranges.append((start, stop))
        for index in range(start, stop):
            yield entry(index, {"wire": three_planes(index)})


def test_cache_reads_misses_in_aligned_blocks_and_keeps_them() -> None:
    reader = FakeReader(30)
    cache = EntryCache(reader, 10, 30, capacity=10**6, read_ahead=8)  # type: ignore[arg-type]
    got = cache.get([27, 11, 12])
    assert [e.entry for e in got] == [27, 11, 12]
    assert reader.ranges == [(10, 18), (26, 30)]
    assert cache.get([17, 26, 11])[0].entry == 17 and reader.ranges == [(10, 18), (26, 30)]
    assert (cache.reads, cache.hits, len(cache)) == (12, 3, 12)
    assert cache.nbytes == 12 * entry_nbytes(got[0]) == 12 * 960


def test_cache_evicts_least_recently_used_within_its_budget() -> None:
    reader = FakeReader(20)
    cache = EntryCache(reader, 0, 20, capacity=3 * 960, read_ahead=1)  # type: ignore[arg-type]
    cache.get([0, 1, 2])
    cache.get([0])       # 0 is now the most recent
    cache.get([3])       # evicts 1
    reader.ranges.clear()
    cache.get([0, 2, 3])
    assert reader.ranges == []
    cache.get([1])
    assert reader.ranges == [(1, 2)]
    assert cache.nbytes <= 3 * 960 and len(cache) == 3


def test_cache_without_budget_reads_exactly_the_missing_runs() -> None:
    reader = FakeReader(20)
    cache = EntryCache(reader, 0, 20, capacity=0, read_ahead=8)  # type: ignore[arg-type]
    got = cache.get([9, 3, 4, 5, 12])
    assert [e.entry for e in got] == [9, 3, 4, 5, 12]
    assert reader.ranges == [(3, 6), (9, 10), (12, 13)]
    assert len(cache) == 0 and cache.nbytes == 0


def test_cache_preload_stops_at_the_budget() -> None:
    reader = FakeReader(20)
    cache = EntryCache(reader, 5, 15, capacity=4 * 960 + 10, read_ahead=4)  # type: ignore[arg-type]
    assert cache.preload() == 4
    reader.ranges.clear()
    cache.get([5, 6, 7, 8])
    assert reader.ranges == []


# ----------------------------------------------------------------------------------- worker, no sockets
@pytest.fixture(scope="module")
def manifest(shared: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((shared / "data" / "larcv1" / "manifest.json").read_text())
    return document["files"][SAMPLE]["producers"]["wire"]  # type: ignore[no-any-return]


def sha256(pixels: np.ndarray[Any, Any]) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype="<f4").tobytes()).hexdigest()


def test_worker_batch_holds_the_manifest_pixels(shared: Path, manifest: dict[str, Any]) -> None:
    sample = str(shared / "data" / "larcv1" / SAMPLE)
    worker = BatchWorker(WorkerConfig("batch"), inputs=[sample], producers=["wire"], read_ahead=4)
    info = DatasetInfo.decode(worker.handle(InfoRequest().encode()))
    assert (info.entries, info.producers, info.files, info.shard) == (10, ("wire",), (SAMPLE,), (0, 10))
    reply = BatchReply.decode(worker.handle(BatchRequest(0, 3, [9, 0, 4]).encode()))
    assert reply.dataset == info.dataset and (reply.epoch, reply.index) == (0, 3)
    wire = reply.product("wire")
    assert wire.array.shape == (3, 3, 512, 512)
    for position, index in enumerate([9, 0, 4]):
        want = manifest["entries"][index]
        assert reply.ids[position].tolist() == [want["run"], want["subrun"], want["event"]]
        for plane, image_doc in enumerate(want["images"]):
            assert sha256(wire.array[position, plane]) == image_doc["sha256_f32_rowmajor"]
            assert wire.metas[position][plane].dump() == image_doc["meta_dump"]


def test_sharded_worker_serves_only_its_shard(shared: Path) -> None:
    sample = str(shared / "data" / "larcv1" / SAMPLE)
    worker = BatchWorker(WorkerConfig("batch"), inputs=[sample], shard_index=1, shard_count=3, cache_bytes=0)
    assert worker.config.service == "batch_shard1"
    assert worker.info.shard == (3, 6)
    assert worker.batch(BatchRequest(0, 0, [5, 3])).entries.tolist() == [5, 3]
    with pytest.raises(DataError, match=r"entries \[6\] are outside the entries \[3, 6\).*shard 1 of 3"):
        worker.batch(BatchRequest(0, 0, [5, 6]))
    with pytest.raises(DataError, match="producers"):
        worker.batch(BatchRequest(0, 0, [4], ("segment",)))


def parse(argv: list[str], environ: Optional[dict[str, str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(environ=environ or {})
    add_options(EnvOptions(parser, "SSNET_WORKER_"))
    return parser.parse_args(argv)


def test_options_and_file_list(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "files.txt"
    listing.write_text("# training files\n a.root \n\n/abs/b.root  # comment\n")
    assert read_file_list(listing) == [str(tmp_path / "sub" / "a.root"), "/abs/b.root"]
    args = parse(["--batch-input", "x.root", "y.root", "--batch-file-list", str(listing), "--batch-producers",
                  "wire", "segment", "--batch-shard-index", "1", "--batch-shard-count", "2", "--batch-cache-mb", "0"])
    worker = from_args(WorkerConfig("batch"), args, registry=None)  # type: ignore[arg-type]
    assert worker.inputs == ("x.root", "y.root", str(tmp_path / "sub" / "a.root"), "/abs/b.root")
    assert worker.producers == ("wire", "segment") and worker.config.service == "batch_shard1"
    assert worker.cache_bytes == 0
    environ = {"SSNET_WORKER_BATCH_INPUT": "a.root 'c d.root'", "SSNET_WORKER_BATCH_PRODUCERS": "wire segment"}
    from_env = from_args(WorkerConfig("batch"), parse([], environ), None)  # type: ignore[arg-type]
    assert from_env.inputs == ("a.root", "c d.root") and from_env.producers == ("wire", "segment")
    with pytest.raises(ConfigError, match="--batch-input"):
        from_args(WorkerConfig("batch"), parse([]), None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="below --batch-shard-count"):
        from_args(WorkerConfig("batch"), parse(["--batch-input", "a", "--batch-shard-index", "2"]), None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot read"):
        read_file_list(tmp_path / "missing.txt")
