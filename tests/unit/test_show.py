"""``ssnet-larcv1 show``: pictures of an entry's planes, SSNet scores over them, and every error in the user's words."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssnet_client.larcv1_cli import main
from ssnet_client.show import (
    MATPLOTLIB_HINT,
    MAX_ALPHA,
    Event,
    draw,
    extent,
    figure_size,
    read_event,
    read_overlay,
)
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import Image2D, LArCV1Entry, LArCV1Reader, LArCV1Writer

pytest.importorskip("uproot", reason="reading LArCV1 files needs uproot")
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="ssnet-larcv1 show needs matplotlib"
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo" / "ssnet_demo.root"
DPI = 40  # small pictures: the tests look at sizes and differences, not details


@pytest.fixture(scope="module")
def demo_entries() -> list[LArCV1Entry]:
    return list(LArCV1Reader(DEMO, "wire"))


def scores_for(image: Image2D) -> tuple[Image2D, Image2D]:
    """SSNet-like shower and track scores in [0, 1] for a wire image: nonzero where the charge is above 10,
    shower growing with the charge, track the rest."""
    charged = image.pixels > 10
    shower = np.where(charged, np.clip(image.pixels / 200, 0.05, 1.0), 0).astype(np.float32)
    track = np.where(charged, 1 - shower, 0).astype(np.float32)
    return Image2D(image.meta, shower), Image2D(image.meta, track)


def write_overlay(path: Path, entries: list[LArCV1Entry]) -> Path:
    with LArCV1Writer(path, ["ssnet_shower", "ssnet_track"]) as writer:
        for entry in entries:
            pairs = [scores_for(image) for image in entry.images]
            writer.write_entry(entry.run, entry.subrun, entry.event, {
                "ssnet_shower": [shower for shower, _ in pairs], "ssnet_track": [track for _, track in pairs],
            })
    return path


@pytest.fixture(scope="module")
def overlay_file(tmp_path_factory: pytest.TempPathFactory, demo_entries: list[LArCV1Entry]) -> Path:
    """Scores for demo entries 1 and 0, in that order: the event of demo entry 0 is overlay entry 1."""
    if importlib.util.find_spec("ROOT") is None:
        pytest.skip("writing LArCV1 files needs ROOT's Python bindings")
    return write_overlay(tmp_path_factory.mktemp("overlay") / "ssnet.root", [demo_entries[1], demo_entries[0]])


def read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(imread(path))


def show(*args: str) -> int:
    return main(["show", *args])


@needs_matplotlib
def test_picture_is_the_figure_size_times_the_dpi(tmp_path: Path) -> None:
    out = tmp_path / "event.png"
    assert show(str(DEMO), "-o", str(out), "--dpi", str(DPI)) == 0
    width, height = figure_size(3)
    assert read_png(out).shape[:2] == (round(height * DPI), round(width * DPI))
    assert [p.name for p in tmp_path.iterdir()] == ["event.png"]  # no temporary file left


@needs_matplotlib
def test_panels_follow_plane_order_and_the_meta(demo_entries: list[LArCV1Entry]) -> None:
    figure = draw(read_event(DEMO, 0, "wire"))
    axes = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["plane 0", "plane 1", "plane 2"]
    # "Plane 0 (rows,cols) = (512,512) ... Left Top (392,7488) ... Right Bottom (904,4416)": wires left to
    # right, the latest tick (row 0) at the top.
    assert axes[0].get_xlim() == (392.0, 904.0)
    assert axes[0].get_ylim() == (4416.0, 7488.0)
    assert (axes[0].get_xlabel(), axes[0].get_ylabel()) == ("wire", "tick")
    assert sum(ax.get_ylabel() == "ADC" for ax in figure.axes) == 3  # one colour bar per plane
    title = figure.get_suptitle()
    for part in ("ssnet_demo.root", "entry 0", "run 5007 subrun 101 event 3001", "producer wire"):
        assert part in title
    np.testing.assert_array_equal(axes[2].images[0].get_array(), demo_entries[0].images[2].pixels)


def test_extent_puts_row_zero_at_the_latest_tick() -> None:
    meta = ImageMeta.parse("Plane 2 (rows,cols) = (512,512) ... Left Top (168,5616) ... Right Bottom (680,2544)\n")
    assert extent(meta) == (168.0, 680.0, 2544.0, 5616.0)  # (left, right, bottom, top)


@needs_matplotlib
def test_row_zero_is_drawn_at_the_latest_tick_at_the_top() -> None:
    """An image bright in its first rows only (the latest ticks): the picture is bright where the axes say the
    latest ticks are, and those are at the top."""
    meta = ImageMeta(width=64, height=6 * 64, rows=64, cols=64, origin_x=100, origin_y=3000, plane=0)
    pixels = np.zeros((64, 64), dtype=np.float32)
    pixels[:32] = 100.0  # ticks 2808 to 3000
    entry = LArCV1Entry(entry=0, run=1, subrun=2, event=3, products={"wire": (Image2D(meta, pixels),)})
    figure = draw(Event(Path("synthetic.root"), "wire", entry, entry.images), dpi=DPI)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba(), dtype=np.float64)  # type: ignore[attr-defined]
    panel = figure.axes[0]

    def brightness(wire: float, tick: float) -> tuple[float, float]:
        """The picture's brightness at (wire, tick), and the height of that point (display y, from the bottom)."""
        x, y = panel.transData.transform((wire, tick))
        return float(rgba[rgba.shape[0] - round(y), round(x), :3].mean()), float(y)

    late, late_y = brightness(132, 2950)
    early, early_y = brightness(132, 2700)
    assert late > early + 100  # viridis: yellow at the top of the scale, dark purple at 0
    assert late_y > early_y


