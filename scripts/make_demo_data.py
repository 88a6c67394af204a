"""Regenerate data/demo/ssnet_demo.root: the first entries of the shared 512x512 sample, re-written by
ssnet-server's own LArCV1 writer (producer "wire").  Needs uproot and ROOT's Python bindings.

    PYTHONPATH=common/src:data/src python3 scripts/make_demo_data.py [--source FILE] [--output FILE] [--entries N]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ssnet_data.larcv1 import LArCV1Reader, LArCV1Writer

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "larcv1" / "ssnet_sample_512.root"
OUTPUT = REPO / "data" / "demo" / "ssnet_demo.root"
PRODUCER = "wire"

logger = logging.getLogger("make_demo_data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE, help=f"LArCV1 file to copy from (default: {SOURCE})")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"file to write (default: {OUTPUT})")
    parser.add_argument("--entries", type=int, default=4, help="number of leading entries to copy (default: 4)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    reader = LArCV1Reader(args.source, PRODUCER)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with LArCV1Writer(args.output, PRODUCER) as writer:
        for entry in reader.iter_range(0, args.entries):
            writer.copy_entry(entry)
    logger.info("wrote %d entries of %s to %s", writer.entries_written, args.source, args.output)


if __name__ == "__main__":
    main()
