"""A training loop fed by data workers: how much of its time does it wait for data?

Each step takes a batch from :class:`ssnet_client.batch.BatchClient` and "trains" for a fixed simulated time
(``--step``, a sleep standing in for the GPU), and the loop prints the fraction of its time it spent waiting for
data.  By default it starts its own broker and ``--workers`` data workers (``ssnet-worker --kind batch``) on
this machine; ``--broker`` uses a running system instead::

    .venv/bin/python examples/train_loop.py                                # 3 local workers, the sample file
    .venv/bin/python examples/train_loop.py --workers 1 --step 0.01        # a feed that cannot keep up
    .venv/bin/python examples/train_loop.py --crop 256 256 --planes 2 --threshold 10 --clip 500
    .venv/bin/python examples/train_loop.py --broker tcp://broker:5559 --service batch --epochs 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from ssnet_client.batch import BatchClient
from ssnet_client.local import services, wait_for_workers
from ssnet_data.batchmsg import Preprocess

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "larcv1" / "ssnet_sample_512.root"
DEMO = REPO / "data" / "demo" / "ssnet_demo.root"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=None, help="broker frontend of a running system (default: start one)")
    parser.add_argument("--workers", type=int, default=3, help="local data workers to start (without --broker)")
    parser.add_argument("--input", nargs="+", default=None,
                        help="LArCV1 file(s) for the local workers (default: the shared 512 sample, else the demo)")
    parser.add_argument("--service", default="batch", help="data service name")
    parser.add_argument("--producers", nargs="+", default=["wire"], help="Image2D producers")
    parser.add_argument("--batch-size", type=int, default=4, help="entries per batch")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to run (default: as many as --steps needs)")
    parser.add_argument("--steps", type=int, default=100, help="training steps to run (without --epochs)")
    parser.add_argument("--step", type=float, default=0.05, help="simulated training step, seconds")
    parser.add_argument("--prefetch", type=int, default=4, help="batches requested ahead of the loop")
    parser.add_argument("--seed", type=int, default=0, help="schedule seed")
    parser.add_argument("--no-shuffle", action="store_true", help="visit entries in file order")
    parser.add_argument("--planes", type=int, nargs="+", default=None, help="keep these planes, e.g. 2 or 0 1 2")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("ROWS", "COLS"),
                        help="crop ROWS COLS around the activity")
    parser.add_argument("--threshold", type=float, default=None, help="ADC threshold of the input producer")
    parser.add_argument("--clip", type=float, default=None, help="ADC clip of the input producer")
    parser.add_argument("--torch", action="store_true", help="hand the step torch tensors (needs torch)")
    return parser


def train(args: argparse.Namespace, frontend: str) -> None:
    preprocess = Preprocess(planes=None if args.planes is None else tuple(args.planes),
                            crop=None if args.crop is None else (args.crop[0], args.crop[1]),
                            threshold=args.threshold, clip=args.clip)
    producers = args.producers
    feed = BatchClient(frontend, service=args.service, producers=producers, batch_size=args.batch_size,
                       shuffle=not args.no_shuffle, seed=args.seed, epochs=args.epochs, prefetch=args.prefetch,
                       preprocess=preprocess)
    with feed:
        began = time.monotonic()
        waited = 0.0
        steps = 0
        for batch in feed:
            waited += batch.wait
            inputs = batch.torch() if args.torch else batch.arrays
            _ = inputs[producers[0]]  # a real loop: model(inputs[...].to(device)), loss, backward, optimiser step
            time.sleep(args.step)
            steps += 1
            if args.epochs is None and steps >= args.steps:
                break
        seconds = time.monotonic() - began
        first = feed.stats.first_wait
        print(f"{steps} steps of {args.step * 1e3:.0f} ms, batches of {args.batch_size} "
              f"({feed.stats.nbytes / max(feed.stats.done, 1) / 1e6:.1f} MB) from {feed.shards} shard(s), "
              f"{feed.info.entries} entries: {seconds:.2f} s")
        print(f"waited for data {waited:.3f} s = {100 * waited / seconds:.1f} % of the loop "
              f"({100 * (waited - first) / max(seconds - first, 1e-9):.1f} % after the first batch, which took "
              f"{first:.3f} s)")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.broker:
        train(args, args.broker)
        return 0
    inputs = args.input or [str(SHARED_SAMPLE if SHARED_SAMPLE.is_file() else DEMO)]
    worker = ["--kind", "batch", "--service", args.service, "--batch-input", *inputs,
              "--batch-producers", *args.producers]
    with services([worker] * args.workers, heartbeat=1.0, log_level="WARNING") as (frontend, procs):
        wait_for_workers(frontend, args.service, procs)
        train(args, frontend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
