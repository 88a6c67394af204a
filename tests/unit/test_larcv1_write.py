"""LArCV1Writer: files laid out as the genuine library writes them, read back identical."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssnet_common.errors import LArCV1Error
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import Image2D, LArCV1Reader, LArCV1Writer, list_image2d_producers

pytest.importorskip("uproot", reason="reading LArCV1 files needs uproot")
needs_root = pytest.mark.skipif(
    importlib.util.find_spec("ROOT") is None, reason="writing LArCV1 files needs ROOT's Python bindings"
)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "data" / "larcv1"
DEMO = REPO / "data" / "demo" / "ssnet_demo.root"
GENUINE_CHECKSUMS = {
    "larcv::EventImage2D": 0x65DE9DE4,
    "larcv::EventBase": 0xCB50957F,
    "larcv::Image2D": 0xDE7356F7,
    "larcv::ImageMeta": 0xB9C3C44B,
    "larcv::Point2D": 0x286E66E3,
}


def sample(name: str) -> Path:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"shared LArCV1 sample {path} not found (CI keeps ../shared beside the checkout)")
    return path


def meta(rows: int, cols: int, plane: int = 0, origin_x: float = 0.0) -> ImageMeta:
    return ImageMeta(width=cols, height=6.0 * rows, rows=rows, cols=cols, origin_x=origin_x,
                     origin_y=2400.0 + 6 * rows, plane=plane)


def random_image(rng: np.random.Generator, rows: int, cols: int, plane: int) -> Image2D:
    return Image2D(meta(rows, cols, plane), rng.random((rows, cols), dtype=np.float32))


def assert_same_images(got: tuple[Image2D, ...], want: list[Image2D] | tuple[Image2D, ...]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.meta == b.meta
        np.testing.assert_array_equal(a.pixels, b.pixels)


def larcv_streamers(path: Path) -> dict[str, list[tuple[int, int, list[tuple[str, str, int]]]]]:
    """Per larcv class: (version, checksum, [(member, type, size)...]) of each streamer info in the file."""
    import uproot

    with uproot.open(path) as file:
        return {
            name: [
                (version, info.member("fCheckSum"),
                 [(e.member("fName"), e.member("fTypeName"), e.member("fSize")) for e in info.member("fElements")])
                for version, info in versions.items()
            ]
            for name, versions in file.file.streamers.items()
            if name.startswith("larcv::")
        }


# ----------------------------------------------------------------------------------------- round trips


@needs_root
@pytest.mark.parametrize("name", ["ssnet_sample_512.root", "ssnet_sample_fullevent.root"])
def test_copy_of_a_genuine_file_reads_back_identical(tmp_path: Path, name: str) -> None:
    source = LArCV1Reader(sample(name), "wire")
    out = tmp_path / "copy.root"
    with LArCV1Writer(out, "wire") as writer:
        for entry in source:
            writer.copy_entry(entry)
    assert writer.entries_written == len(source)
    copy = LArCV1Reader(out, "wire")
    assert len(copy) == len(source)
    for a, b in zip(copy, source):
        assert (a.entry, a.run, a.subrun, a.event) == (b.entry, b.run, b.subrun, b.event)
        assert_same_images(a.images, b.images)


@needs_root
def test_written_file_has_the_genuine_layout(tmp_path: Path) -> None:
    import uproot

    genuine = sample("ssnet_sample_512.root")
    out = tmp_path / "layout.root"
    with LArCV1Writer(out, "wire") as writer:
        writer.copy_entry(LArCV1Reader(genuine, "wire")[0])

    written = larcv_streamers(out)
    assert {name: [(v, c) for v, c, _ in infos] for name, infos in written.items()} == {
        name: [(1, checksum)] for name, checksum in GENUINE_CHECKSUMS.items()
    }
    assert written == larcv_streamers(genuine)  # same versions, checksums, members, types and sizes

    with uproot.open(out) as file:
        assert file.keys() == ["image2d_wire_tree;1"]
        assert file.file.compression.level == 1 and type(file.file.compression).__name__ == "ZLIB"
        tree = file["image2d_wire_tree"]
        assert tree.title == "wire tree"
        top = tree["image2d_wire_branch"]
        assert top.member("fSplitLevel") == 99 and top.typename == "larcv::EventImage2D"
        with uproot.open(genuine) as reference:
            genuine_tree = reference["image2d_wire_tree"]
            assert tree.title == genuine_tree.title
            assert sorted(tree.keys()) == sorted(genuine_tree.keys())
        for branch in tree.values(recursive=True):
            assert branch.member("fBasketSize") == 32000
            assert branch.member("fCompress") == 101


@needs_root
def test_root_reads_the_written_file(tmp_path: Path) -> None:
    import ROOT

    rng = np.random.default_rng(7)
    images = [random_image(rng, 4, 5, 2), random_image(rng, 3, 7, 0)]
    out = tmp_path / "for_root.root"
    with LArCV1Writer(out, "wire") as writer:
        writer.write_entry(5007, 101, 2**63 + 5, {"wire": images})
    file = ROOT.TFile.Open(str(out))
    tree = file.Get("image2d_wire_tree")
    product = ROOT.larcv.EventImage2D()
    tree.SetBranchAddress("image2d_wire_branch", product)
    assert tree.GetEntry(0) > 0
    assert (str(product._producer), product._run, product._subrun, product._event) == ("wire", 5007, 101, 2**63 + 5)
    assert product._image_v.size() == 2
    for index, (stored, image) in enumerate(zip(product._image_v, images)):
        assert stored._id == index
        assert stored._meta._image_id == 65535
        assert (stored._meta._row_count, stored._meta._col_count, stored._meta._plane) == (
            image.meta.rows, image.meta.cols, image.meta.plane,
        )
        assert (stored._meta._origin.x, stored._meta._origin.y, stored._meta._width, stored._meta._height) == (
            image.meta.origin_x, image.meta.origin_y, image.meta.width, image.meta.height,
        )
        np.testing.assert_array_equal(np.array(stored._img, dtype=np.float32), image.pixels.ravel(order="F"))
    file.Close()


@needs_root
def test_several_producers_zero_images_any_plane_order_non_square(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    wire = [random_image(rng, 6, 11, 2), random_image(rng, 9, 4, 0), random_image(rng, 1, 1, 1)]
    segment = [(meta(6, 11, 2), rng.integers(0, 3, (6, 11)))]  # (meta, pixels), integer pixels
    out = tmp_path / "multi.root"
    with LArCV1Writer(out, ["wire", "segment"]) as writer:
        writer.write_entry(1, 2, 3, {"wire": wire, "segment": segment})
        writer.write_entry(1, 2, 4, {})  # no images at all
        writer.write_entry(1, 2, 5, {"segment": segment})  # "wire" left out
        writer.write_entry(1, 2, 6, {"wire": [], "segment": []})
    assert list_image2d_producers(out) == ["segment", "wire"]

    entries = list(LArCV1Reader(out, producers=["wire", "segment"]))
    assert [(e.run, e.subrun, e.event) for e in entries] == [(1, 2, 3), (1, 2, 4), (1, 2, 5), (1, 2, 6)]
    assert [{p: len(images) for p, images in e.products.items()} for e in entries] == [
        {"wire": 3, "segment": 1}, {"wire": 0, "segment": 0}, {"wire": 0, "segment": 1},
        {"wire": 0, "segment": 0},
    ]
    assert_same_images(entries[0].products["wire"], wire)
    assert [image.meta.plane for image in entries[0].products["wire"]] == [2, 0, 1]
    assert_same_images(entries[2].products["segment"], [Image2D(*segment[0])])
    with pytest.raises(LArCV1Error, match="use products"):
        entries[0].images  # noqa: B018 - the property raises

    only_segment = LArCV1Reader(out, "segment")
    assert [len(e.images) for e in only_segment] == [1, 0, 1, 0]


@needs_root
def test_images_without_pixels(tmp_path: Path) -> None:
    images = [Image2D(meta(0, 4, 1), np.zeros((0, 4))), Image2D(meta(1, 1, 2), [[7.0]])]
    out = tmp_path / "tiny.root"
    with LArCV1Writer(out, "wire") as writer:
        writer.write_entry(1, 2, 3, {"wire": images})
    assert_same_images(LArCV1Reader(out, "wire")[0].images, images)


def stored_bits(path: Path, producer: str = "wire") -> list[list[tuple[ImageMeta, bytes]]]:
    """Per entry, per image: the meta and the bytes of the pixels as stored (column by column, float32)."""
    return [
        [(image.meta, np.asfortranarray(image.pixels).tobytes(order="F")) for image in entry.products[producer]]
        for entry in LArCV1Reader(path, producer)
    ]


@needs_root
def test_any_layout_and_dtype_of_pixels_is_written_as_the_c_contiguous_float32_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows, cols = 37, 53  # not multiples of any block size
    # Exactly representable in float16, so every dtype below holds the same numbers; with the values whose
    # bits matter: signed zeros, infinities, NaN, float16 subnormals.
    half = rng.standard_normal((rows, cols)).astype(np.float16)
    half.flat[:6] = [-0.0, np.inf, -np.inf, np.nan, np.float16(2.0**-24), -np.float16(2.0**-20)]
    reference = half.astype(np.float32)
    assert reference.flags.c_contiguous
    big = np.zeros((3 * rows, 2 * cols), np.float32)
    big[1::3, ::-2] = reference
    transposed = np.ascontiguousarray(reference.T)
    layouts = {
        "c float32": reference,
        "fortran float32": np.asfortranarray(reference),
        "transposed view": transposed.T,
        "strided, reversed columns": big[1::3, ::-2],
        "reversed rows": np.ascontiguousarray(reference[::-1])[::-1],
        "c float64": reference.astype(np.float64),
        "fortran float64": np.asfortranarray(reference, dtype=np.float64),
        "c float16": half,
        "strided float16": np.repeat(half, 2, axis=1)[:, ::2],
    }
    for name, pixels in layouts.items():
        assert np.array_equal(pixels, reference, equal_nan=True), name
    assert not layouts["strided, reversed columns"].flags.c_contiguous
    assert not layouts["strided, reversed columns"].flags.f_contiguous

    paths = {}
    for name, pixels in layouts.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_').replace(',', '')}.root"
        with LArCV1Writer(paths[name], "wire") as writer:
            writer.write_entry(1, 2, 3, {"wire": [(meta(rows, cols, 1), pixels), (meta(cols, rows, 2), pixels.T)]})
            writer.write_entry(1, 2, 4, {"wire": [Image2D(meta(rows, cols, 0), pixels)]})
    want = stored_bits(paths["c float32"])
    assert want == [
        [(meta(rows, cols, 1), reference.tobytes(order="F")), (meta(cols, rows, 2), reference.tobytes(order="C"))],
        [(meta(rows, cols, 0), reference.tobytes(order="F"))],
    ]
    for name, path in paths.items():
        assert stored_bits(path) == want, name


@needs_root
def test_entries_of_changing_image_counts_and_sizes(tmp_path: Path) -> None:
    # The writer reuses the previous entry's images (and their pixel storage): shrinking, growing and
    # emptying them must leave nothing of the previous entry behind.
    rng = np.random.default_rng(5)
    shapes = [[(5, 7), (2, 3)], [(2, 3), (4, 4), (9, 1)], [(9, 1)], [], [(3, 3), (0, 2), (6, 6)], [(1, 1)]]
    entries = [[random_image(rng, r, c, plane) for plane, (r, c) in enumerate(shape)] for shape in shapes]
    out = tmp_path / "changing.root"
    with LArCV1Writer(out, ["wire", "segment"]) as writer:
        for number, images in enumerate(entries):
            writer.write_entry(1, 1, number, {"wire": images, "segment": images[::-1]})
    written = list(LArCV1Reader(out, producers=["wire", "segment"]))
    assert len(written) == len(entries)
    for entry, images in zip(written, entries):
        assert_same_images(entry.products["wire"], images)
        assert_same_images(entry.products["segment"], images[::-1])


@needs_root
@pytest.mark.parametrize("ids", [(2**63 + 5, 2**64 - 2, 0), (0, 0, 0), (2**32, 2**40 + 1, 2**64 - 2)])
def test_64_bit_ids_are_exact(tmp_path: Path, ids: tuple[int, int, int]) -> None:
    out = tmp_path / "ids.root"
    with LArCV1Writer(out, "wire") as writer:
        writer.write_entry(*ids, {"wire": [Image2D(meta(2, 2), np.eye(2))]})
    (entry,) = LArCV1Reader(out, "wire")
    assert (entry.run, entry.subrun, entry.event) == ids
    assert all(type(value) is int for value in (entry.run, entry.subrun, entry.event))


@needs_root
def test_mismatched_ids_across_producers_are_an_error(tmp_path: Path) -> None:
    import ROOT

    out = tmp_path / "mismatch.root"
    with LArCV1Writer(out, ["wire", "segment"]) as writer:
        writer.write_entry(1, 2, 3, {})
        writer.write_entry(1, 2, 4, {})
    # Shift the ids of one producer's tree by rewriting it with ROOT (the writer keeps producers aligned).
    file = ROOT.TFile.Open(str(out), "UPDATE")
    tree = ROOT.TTree("image2d_segment_tree", "segment tree")
    product = ROOT.larcv.EventImage2D()
    tree.Branch("image2d_segment_branch", product)
    for event in (3, 5):
        product._run, product._subrun, product._event = 1, 2, event
        tree.Fill()
    tree.Write("", ROOT.TObject.kOverwrite)
    file.Close()

    reader = LArCV1Reader(out, producers=["wire", "segment"])
    assert reader[0].event == 3
    with pytest.raises(LArCV1Error, match=r"\(1, 2, 5\) but producer 'wire' has \(1, 2, 4\)") as info:
        reader[1]
    assert "entry 1" in str(info.value) and "producer 'segment'" in str(info.value)


@needs_root
def test_stored_pixel_count_must_match_the_meta(tmp_path: Path) -> None:
    import ROOT

    with LArCV1Writer(tmp_path / "declare.root", "wire"):
        pass  # declares the larcv classes to ROOT
    out = tmp_path / "inconsistent.root"
    file = ROOT.TFile(str(out), "RECREATE")
    tree = ROOT.TTree("image2d_wire_tree", "wire tree")
    product = ROOT.larcv.EventImage2D()
    tree.Branch("image2d_wire_branch", product)
    product._run, product._subrun, product._event = 1, 2, 3
    image = ROOT.larcv.Image2D()
    image._meta._row_count, image._meta._col_count = 2, 3
    for value in range(5):
        image._img.push_back(value)
    product._image_v.push_back(image)
    tree.Fill()
    file.Write()
    file.Close()

    reader = LArCV1Reader(out, "wire")
    with pytest.raises(LArCV1Error, match=r"image 0: the meta says 2 rows x 3 cols but 5 pixels are stored") as info:
        reader[0]
    assert all(part in str(info.value) for part in (str(out), "entry 0", "producer 'wire'"))


# ------------------------------------------------------------------------------------------- failures


@needs_root
def test_exception_in_the_with_block_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "failed.root"
    with pytest.raises(RuntimeError, match="boom"), LArCV1Writer(out, "wire") as writer:
        writer.write_entry(1, 2, 3, {"wire": [Image2D(meta(2, 2), np.ones((2, 2)))]})
        assert len(list(tmp_path.iterdir())) == 1  # the temporary file, under another name
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_failed_write_keeps_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "keep.root"
    out.write_bytes(b"previous content")
    with pytest.raises(LArCV1Error), LArCV1Writer(out, "wire") as writer:
        writer.write_entry(1, 2, 3, {"wire": [(meta(2, 2), np.ones(3))]})
    assert out.read_bytes() == b"previous content"
    assert [path.name for path in tmp_path.iterdir()] == ["keep.root"]


@needs_root
@pytest.mark.parametrize(
    ("item", "message"),
    [
        ((meta(2, 3), np.ones((3, 2))), r"image 1: pixels have shape \(3, 2\) but the meta says"),
        ((meta(2, 3), np.ones(6)), r"image 1: pixels have shape \(6,\)"),
        ((meta(2, 3), np.ones((1, 2, 3))), r"image 1: pixels have shape \(1, 2, 3\)"),
        ((meta(2, 3), [["a", "b", "c"], ["d", "e", "f"]]), "image 1: pixels must be real numbers"),
        ((meta(2, 3), [[1, 2, 3], [4, 5]]), "image 1: "),
        (("not a meta", np.ones((2, 3))), "image 1: meta must be an ImageMeta"),
        ((meta(2, 3),), "image 1: "),
    ],
)
def test_invalid_images_are_rejected_and_nothing_of_the_entry_is_written(
    tmp_path: Path, item: Any, message: str
) -> None:
    out = tmp_path / "checked.root"
    good = Image2D(meta(2, 3), np.ones((2, 3)))
    with LArCV1Writer(out, ["wire", "segment"]) as writer:
        writer.write_entry(1, 2, 3, {"segment": [good]})
        with pytest.raises(LArCV1Error, match=message) as info:
            writer.write_entry(1, 2, 4, {"segment": [good], "wire": [good, item]})
        assert all(part in str(info.value) for part in (str(out), "entry 1", "producer 'wire'"))
        writer.write_entry(1, 2, 5, {"wire": [good]})
    entries = list(LArCV1Reader(out, producers=["wire", "segment"]))
    assert [(e.event, len(e.products["wire"]), len(e.products["segment"])) for e in entries] == [
        (3, 0, 1), (5, 1, 0),
    ]


@needs_root
@pytest.mark.parametrize("ids", [(-1, 0, 0), (0, 2**64 - 1, 0), (0, 0, 2**64), (1.0, 0, 0), (True, 0, 0)])
def test_invalid_ids_are_rejected(tmp_path: Path, ids: tuple[Any, Any, Any]) -> None:
    out = tmp_path / "ids.root"
    with LArCV1Writer(out, "wire") as writer:
        with pytest.raises(LArCV1Error, match=r"must be an integer in \[0, 2\*\*64 - 1\)") as info:
            writer.write_entry(*ids, {})
        assert str(out) in str(info.value) and "entry 0" in str(info.value)
    assert len(LArCV1Reader(out, "wire")) == 0


@needs_root
def test_unknown_producer_and_use_outside_the_with_block(tmp_path: Path) -> None:
    out = tmp_path / "x.root"
    writer = LArCV1Writer(out, ["wire"])
    with pytest.raises(LArCV1Error, match="needs the writer open"):
        writer.write_entry(1, 2, 3, {})
    with writer, pytest.raises(LArCV1Error, match=r"producer 'segment'.*not one of the writer's producers \['wire'\]"):
        writer.write_entry(1, 2, 3, {"segment": []})


@needs_root
def test_missing_directory_or_a_directory_in_the_way(tmp_path: Path) -> None:
    with pytest.raises(LArCV1Error, match="no such directory"), LArCV1Writer(tmp_path / "no" / "x.root", "wire"):
        pass
    (tmp_path / "x.root").mkdir()
    with pytest.raises(LArCV1Error, match="cannot put the written file in place"), LArCV1Writer(
        tmp_path / "x.root", "wire"
    ):
        pass
    assert [path.name for path in tmp_path.iterdir()] == ["x.root"]


@pytest.mark.parametrize("producers", [[], "", ["wire", "wire"], ["bad name"], ["a/b"]])
def test_producer_names_are_checked(tmp_path: Path, producers: Any) -> None:
    with pytest.raises(LArCV1Error, match="producers must be distinct names"):
        LArCV1Writer(tmp_path / "x.root", producers)


# ------------------------------------------------------------------------------------------- demo data


def test_demo_file_equals_the_first_entries_of_the_genuine_sample() -> None:
    if not DEMO.is_file():
        pytest.skip(f"{DEMO} not found: run scripts/make_demo_data.py")
    manifest = json.loads(sample("manifest.json").read_text())
    expected = manifest["files"]["ssnet_sample_512.root"]["producers"]["wire"]["entries"][:4]
    assert list_image2d_producers(DEMO) == ["wire"]
    entries = list(LArCV1Reader(DEMO, "wire"))
    assert len(entries) == len(expected)
    for entry, want in zip(entries, expected):
        assert (entry.entry, entry.run, entry.subrun, entry.event) == (
            want["entry"], want["run"], want["subrun"], want["event"],
        )
        assert len(entry.images) == want["n_images"]
        for image, want_image in zip(entry.images, want["images"]):
            assert image.meta.dump() == want_image["meta_dump"]
            assert hashlib.sha256(image.pixels.astype("<f4").tobytes()).hexdigest() == want_image[
                "sha256_f32_rowmajor"
            ]
            nonzero = image.pixels[image.pixels != 0].astype(np.float64).tolist()
            assert len(nonzero) == want_image["nonzero"]
            assert math.fsum(nonzero) == pytest.approx(want_image["sum_f64"], rel=1e-12)