@needs_matplotlib
def test_overlay_is_found_by_run_subrun_event_and_drawn(tmp_path: Path, overlay_file: Path,
                                                         demo_entries: list[LArCV1Entry]) -> None:
    event = read_event(DEMO, 0, "wire")
    overlay = read_overlay(overlay_file, event.entry)
    assert overlay.entry == 1  # not the entry with the same index: the one with the same event
    want_shower, want_track = scores_for(demo_entries[0].images[0])
    np.testing.assert_array_equal(overlay.shower[0].pixels, want_shower.pixels)
    np.testing.assert_array_equal(overlay.track[0].pixels, want_track.pixels)

    figure = draw(event, overlay)
    panel = figure.axes[0]
    assert len(panel.images) == 3  # the charge, then shower and track scores as RGBA images
    shower_rgba = np.asarray(panel.images[1].get_array())
    assert shower_rgba.shape == (512, 512, 4)
    np.testing.assert_allclose(shower_rgba[..., 3], want_shower.pixels * MAX_ALPHA, rtol=1e-6)
    assert not np.array_equal(shower_rgba[..., :3].max(axis=(0, 1)),
                              np.asarray(panel.images[2].get_array())[..., :3].max(axis=(0, 1)))
    legends = [legend for legend in (ax.get_legend() for ax in figure.axes) if legend is not None]
    assert len(legends) == 1
    assert [text.get_text() for text in legends[0].get_texts()] == ["shower (ssnet_shower)", "track (ssnet_track)"]
    assert "ssnet.root (entry 1)" in figure.get_suptitle()

    plain, scored = tmp_path / "plain.png", tmp_path / "scored.png"
    assert show(str(DEMO), "-o", str(plain), "--dpi", str(DPI)) == 0
    assert show(str(DEMO), "-o", str(scored), "--dpi", str(DPI), "--overlay", str(overlay_file)) == 0
    plain_pixels, scored_pixels = read_png(plain), read_png(scored)
    assert plain_pixels.shape == scored_pixels.shape
    assert np.count_nonzero(np.any(plain_pixels != scored_pixels, axis=-1)) > 1000


@needs_matplotlib
def test_existing_output_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "event.png"
    out.write_bytes(b"keep me")
    assert show(str(DEMO), "-o", str(out), "--dpi", str(DPI)) == 2
    assert capsys.readouterr().err == f"ssnet-larcv1: error: output {str(out)!r} exists: give --force to replace it\n"
    assert out.read_bytes() == b"keep me"
    assert show(str(DEMO), "-o", str(out), "--dpi", str(DPI), "--force") == 0
    assert read_png(out).shape[0] == round(figure_size(3)[1] * DPI)
    assert [p.name for p in tmp_path.iterdir()] == ["event.png"]


