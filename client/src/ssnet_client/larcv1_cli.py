"""``ssnet-larcv1``: inspect LArCV1 files as ssnet-server reads them.

``ssnet-larcv1 dump FILE`` prints, per Image2D producer, every entry's run/subrun/event and, per image, its
plane, size, meta and a digest of its pixels (sha256 of the float32 little-endian (rows, cols) C-order
array, exact sum, nonzero count): the fields and meanings of the shared sample manifest, so a dump can be
compared with what the genuine LArCV1 library reports.

``ssnet-larcv1 show FILE -o event.png`` draws one entry's wire planes side by side, optionally with the SSNet
scores of the same event (``--overlay``) over them (:mod:`ssnet_client.show`; needs matplotlib, the ``show``
extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
from typing import Any

import numpy as np

from ssnet_client.show import (
    DEFAULT_DPI,
    MissingMatplotlib,
    figure_size,
    read_event,
    read_overlay,
    render_png,
    require_matplotlib,
)
from ssnet_common.config import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ArgumentParser
from ssnet_common.errors import ConfigError, LArCV1Error
from ssnet_common.files import check_output, write_atomically
from ssnet_data.larcv1 import (
    Image2D,
    LArCV1Reader,
    branch_name,
    list_image2d_producers,
    read_annotation,
    tree_name,
)
from ssnet_data.provenance import OBJECT_NAME as PROVENANCE
from ssnet_data.provenance import describe as describe_record

PROG = "ssnet-larcv1"

logger = logging.getLogger(__name__)


def image_summary(index: int, image: Image2D) -> dict[str, Any]:
    """One image as the manifest describes it: meta fields, dump text and pixel digests."""
    meta, pixels = image.meta, image.pixels
    return {
        "index": index,
        "plane": meta.plane,
        "rows": meta.rows,
        "cols": meta.cols,
        "meta_dump": meta.dump(),
        "origin_x": meta.origin_x,
        "origin_y": meta.origin_y,
        "width": meta.width,
        "height": meta.height,
        "min_x": meta.min_x,
        "max_x": meta.max_x,
        "min_y": meta.min_y,
        "max_y": meta.max_y,
        "pixel_width": meta.pixel_width,
        "pixel_height": meta.pixel_height,
        # Zeros do not change an exact sum: summing the nonzero pixels only is much faster.
        "sum_f64": math.fsum(pixels[pixels != 0].astype(np.float64).tolist()),
        "nonzero": int(np.count_nonzero(pixels)),
        "sha256_f32_rowmajor": hashlib.sha256(np.ascontiguousarray(pixels, dtype="<f4").data).hexdigest(),
    }


def describe(path: str, producers: list[str] | None = None) -> dict[str, Any]:
    """What the reader sees in a file, for the given producers (default: every Image2D producer)."""
    present = list_image2d_producers(path)
    wanted = producers or present
    entries: dict[str, list[dict[str, Any]]] = {producer: [] for producer in wanted}
    for entry in LArCV1Reader(path, producers=wanted) if wanted else ():
        for producer, images in entry.products.items():
            entries[producer].append(
                {
                    "entry": entry.entry,
                    "run": entry.run,
                    "subrun": entry.subrun,
                    "event": entry.event,
                    "n_images": len(images),
                    "images": [image_summary(index, image) for index, image in enumerate(images)],
                }
            )
    text = read_annotation(path, PROVENANCE)
    try:
        provenance = None if text is None else json.loads(text)
    except ValueError as exc:
        raise LArCV1Error(f"{PROVENANCE} is not JSON: {exc}", path=path) from None
    report: dict[str, Any] = {
        "file": path,
        "producers_in_file": present,
        "producers": {
            producer: {
                "producer": producer,
                "tree": tree_name(producer),
                "branch": branch_name(producer),
                "n_entries": len(items),
                "entries": items,
            }
            for producer, items in entries.items()
        },
    }
    if provenance is not None:
        report["provenance"] = provenance
    return report


def format_text(report: dict[str, Any]) -> str:
    """The report for people: one line per producer, entry and image, then the image's meta dump."""
    lines = [f"file {report['file']}: Image2D producers {', '.join(report['producers_in_file']) or '(none)'}"]
    provenance = report.get("provenance")
    if provenance is not None:
        lines.append(f"provenance ({PROVENANCE}): written by {provenance.get('software')} for service "
                     f"{provenance.get('service')!r}")
        for item in provenance.get("planes", []):
            lines.append(f"  plane {item['plane']}: {item['events']} events by {describe_record(item['record'])}")
        lines += [f"  {note}" for note in provenance.get("disagreements", [])]
    for producer, item in report["producers"].items():
        lines.append(f"producer {producer} (tree {item['tree']}): {item['n_entries']} entries")
        for entry in item["entries"]:
            lines.append(
                f"  entry {entry['entry']}: run {entry['run']} subrun {entry['subrun']} event {entry['event']},"
                f" {entry['n_images']} images"
            )
            for image in entry["images"]:
                lines.append(
                    f"    image {image['index']}: plane {image['plane']}, {image['rows']} rows x {image['cols']} cols,"
                    f" sum {image['sum_f64']!r}, nonzero {image['nonzero']},"
                    f" sha256 {image['sha256_f32_rowmajor']}"
                )
                lines.append(f"      {image['meta_dump'].rstrip()}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, package="ssnet-client",
                            description="Inspect LArCV1 ROOT files as ssnet-server reads them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dump = commands.add_parser(
        "dump",
        help="print the entries and images of a file",
        description=(
            "Print every entry's run/subrun/event and, per image, its plane, rows, cols, meta dump, the sha256"
            " of its float32 little-endian pixels in (rows, cols) C order, its exact (fsum) sum and its nonzero"
            " count."
        ),
    )
    dump.add_argument("file", metavar="FILE", help="LArCV1 ROOT file")
    dump.add_argument("-v", "--verbose", action="store_true", help="log debug messages on stderr")
    dump.add_argument(
        "--producer",
        action="append",
        metavar="P",
        help="Image2D producer to dump (tree image2d_P_tree); repeat for several (default: every Image2D"
        " producer in the file)",
    )
    dump.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (the layout of the shared manifest's per-file record) instead of text",
    )
    add_show_parser(commands)
    return parser


