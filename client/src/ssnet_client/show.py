"""Pictures of LArCV1 events: one panel per wire plane, optionally with SSNet's scores drawn over the charge.

``ssnet-larcv1 show`` (see :mod:`ssnet_client.larcv1_cli`) reads one entry with :func:`read_event`, finds the same
run/subrun/event in an SSNet output file with :func:`read_overlay`, and renders them with :func:`render_png`.

matplotlib is imported only inside :func:`render_png` and :func:`require_matplotlib`, and drawing goes through
an explicit Agg canvas: importing this module needs no matplotlib, and no global matplotlib state (pyplot, the
default backend) is touched.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ssnet_common.errors import LArCV1Error, SSNetError
from ssnet_data.imagemeta import INVALID_PLANE, ImageMeta
from ssnet_data.larcv1 import Image2D, LArCV1Entry, LArCV1Reader

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

MATPLOTLIB_HINT = "ssnet-larcv1 show needs matplotlib: pip install 'ssnet-client[show]'"
WIRE_CMAP = "viridis"
SHOWER_COLOUR = "#ff3010"  # red: no colour of viridis is near it
TRACK_COLOUR = "#10e0ff"  # cyan: opposite the shower's red, and bright against viridis's dark background
MAX_ALPHA = 0.9  # the alpha of a score of 1: the charge under it stays faintly visible
PANEL_SIZE = (5.0, 4.6)  # inches per plane, colour bar included
TITLE_HEIGHT = 0.5  # inches above the panels for the title (two lines with an overlay)
DEFAULT_DPI = 100.0
VMAX_PERCENTILE = 99.5  # top of the colour scale: this percentile of the plane's positive pixels


class MissingMatplotlib(SSNetError):
    """matplotlib is not installed (the ``show`` extra of ssnet-client)."""


@dataclass(frozen=True)
class Event:
    """What to draw: one entry of one producer's images, in plane order."""

    path: Path
    producer: str
    entry: LArCV1Entry
    images: tuple[Image2D, ...]


@dataclass(frozen=True)
class Overlay:
    """SSNet scores for the event: per class, the images of one entry of the output file."""

    path: Path
    entry: int
    shower_producer: str
    track_producer: str
    shower: tuple[Image2D, ...]
    track: tuple[Image2D, ...]


def require_matplotlib() -> None:
    """Raise :class:`MissingMatplotlib` (with :data:`MATPLOTLIB_HINT`) if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingMatplotlib(MATPLOTLIB_HINT) from exc


def plane_order(images: Sequence[Image2D]) -> tuple[Image2D, ...]:
    """The images sorted by plane (stable: images of the same plane keep their stored order)."""
    return tuple(sorted(images, key=lambda image: image.meta.plane))


def read_event(path: str | Path, entry: int, producer: str) -> Event:
    """Entry ``entry`` of ``producer`` in ``path``.  :class:`LArCV1Error` for a missing or unreadable file, a
    producer that is not in it (the message lists those that are), an entry out of range or one with no images."""
    file = Path(path)
    reader = LArCV1Reader(file, producer)
    if not 0 <= entry < len(reader):
        raise LArCV1Error(f"entry {entry}: the file has {len(reader)} entries", path=str(file))
    read = reader[entry]
    if not read.images:
        raise LArCV1Error("the entry holds no images", path=str(file), producer=producer, entry=entry)
    logger.debug("%s entry %d: run %d subrun %d event %d, %d images of %s", file, entry, read.run, read.subrun,
                 read.event, len(read.images), producer)
    return Event(file, producer, read, plane_order(read.images))


def read_overlay(
    path: str | Path, event: LArCV1Entry, shower_producer: str = "ssnet_shower", track_producer: str = "ssnet_track",
) -> Overlay:
    """The entry of the SSNet output ``path`` with ``event``'s run, subrun and event (the entry with the same
    index is tried first, then the whole file).  :class:`LArCV1Error` if the file lacks either producer or has
    no entry of that event."""
    file = Path(path)
    reader = LArCV1Reader(file, producers=[shower_producer, track_producer])
    wanted = (event.run, event.subrun, event.event)

    def same_event(candidate: LArCV1Entry) -> bool:
        return (candidate.run, candidate.subrun, candidate.event) == wanted

    found = reader[event.entry] if event.entry < len(reader) else None
    if found is None or not same_event(found):
        found = next((candidate for candidate in reader if same_event(candidate)), None)
    if found is None:
        raise LArCV1Error(
            f"no entry of run {event.run} subrun {event.subrun} event {event.event} among its {len(reader)} entries",
            path=str(file),
        )
    logger.debug("overlay: %s entry %d has run %d subrun %d event %d", file, found.entry, *wanted)
    return Overlay(file, found.entry, shower_producer, track_producer,
                   plane_order(found.products[shower_producer]), plane_order(found.products[track_producer]))


def figure_size(panels: int) -> tuple[float, float]:
    """The figure's (width, height) in inches for ``panels`` planes side by side; in pixels, times the dpi."""
    return (PANEL_SIZE[0] * max(panels, 1), PANEL_SIZE[1] + TITLE_HEIGHT)


