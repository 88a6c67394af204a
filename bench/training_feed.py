"""Training-feed benchmark: batches from data workers through the broker vs. reading the file in-process.

1. in-process, shuffled: the loop reads the entries of each batch of the same seeded schedule itself
   (``LArCV1Reader[i]``) and builds the batch (what a loop without data workers does);
2. in-process, file order: chunked sequential reading (``LArCV1Reader.iter_range``), the fastest in-process read;
   and, for reference, in-process from memory (entries read before the clock starts: building batches only);
3. feed, no step: ``BatchClient`` with ``--workers`` data workers (``ssnet-worker --kind batch --batch-preload``:
   each worker reads the file into its cache before it registers) consumed as fast as it comes (the ceiling);
4. feed, ``--step`` (50 ms) simulated training step: the fraction of the loop's time spent waiting for data
   (the target: at most 5 % with 3 workers), with the in-process equivalent ``read / (read + step)``.

The broker and workers run as subprocesses on ``ipc://`` endpoints.  Prints batches/s, MB/s and the ratios.
Usage: ``python bench/training_feed.py [--input FILE] [--workers 3] [--batch-size 4] [--steps 200] [--step 0.05]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from ssnet_client.batch import BatchClient, epoch_batches
from ssnet_client.local import services, wait_for_workers
from ssnet_data.batchmsg import Preprocess
from ssnet_data.larcv1 import LArCV1Reader
from ssnet_worker.batch import assemble_batch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "larcv1" / "ssnet_sample_512.root"
TARGET = 0.05


def in_process(path: str, batch_size: int, batches: int, seed: int, order: str) -> tuple[float, float]:
    """(batches/s, MB/s) of reading and building ``batches`` batches in this process.

    ``order``: ``shuffled`` (the schedule's entries, ``reader[i]`` each), ``file`` (sequential chunked reading)
    or ``memory`` (the schedule's entries from a dict filled before the clock starts: building batches only).
    """
    reader = LArCV1Reader(path, "wire")
    memory = {entry.entry: entry for entry in reader} if order == "memory" else {}
    get = memory.__getitem__ if memory else reader.__getitem__
    produced = nbytes = 0
    began = time.perf_counter()
    epoch = 0
    while produced < batches:
        if order != "file":
            for entries in epoch_batches(len(reader), epoch, batch_size, seed=seed):
                batch = assemble_batch([get(int(i)) for i in entries], ["wire"], Preprocess())
                nbytes += batch.products[0].array.nbytes
                produced += 1
                if produced == batches:
                    break
        else:
            pending = []
            for entry in reader.iter_range(0, len(reader)):
                pending.append(entry)
                if len(pending) == batch_size:
                    nbytes += assemble_batch(pending, ["wire"], Preprocess()).products[0].array.nbytes
                    produced, pending = produced + 1, []
                    if produced == batches:
                        break
        epoch += 1
    seconds = time.perf_counter() - began
    return produced / seconds, nbytes / 1e6 / seconds


def feed(frontend: str, batch_size: int, steps: int, step: float, prefetch: int, seed: int) -> dict[str, float]:
    """Run ``steps`` training steps of ``step`` seconds on batches from the feed; what the loop measured."""
    with BatchClient(frontend, batch_size=batch_size, seed=seed, epochs=None, prefetch=prefetch,
                     drop_last=True) as client:
        began = time.monotonic()
        waits = []
        done = 0
        for batch in client:
            waits.append(batch.wait)
            assert batch["wire"].shape[0] == batch_size
            if step:
                time.sleep(step)
            done += 1
            if done == steps:
                break
        seconds = time.monotonic() - began
        stats = client.stats
        first, waited = waits[0], sum(waits)
        return {
            "seconds": seconds, "batches_per_s": done / seconds, "mb_per_s": stats.nbytes / 1e6 / seconds,
            "wait": waited / seconds, "steady_wait": (waited - first) / (seconds - first), "first": first,
            "mb_per_batch": stats.nbytes / 1e6 / done, "p50": float(np.percentile(waits, 50)),
            "p99": float(np.percentile(waits, 99)), "max": max(waits[1:], default=0.0),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(SAMPLE), help="LArCV1 file with producer wire")
    parser.add_argument("--workers", type=int, default=3, help="data workers")
    parser.add_argument("--batch-size", type=int, default=4, help="entries per batch")
    parser.add_argument("--steps", type=int, default=200, help="training steps in the timed runs")
    parser.add_argument("--step", type=float, default=0.05, help="simulated training step (s)")
    parser.add_argument("--prefetch", type=int, default=4, help="batches requested ahead")
    parser.add_argument("--seed", type=int, default=1, help="schedule seed")
    args = parser.parse_args()

    baseline_batches = max(10, args.steps // 8)
    shuffled = in_process(args.input, args.batch_size, baseline_batches, args.seed, "shuffled")
    ordered = in_process(args.input, args.batch_size, baseline_batches, args.seed, "file")
    memory = in_process(args.input, args.batch_size, baseline_batches * 4, args.seed, "memory")
    worker = ["--kind", "batch", "--batch-input", args.input, "--batch-preload", "--log-level", "WARNING"]
    with services([worker] * args.workers, heartbeat=1.0, log_level="WARNING") as (frontend, procs):
        wait_for_workers(frontend, "batch", procs)
        fastest = feed(frontend, args.batch_size, args.steps, 0.0, args.prefetch, args.seed)
        trained = feed(frontend, args.batch_size, args.steps, args.step, args.prefetch, args.seed + 1)
    in_process_wait = (1 / shuffled[0]) / (1 / shuffled[0] + args.step)

    mb = trained["mb_per_batch"]
    print(f"batches of {args.batch_size} entries x 3 planes 512x512 float32 = {mb:.1f} MB; file "
          f"{Path(args.input).name}; {args.workers} data workers; {os.cpu_count()} cores")
    print(f"{'path':52s} {'batches/s':>10s} {'MB/s':>8s}")
    rows = [
        ("in-process, shuffled (LArCV1Reader[i] per entry)", *shuffled),
        ("in-process, file order (LArCV1Reader.iter_range)", *ordered),
        ("in-process, from memory (batch building only)", *memory),
        (f"feed, {args.workers} workers, no training step", fastest["batches_per_s"], fastest["mb_per_s"]),
        (f"feed, {args.workers} workers, {args.step * 1e3:.0f} ms step", trained["batches_per_s"],
         trained["mb_per_s"]),
    ]
    for name, rate, mbps in rows:
        print(f"{name:52s} {rate:10.1f} {mbps:8.1f}")
    print(f"ratio feed/in-process shuffled   throughput {fastest['batches_per_s'] / shuffled[0]:.2f}x")
    print(f"ratio feed/in-process file order throughput {fastest['batches_per_s'] / ordered[0]:.2f}x")
    print(f"{args.step * 1e3:.0f} ms step, {args.steps} steps: the loop waited {100 * trained['wait']:.2f} % of "
          f"{trained['seconds']:.2f} s ({100 * trained['steady_wait']:.2f} % after the first batch, which took "
          f"{trained['first'] * 1e3:.1f} ms); in-process shuffled reading it would wait {100 * in_process_wait:.0f} %")
    print(f"wait per batch: p50 {trained['p50'] * 1e3:.2f} ms, p99 {trained['p99'] * 1e3:.2f} ms, "
          f"max after the first {trained['max'] * 1e3:.2f} ms")
    ok = trained["wait"] <= TARGET
    print(f"{'PASS' if ok else 'FAIL'}: waited {100 * trained['wait']:.2f} % {'<=' if ok else '>'} "
          f"{100 * TARGET:.0f} % target")


if __name__ == "__main__":
    main()
