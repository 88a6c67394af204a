"""Worker churn: a LArCV1 job while a worker is SIGKILLed (and a new one started) every period; events lost?

    python3 bench/storm.py [--runs 10] [--events 500] [--period 1.0] [--workers 4] [--delay 0.05]

Each run starts a broker and ``--workers`` dummy workers on this machine (``ssnet_client.local``), runs
``ssnet-client`` over the shared 512 sample given as often as ``--events`` needs, and kills a random live worker
every ``--period`` seconds while the client runs, starting a new one each time.  Per run it prints the job's
exit status, the kills, the events lost (input events missing from the output) and duplicated (output events
beyond their input count), whether the output is identical to the input (same events, same order), and the
time; then the totals.  The baseline is the same job with no
kills, measured first in the same session.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from ssnet_client.local import local_stack, wait_for_workers
from ssnet_data.larcv1 import LArCV1Reader

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("SSNET_SHARED") or REPO.parent / "shared") / "data" / "larcv1" / "ssnet_sample_512.root"


def one_run(args: argparse.Namespace, inputs: list[str], expected: list[tuple[int, int, int]], kill: bool,
            seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    worker = ["--kind", "dummy", "--dummy-delay", str(args.delay)]
    with local_stack(heartbeat=1.0, log_level="ERROR") as stack, tempfile.TemporaryDirectory() as tmp:
        stack.start_broker()
        for _ in range(args.workers):
            stack.add_worker(worker)
        wait_for_workers(stack.frontend, "dummy", stack.workers)
        output = Path(tmp) / "storm.root"
        began = time.monotonic()
        client = subprocess.Popen(
            [sys.executable, "-m", "ssnet_client.cli", "--broker", stack.frontend, "--service", "dummy",
             "--input", *inputs, "--output", str(output), "--window", "8", "--timeout", "10",
             "--progress", "none", "--log-level", "ERROR"],
        )
        kills = 0
        while client.poll() is None:
            try:
                client.wait(args.period)
            except subprocess.TimeoutExpired:
                live = [w for w in stack.workers if w.poll() is None]
                if kill and live:
                    victim = rng.choice(live)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    kills += 1
                    stack.add_worker(worker)
        seconds = time.monotonic() - began
        got = ([(e.run, e.subrun, e.event) for e in LArCV1Reader([str(output)], "dummy")]
               if output.is_file() else [])
    want, have = collections.Counter(expected), collections.Counter(got)
    lost = sum((want - have).values())
    duplicated = sum((have - want).values())
    return {"status": client.returncode, "kills": kills, "lost": lost, "duplicated": duplicated,
            "identical": got == expected, "seconds": seconds}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs with kills (default 10)")
    parser.add_argument("--events", type=int, default=500, help="events per run (default 500)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between kills (default 1)")
    parser.add_argument("--workers", type=int, default=4, help="dummy workers alive at a time (default 4)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each request takes (default 0.05)")
    args = parser.parse_args(argv)
    per_file = [(e.run, e.subrun, e.event) for e in LArCV1Reader([str(SAMPLE)], "wire")]
    copies = -(-args.events // len(per_file))
    inputs, expected = [str(SAMPLE)] * copies, per_file * copies
    baseline = one_run(args, inputs, expected, kill=False, seed=0)
    print(f"{len(expected)} events, {args.workers} dummy workers ({args.delay:g} s per request), a kill every "
          f"{args.period:g} s; baseline without kills: {baseline['seconds']:.1f} s, status {baseline['status']}")
    print(f"{'run':>4s} {'status':>6s} {'kills':>6s} {'lost':>5s} {'dup':>5s} {'identical':>9s} {'seconds':>8s} "
          f"{'vs baseline':>11s}")
    totals = collections.Counter()
    for run in range(1, args.runs + 1):
        result = one_run(args, inputs, expected, kill=True, seed=run)
        totals.update({key: int(result[key]) for key in ("kills", "lost", "duplicated", "identical")})
        totals["ok"] += result["status"] == 0
        print(f"{run:4d} {result['status']:6d} {result['kills']:6d} {result['lost']:5d} {result['duplicated']:5d} "
              f"{result['identical']!s:>9s} {result['seconds']:8.1f} {result['seconds'] / baseline['seconds']:10.2f}x")
    print(f"total: {totals['ok']} of {args.runs} runs succeeded, {totals['identical']} identical to the input; "
          f"{totals['kills']} kills, {totals['lost']} events lost, {totals['duplicated']} duplicated")
    return 0 if totals["identical"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