@pytest.fixture(scope="module")
def other_event_overlay(tmp_path_factory: pytest.TempPathFactory, demo_entries: list[LArCV1Entry]) -> Path:
    """Scores for demo entries 1 to 3 only: none for the event of entry 0."""
    if importlib.util.find_spec("ROOT") is None:
        pytest.skip("writing LArCV1 files needs ROOT's Python bindings")
    return write_overlay(tmp_path_factory.mktemp("other") / "other.root", demo_entries[1:])


@needs_matplotlib
@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("missing file", "no such file"),
        ("not ROOT", "ROOT file"),
        ("entry out of range", "entry 7: the file has 4 entries"),
        ("no such producer", "no Image2D producer 'segment' in the file (it has: wire)"),
        ("overlay without score producers", "no Image2D producer 'ssnet_shower' in the file (it has: wire)"),
        ("overlay without track producer", "no Image2D producer 'tracks' in the file"),
        ("overlay without the event", "no entry of run 5007 subrun 101 event 3001 among its 3 entries"),
        ("no such output directory", "does not exist"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(case: str, want: str, tmp_path: Path, request: pytest.FixtureRequest,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "event.png"
    text = tmp_path / "notes.root"
    text.write_text("not a ROOT file at all, just some words\n" * 10)
    args = {
        "missing file": [str(tmp_path / "missing.root")],
        "not ROOT": [str(text)],
        "entry out of range": [str(DEMO), "--entry", "7"],
        "no such producer": [str(DEMO), "--producer", "segment"],
        "overlay without score producers": [str(DEMO), "--overlay", str(DEMO)],
        "overlay without track producer": [str(DEMO), "--overlay", "OVERLAY", "--track-producer", "tracks"],
        "overlay without the event": [str(DEMO), "--overlay", "OTHER"],
        "no such output directory": [str(DEMO)],
    }[case]
    if "OVERLAY" in args:
        args[args.index("OVERLAY")] = str(request.getfixturevalue("overlay_file"))
    if "OTHER" in args:
        args[args.index("OTHER")] = str(request.getfixturevalue("other_event_overlay"))
    if case == "no such output directory":
        out = tmp_path / "nowhere" / "event.png"
    assert show(*args, "-o", str(out), "--dpi", str(DPI)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ssnet-larcv1: error: ")
    assert want in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.root"]


@pytest.mark.parametrize("option", [["--entry", "-1"], ["--entry", "first"], ["--dpi", "0"], []])
def test_bad_options_are_usage_errors(option: list[str], tmp_path: Path) -> None:
    output = [] if not option else ["-o", str(tmp_path / "event.png")]  # no option at all: -o is missing
    with pytest.raises(SystemExit) as exc:
        show(str(DEMO), *output, *option)
    assert exc.value.code == 2
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_show_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = tmp_path / "event.png"
    assert show(str(DEMO), "-o", str(out)) == 1
    assert capsys.readouterr().err == f"ssnet-larcv1: error: {MATPLOTLIB_HINT}\n"
    assert MATPLOTLIB_HINT == "ssnet-larcv1 show needs matplotlib: pip install 'ssnet-client[show]'"
    assert not out.exists()


def test_dump_does_not_import_matplotlib() -> None:
    code = (
        "import sys\n"
        "from ssnet_client.larcv1_cli import main\n"
        f"status = main(['dump', {str(DEMO)!r}])\n"
        "sys.stderr.write(f'status={status} matplotlib={\"matplotlib\" in sys.modules}\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("common/src", "data/src", "client/src"))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "entry 3: run" in result.stdout
    assert result.stderr.endswith("status=0 matplotlib=False\n")


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        show("--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("FILE", "--entry N", "--producer P", "--overlay SSNET_OUTPUT", "--shower-producer P",
                   "--track-producer P", "-o PNG, --output PNG", "--dpi DPI", "--force", "--verbose"):
        assert option in out