def extent(meta: ImageMeta) -> tuple[float, float, float, float]:
    """``imshow``'s (left, right, bottom, top) for an image whose row 0 is drawn at the top: wires from min_x
    to max_x left to right, ticks from max_y (row 0, the latest tick) at the top down to min_y."""
    return (meta.min_x, meta.max_x, meta.min_y, meta.max_y)


def scores_rgba(scores: npt.NDArray[np.float32], colour: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    """An RGBA image of one colour whose alpha is the score (clipped to [0, 1]) times :data:`MAX_ALPHA`."""
    rgba = np.empty((*scores.shape, 4), dtype=np.float32)
    rgba[..., :3] = colour
    rgba[..., 3] = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0) * MAX_ALPHA
    return rgba


def colour_scale_top(pixels: npt.NDArray[np.float32]) -> float:
    """The ADC at the top of a plane's colour scale: a high percentile of its positive pixels (a few hot
    pixels would otherwise leave everything else dark), at least 1."""
    positive = pixels[pixels > 0]
    return max(float(np.percentile(positive, VMAX_PERCENTILE)), 1.0) if positive.size else 1.0


def _plane_label(image: Image2D, index: int) -> str:
    plane = image.meta.plane
    return f"image {index}" if plane == INVALID_PLANE else f"plane {plane}"


def _matching(images: Sequence[Image2D], image: Image2D, index: int) -> Image2D | None:
    """The score image that belongs to ``image`` (the ``index``-th wire image in plane order): the one of the
    same plane when exactly one has it, else the one at the same position."""
    same_plane = [candidate for candidate in images if candidate.meta.plane == image.meta.plane]
    if len(same_plane) == 1 and image.meta.plane != INVALID_PLANE:
        return same_plane[0]
    return images[index] if index < len(images) else None


def title(event: Event, overlay: Overlay | None) -> str:
    entry = event.entry
    text = (f"{event.path.name}  ·  entry {entry.entry}  ·  run {entry.run} subrun {entry.subrun} event {entry.event}"
            f"  ·  producer {event.producer}")
    if overlay is not None:
        text += (f"\nSSNet scores from {overlay.path.name} (entry {overlay.entry}):"
                 f" {overlay.shower_producer}, {overlay.track_producer}")
    return text


def render_png(event: Event, overlay: Overlay | None = None, dpi: float = DEFAULT_DPI) -> bytes:
    """The picture as PNG bytes: :func:`figure_size` times ``dpi`` pixels.  :class:`MissingMatplotlib` without
    matplotlib."""
    buffer = io.BytesIO()
    draw(event, overlay, dpi).savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def draw(event: Event, overlay: Overlay | None = None, dpi: float = DEFAULT_DPI) -> Figure:
    """The picture as a matplotlib figure on an Agg canvas (one axes per plane, in plane order, then their colour
    bars).  :class:`MissingMatplotlib` without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import to_rgb
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise MissingMatplotlib(MATPLOTLIB_HINT) from exc

    figure = Figure(figsize=figure_size(len(event.images)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # Agg, chosen here: the canvas attaches itself to the figure
    figure.suptitle(title(event, overlay), fontsize="medium")
    axes = figure.subplots(1, len(event.images), squeeze=False)[0]
    colours = {"shower": to_rgb(SHOWER_COLOUR), "track": to_rgb(TRACK_COLOUR)}
    for index, (ax, image) in enumerate(zip(axes, event.images)):
        meta = image.meta
        shown = ax.imshow(image.pixels, cmap=WIRE_CMAP, vmin=0.0, vmax=colour_scale_top(image.pixels),
                          extent=extent(meta), origin="upper", aspect="auto", interpolation="antialiased")
        figure.colorbar(shown, ax=ax, label="ADC", extend="both", fraction=0.05, pad=0.02)
        ax.set_title(_plane_label(image, index))
        ax.set_xlabel("wire")
        ax.set_ylabel("tick")
        if overlay is None:
            continue
        for name, images in (("shower", overlay.shower), ("track", overlay.track)):
            scores = _matching(images, image, index)
            if scores is None:
                logger.warning("no %s scores for %s", name, _plane_label(image, index))
                continue
            ax.imshow(scores_rgba(scores.pixels, colours[name]), extent=extent(scores.meta), origin="upper",
                      aspect="auto", interpolation="antialiased")
        ax.set_xlim(meta.min_x, meta.max_x)  # score images of another geometry must not move the axes
        ax.set_ylim(meta.min_y, meta.max_y)
    if overlay is not None:
        handles: list[Any] = [
            Patch(facecolor=SHOWER_COLOUR, label=f"shower ({overlay.shower_producer})"),
            Patch(facecolor=TRACK_COLOUR, label=f"track ({overlay.track_producer})"),
        ]
        # Below the middle panel, outside every image (the constrained layout makes room for it).
        axes[len(axes) // 2].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2,
                                    fontsize="small", title="SSNet score (opacity ∝ score)",
                                    title_fontsize="small", frameon=False)
    return figure
