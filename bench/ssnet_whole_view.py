"""A whole MicroBooNE plane (1008x3456) through the SSNet worker's tiling, against one 512x512 tile in the same run.

    python3 bench/ssnet_whole_view.py [--engine auto] [--threads 2] [--rounds 2] [--tile-overlap 0]

What is timed is the worker's own request path (``SSNetWorker.handle``: decode, preprocessing, tiles batched by
``--max-batch``, stitching, float16 reply), on SSNet with the shared random plane-0 weights, without sockets.
Each measurement runs in a fresh process of its own, so that its peak memory (VmHWM) is its own: one 512x512
plane (one tile: the baseline) and one 1008x3456 plane (the largest MicroBooNE view, plane 2).  The two take
turns ``--rounds`` times so that drift of this shared machine hits both alike; figures are medians.  Reported:
seconds per plane, tiles, the whole view's time over (tiles x one tile's time), and peak RSS of both processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fidelity"))
from layer_nets import sparse_adc_image  # noqa: E402  (one home for the test image)

from ssnet_engines import vm_hwm_mib  # noqa: E402  (bench/, this script's directory, is on sys.path)

VIEWS = {"tile": (512, 512), "view": (1008, 3456)}


def child(args: argparse.Namespace) -> int:
    """Load the worker's plane-2 net in this (fresh) process, time one plane through handle(); one JSON line."""
    from ssnet_data.imagemeta import ImageMeta
    from ssnet_data.larcv1msg import EventId, ImageProduct, encode_images
    from ssnet_worker.base import WorkerConfig
    from ssnet_worker.ssnet import ModelSet, SSNetWorker, Tiling

    rows, cols = VIEWS[args.child]
    models = ModelSet(args.prototxt, {2: args.weights})
    worker = SSNetWorker(WorkerConfig("ssnet_plane2"), models, engine=args.engine, threads=args.threads,
                         tiling=Tiling(overlap=args.tile_overlap))
    worker.setup()
    meta = ImageMeta(width=cols, height=rows * 6, rows=rows, cols=cols, origin_x=0, origin_y=2400 + rows * 6,
                     plane=2)
    pixels = sparse_adc_image(np.random.RandomState(args.seed), rows, cols)[np.newaxis]
    message = encode_images([ImageProduct("wire", ((meta, EventId(1, 0, 1)),), pixels)])
    net_input = worker.engines[2].input_shape[2:]
    tiles = len(worker.tiling.grid((rows, cols), (net_input[0], net_input[1])))
    began = time.perf_counter()
    worker.handle(message)
    seconds = time.perf_counter() - began
    sys.stdout.write(json.dumps({"seconds": seconds, "tiles": tiles, "peak_rss_mib": vm_hwm_mib(),
                                 "describe": worker.engines[2].describe()}) + "\n")
    return 0


def measure(which: str, args: argparse.Namespace) -> Dict[str, Any]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("common/src", "data/src", "worker/src"))}
    command = [sys.executable, __file__, "--child", which, "--engine", args.engine, "--threads", str(args.threads),
               "--seed", str(args.seed), "--tile-overlap", str(args.tile_overlap), "--prototxt", str(args.prototxt),
               "--weights", str(args.weights)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{which}: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    report: Dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("SSNET_SHARED") or REPO.parent / "shared").resolve()
    parser.add_argument("--engine", default="auto", help="engine of the worker (default: auto)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="engine threads (%(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="turns each measurement takes (default: 2)")
    parser.add_argument("--tile-overlap", type=int, default=0, help="as ssnet-worker --ssnet-tile-overlap")
    parser.add_argument("--seed", type=int, default=3, help="seed of the test image")
    parser.add_argument("--prototxt", type=Path, default=shared / "models" / "ssnet" / "dllee_ssnet2018.prototxt")
    parser.add_argument("--weights", type=Path, default=shared / "models" / "ssnet" / "ssnet_random_plane0.caffemodel")
    parser.add_argument("--child", choices=sorted(VIEWS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in VIEWS}
    for _ in range(args.rounds):
        for name in VIEWS:
            runs[name].append(measure(name, args))
    tile, view = ({key: statistics.median(r[key] for r in runs[name]) for key in ("seconds", "peak_rss_mib")}
                  for name in ("tile", "view"))
    tiles = runs["view"][0]["tiles"]
    print(f"SSNet, {runs['view'][0]['describe']}; {args.rounds} round(s), medians; overlap {args.tile_overlap}")
    print(f"{'plane':14s} {'tiles':>5s} {'seconds':>8s} {'peak RSS MiB':>13s}")
    print(f"{'512x512':14s} {1:5d} {tile['seconds']:8.2f} {tile['peak_rss_mib']:13.0f}")
    print(f"{'1008x3456':14s} {tiles:5d} {view['seconds']:8.2f} {view['peak_rss_mib']:13.0f}")
    print(f"ratio whole view / ({tiles} x one tile): {view['seconds'] / (tiles * tile['seconds']):.2f}x; "
          f"peak RSS whole view / one tile: {view['peak_rss_mib'] / tile['peak_rss_mib']:.2f}x "
          f"(an untiled 1008x3456 forward would hold about {1008 * 3456 / 512**2:.1f}x one tile's activations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
