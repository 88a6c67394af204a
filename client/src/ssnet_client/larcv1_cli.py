"""``ssnet-larcv1``: inspect LArCV1 files as ssnet-server reads them.

``ssnet-larcv1 dump FILE`` prints, per Image2D producer, every entry's run/subrun/event and, per image, its
plane, size, meta and a digest of its pixels (sha256 of the float32 little-endian (rows, cols) C-order
array, exact sum, nonzero count): the fields and meanings of the shared sample manifest, so a dump can be
compared with what the genuine LArCV1 library reports.
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

from ssnet_common.errors import LArCV1Error
from ssnet_data.larcv1 import Image2D, LArCV1Reader, branch_name, list_image2d_producers, tree_name

PROG = "ssnet-larcv1"
EXIT_ERROR = 2


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
    return {
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


def format_text(report: dict[str, Any]) -> str:
    """The report for people: one line per producer, entry and image, then the image's meta dump."""
    lines = [f"file {report['file']}: Image2D producers {', '.join(report['producers_in_file']) or '(none)'}"]
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
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect LArCV1 ROOT files as ssnet-server reads them.")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:  # our own debug messages only: uproot's and fsspec's are too many to read
        for name in ("ssnet_common", "ssnet_client"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        report = describe(args.file, args.producer)
        sys.stdout.write(json.dumps(report, indent=1) + "\n" if args.json else format_text(report))
        sys.stdout.flush()
    except LArCV1Error as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error; keep Python from failing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
