"""LArCV1Reader on the genuine sample files: every image equals what the genuine library reports."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import threading
import tracemalloc
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssnet_common.errors import LArCV1Error
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import READ_THREADS, Image2D, LArCV1Entry, LArCV1Reader, list_image2d_producers

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

pytest.importorskip("uproot", reason="reading LArCV1 files needs uproot")

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "larcv1"
SMALL = "ssnet_sample_512.root"
FULL = "ssnet_sample_fullevent.root"


def sample(name: str) -> Path:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"shared LArCV1 sample {path} not found (CI keeps ../shared beside the checkout)")
    return path


def expected_entries(name: str) -> list[dict[str, Any]]:
    manifest = json.loads(sample("manifest.json").read_text())
    entries: list[dict[str, Any]] = manifest["files"][name]["producers"]["wire"]["entries"]
    return entries


def assert_entry_matches(entry: LArCV1Entry, expected: dict[str, Any]) -> None:
    """The entry's ids and images equal the manifest's record (made with the genuine library)."""
    assert (entry.entry, entry.run, entry.subrun, entry.event) == (
        expected["entry"], expected["run"], expected["subrun"], expected["event"],
    )
    assert len(entry.images) == expected["n_images"]
    for image, want in zip(entry.images, expected["images"]):
        meta, pixels = image.meta, image.pixels
        assert (meta.plane, meta.rows, meta.cols) == (want["plane"], want["rows"], want["cols"])
        assert meta.dump() == want["meta_dump"]
        assert (meta.origin_x, meta.origin_y, meta.width, meta.height) == (
            want["origin_x"], want["origin_y"], want["width"], want["height"],
        )
        assert pixels.dtype == np.float32 and pixels.flags.c_contiguous and pixels.shape == (meta.rows, meta.cols)
        assert hashlib.sha256(pixels.astype("<f4").tobytes()).hexdigest() == want["sha256_f32_rowmajor"]
        nonzero = pixels[pixels != 0].astype(np.float64).tolist()  # zeros do not change the exact sum
        assert math.fsum(nonzero) == pytest.approx(want["sum_f64"], rel=1e-12)
        assert len(nonzero) == want["nonzero"]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("name", [SMALL, FULL])
def test_every_image_of_every_entry_equals_the_manifest(name: str, threads: int) -> None:
    expected = expected_entries(name)
    reader = LArCV1Reader(sample(name), "wire", threads=threads)
    assert len(reader) == len(expected)
    entries = list(reader)
    assert [entry.entry for entry in entries] == list(range(len(expected)))
    for entry, want in zip(entries, expected):
        assert_entry_matches(entry, want)
        assert [image.meta.plane for image in entry.images] == [0, 1, 2]
        assert list(entry.products) == ["wire"]


def test_pixels_follow_the_column_major_storage() -> None:
    import uproot

    path = sample(SMALL)
    with uproot.open(path) as file:
        stored = np.asarray(file["image2d_wire_tree/image2d_wire_branch/_image_v/_image_v._img"]
                            .array(entry_start=2, entry_stop=3, library="np")[0][1])
    pixels = LArCV1Reader(path, "wire")[2].images[1].pixels
    rows, cols = pixels.shape
    for row, col in [(0, 0), (0, cols - 1), (rows - 1, 0), (17, 301), (rows - 1, cols - 1)]:
        assert pixels[row, col] == stored[col * rows + row]


def test_list_image2d_producers() -> None:
    assert list_image2d_producers(sample(SMALL)) == ["wire"]
    assert list_image2d_producers(str(sample(FULL))) == ["wire"]


def test_several_files_read_as_one_sequence() -> None:
    small, full = expected_entries(SMALL), expected_entries(FULL)
    reader = LArCV1Reader([sample(SMALL), str(sample(FULL)), sample(SMALL)], "wire")
    assert len(reader) == 2 * len(small) + len(full)
    expected = [*small, *full, *small]
    for index, entry in enumerate(reader):
        assert entry.entry == index
        assert_entry_matches(entry, {**expected[index], "entry": index})
    assert reader[len(small)].event == full[0]["event"]
    assert reader[-1].event == small[-1]["event"]
    assert reader[-1].entry == len(reader) - 1


def test_iter_range_crosses_files_and_matches_indexing() -> None:
    reader = LArCV1Reader([sample(SMALL), sample(FULL)], producer="wire")
    entries = list(reader.iter_range(8, 12))
    assert [entry.entry for entry in entries] == [8, 9, 10, 11]
    assert [entry.event for entry in entries] == [reader[i].event for i in range(8, 12)]
    assert [entry.entry for entry in reader.iter_range(9)] == [9, 10, 11]
    assert list(reader.iter_range(5, 5)) == []
    single = reader[9]
    for a, b in zip(entries[1].images, single.images):
        assert a.meta == b.meta
        np.testing.assert_array_equal(a.pixels, b.pixels)


@pytest.mark.parametrize(("start", "stop"), [(-1, 2), (3, 2), (0, 11), (11, None)])
def test_iter_range_outside_the_input_is_an_error(start: int, stop: int | None) -> None:
    reader = LArCV1Reader(sample(SMALL), "wire")
    with pytest.raises(LArCV1Error, match=r"entry range .* not within the 10 entries") as info:
        reader.iter_range(start, stop)
    assert SMALL in str(info.value)


@pytest.mark.parametrize("index", [10, -11, 1000])
def test_index_out_of_range_is_an_error(index: int) -> None:
    reader = LArCV1Reader(sample(SMALL), "wire")
    with pytest.raises(LArCV1Error, match=rf"entry {index} is out of range: the input holds 10 entries") as info:
        reader[index]
    assert SMALL in str(info.value)


# A chunk holds two of these entries.  Decompressing its baskets at once (threads) keeps both baskets' compressed
# and uncompressed bytes alive together for a while: about one entry more at the peak than one after the other.
@pytest.mark.parametrize(("threads", "entries"), [(1, 6), (2, 7), (4, 7)])
def test_streaming_holds_a_few_entries_whatever_the_input_size(threads: int, entries: int) -> None:
    reader = LArCV1Reader([sample(FULL)] * 6, "wire", threads=threads)  # 12 entries of 3 images, 33 MB each
    entry_bytes = sum(image.pixels.nbytes for image in reader[0].images)
    tracemalloc.start()
    try:
        total = sum(sum(image.pixels.nbytes for image in entry.images) for entry in reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 12 * entry_bytes
    assert peak < entries * entry_bytes, f"peak {peak / 1e6:.0f} MB for entries of {entry_bytes / 1e6:.0f} MB"


# ---------------------------------------------------------------------------------- decompression threads
READ_THREAD = "ssnet-larcv1-read"  # the names of the reader's decompression threads start so


def reading_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(READ_THREAD)]


def test_the_default_number_of_threads_is_a_few_and_at_most_the_cpus() -> None:
    assert LArCV1Reader(sample(SMALL), "wire").threads == READ_THREADS
    assert 1 <= READ_THREADS <= min(4, os.cpu_count() or 1)


@pytest.mark.parametrize("threads", [0, -2, 1.5, True, "2"])
def test_threads_must_be_a_whole_number_from_one(threads: Any) -> None:
    with pytest.raises(LArCV1Error, match="threads must be a whole number, at least 1"):
        LArCV1Reader(sample(SMALL), "wire", threads=threads)


def test_decompression_threads_run_while_iterating_and_stop_when_it_ends() -> None:
    list(LArCV1Reader(sample(SMALL), "wire", threads=1))  # uproot's own helper threads (fsspec) start once
    before = set(threading.enumerate())
    reader = LArCV1Reader([sample(SMALL), sample(SMALL)], "wire", threads=3)
    entries = iter(reader)
    next(entries)
    assert 1 <= len(reading_threads()) <= 3  # started for the first chunk's baskets, at most 3
    assert sum(1 for _ in entries) == 2 * 10 - 1  # across the two files: one pool for the whole iteration
    assert reading_threads() == [] and set(threading.enumerate()) <= before  # none left behind
    reader[3]  # a single entry is read in the calling thread
    assert reading_threads() == []


def test_closing_an_iteration_half_way_stops_its_threads() -> None:
    reader = LArCV1Reader([sample(SMALL), sample(FULL)], "wire", threads=2)
    with closing(reader.iter_range(3)) as entries:
        assert next(entries).entry == 3
        assert reading_threads()
    assert reading_threads() == []


def test_closing_an_iteration_from_the_thread_that_ran_it_stops_its_threads() -> None:
    # as a client's read-ahead thread does: it iterates, then closes the iteration it leaves
    reader = LArCV1Reader(sample(SMALL), "wire", threads=2)
    seen: list[int] = []

    def consume() -> None:
        with closing(iter(reader)) as entries:
            seen.extend(entry.entry for entry, _ in zip(entries, range(4)))

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join()
    assert seen == [0, 1, 2, 3] and reading_threads() == []


def test_a_read_error_stops_the_threads(tmp_path: Path) -> None:
    data = bytearray(sample(SMALL).read_bytes())
    data[1_500_000:1_501_000] = bytes(1000)  # inside the compressed pixels of a middle entry
    path = tmp_path / "corrupted.root"
    path.write_bytes(bytes(data))
    with pytest.raises(LArCV1Error, match="cannot read entries"):
        list(LArCV1Reader(path, "wire", threads=3))  # the error comes from a decompression thread
    assert reading_threads() == []


def test_images_of_a_single_producer_entry() -> None:
    entry = LArCV1Reader(sample(SMALL), producers=["wire"])[0]
    assert entry.images is entry.products["wire"]


# ------------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.root"
    with pytest.raises(LArCV1Error, match="no such file") as info:
        LArCV1Reader(path, "wire")
    assert str(path) in str(info.value)
    with pytest.raises(LArCV1Error, match="no such file"):
        list_image2d_producers(path)


def test_not_a_root_file(tmp_path: Path) -> None:
    path = tmp_path / "text.root"
    path.write_text("this is not a ROOT file\n" * 100)
    with pytest.raises(LArCV1Error, match=r"not a ROOT file$") as info:
        LArCV1Reader(path, "wire")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    data = sample(SMALL).read_bytes()
    path = tmp_path / "truncated.root"
    kept = int(len(data) * keep)
    path.write_bytes(data[:kept])
    said = "not a ROOT file (empty)" if not kept else f"truncated: {kept:,} of {len(data):,} bytes"
    with pytest.raises(LArCV1Error, match=re.escape(said)) as info:
        LArCV1Reader(path, "wire")
    assert str(path) in str(info.value)


def test_corrupted_pixel_data_is_an_error_when_read(tmp_path: Path) -> None:
    data = bytearray(sample(SMALL).read_bytes())
    data[1_500_000:1_501_000] = bytes(1000)  # inside the compressed pixels of a middle entry
    path = tmp_path / "corrupted.root"
    path.write_bytes(bytes(data))
    reader = LArCV1Reader(path, "wire")  # the trees' headers are intact
    with pytest.raises(LArCV1Error, match="cannot read entries") as info:
        list(reader)
    assert str(path) in str(info.value)


def test_no_such_producer_lists_the_producers_present(tmp_path: Path) -> None:
    path = tmp_path / "copy.root"
    shutil.copyfile(sample(SMALL), path)
    with pytest.raises(LArCV1Error, match=r"no Image2D producer 'segment' in the file \(it has: wire\)") as info:
        LArCV1Reader(path, "segment")
    assert str(path) in str(info.value) and "producer 'segment'" in str(info.value)
    with pytest.raises(LArCV1Error, match="'segment'"):
        LArCV1Reader(path, producers=["wire", "segment"])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"producer": "wire", "producers": ["wire"]}, {"producers": []}, {"producers": ["wire", "wire"]}],
)
def test_producer_arguments_must_name_distinct_producers(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LArCV1Error, match="producer"):
        LArCV1Reader(sample(SMALL), **kwargs)


def test_no_file_is_an_error() -> None:
    with pytest.raises(LArCV1Error, match="no input file"):
        LArCV1Reader([], "wire")


# ------------------------------------------------------------------------------------------ Image2D


def test_image2d_converts_pixels_to_c_contiguous_float32() -> None:
    meta = ImageMeta(width=3.0, height=12.0, rows=2, cols=3, origin_x=0.0, origin_y=12.0, plane=1)
    image = Image2D(meta, np.arange(6, dtype=np.int64).reshape(2, 3))
    assert image.pixels.dtype == np.float32 and image.pixels.flags.c_contiguous
    np.testing.assert_array_equal(image.pixels, [[0, 1, 2], [3, 4, 5]])
    fortran = np.asfortranarray(np.ones((2, 3), dtype=np.float64))
    assert Image2D(meta, fortran).pixels.flags.c_contiguous


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((3, 2)), r"shape \(3, 2\) but the meta says"),
        (np.zeros(6), r"shape \(6,\)"),
        (np.zeros((1, 2, 3)), r"shape \(1, 2, 3\)"),
        (np.array([["a", "b", "c"], ["d", "e", "f"]]), "real numbers"),
        (np.zeros((2, 3), dtype=complex), "real numbers"),
    ],
)
def test_image2d_rejects_pixels_that_do_not_fit_the_meta(pixels: Any, message: str) -> None:
    meta = ImageMeta(width=3.0, height=12.0, rows=2, cols=3, origin_x=0.0, origin_y=12.0)
    with pytest.raises(ValueError, match=message):
        Image2D(meta, pixels)