def _entry_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an entry index (0, 1, ...), got {text!r}")
    return value


def _dpi(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 10 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected dots per inch between 10 and 1000, got {text!r}")
    return value


def add_show_parser(commands: Any) -> None:
    """The ``show`` subcommand's options (``commands``: the parser's subparsers)."""
    show = commands.add_parser(
        "show",
        help="draw one entry's wire planes to a PNG, optionally with SSNet's scores over them",
        description=(
            "Draw one entry's images of a producer, one panel per wire plane, on an ADC colour scale, with wire"
            " and tick axes from each image's meta. With --overlay, SSNet's shower and track scores for the"
            " same run/subrun/event (looked up by id, not by entry index) are drawn over the charge, each in"
            " its own colour with an opacity that grows with the score. Needs matplotlib (pip install"
            " 'ssnet-client[show]')."
        ),
    )
    show.add_argument("file", metavar="FILE", help="LArCV1 ROOT file")
    show.add_argument("-o", "--output", required=True, metavar="PNG", help="the picture to write (PNG)")
    show.add_argument("--entry", type=_entry_index, default=0, metavar="N", help="entry to draw (default: 0)")
    show.add_argument("--producer", default="wire", metavar="P", help="Image2D producer to draw (default: wire)")
    show.add_argument(
        "--overlay", metavar="SSNET_OUTPUT",
        help="SSNet output file (ssnet-client --service ssnet) whose scores for the same event to draw on top",
    )
    show.add_argument("--shower-producer", default="ssnet_shower", metavar="P",
                      help="producer of the shower scores in the overlay file (default: ssnet_shower)")
    show.add_argument("--track-producer", default="ssnet_track", metavar="P",
                      help="producer of the track scores in the overlay file (default: ssnet_track)")
    width, height = figure_size(1)
    show.add_argument("--dpi", type=_dpi, default=DEFAULT_DPI, metavar="DPI",
                      help=f"dots per inch of the PNG (default: {DEFAULT_DPI:g}); the picture is {width:g} inches"
                      f" wide per plane and {height:g} inches high")
    show.add_argument("--force", action="store_true", help="replace the output file if it exists")
    show.add_argument("-v", "--verbose", action="store_true", help="log debug messages on stderr")


def run_show(args: argparse.Namespace) -> int:
    """``ssnet-larcv1 show``: check the output path, read the event (and overlay), render, write atomically."""
    try:
        output = check_output(args.output, args.force)
    except ConfigError as exc:
        return _error(str(exc))
    try:
        require_matplotlib()
    except MissingMatplotlib as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILURE
    event = read_event(args.file, args.entry, args.producer)
    overlay = (
        read_overlay(args.overlay, event.entry, args.shower_producer, args.track_producer)
        if args.overlay else None
    )
    png = render_png(event, overlay, args.dpi)
    try:
        write_atomically(output, png)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: cannot write {output}: {exc}\n")
        return EXIT_FAILURE
    logger.debug("wrote %s: %d bytes", output, len(png))
    return EXIT_OK


def _error(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:  # our own debug messages only: uproot's and fsspec's are too many to read
        for name in ("ssnet_common", "ssnet_client"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        if args.command == "show":
            return run_show(args)
        report = describe(args.file, args.producer)
        sys.stdout.write(json.dumps(report, indent=1) + "\n" if args.json else format_text(report))
        sys.stdout.flush()
    except LArCV1Error as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error; keep Python from failing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
