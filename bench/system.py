"""The whole system under load: client → ``ssnet-broker`` → N workers, one table row per configuration.

For each configuration (worker slots, max batch, wire codec) it starts a broker and ``--workers`` workers of the
chosen kind, engine, model and device on private ``ipc://`` endpoints, sends a pool of synthetic sparse events
(:func:`ssnet_client.perf.synthetic_events`, one event per request) with ``--clients`` requests in flight (what
that many clients sending one request at a time look like to the broker), and measures events/s, MB/s of
request + reply bytes, p50/p99 round trip and, on a CUDA device, the GPU's utilisation as the worker's metrics
report it.  Before measuring, every pool request is answered once and the digest of its reply arrays kept: the
last line says whether every configuration gave byte-identical outputs, and the line before it the throughput
ratio of the first configuration with more than one slot against the first with one.

Usage::

    python bench/system.py                                  # tiny model, onnx on the CPU, slots 1 vs 4
    python bench/system.py --config 1,1,raw --config 4,4,raw --config 4,4,sparse --clients 4 --requests 60
    python bench/system.py --device cuda:0 --engine torch --model-dir models/ssnet --shape 3 512 512
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prometheus_client.parser import text_string_to_metric_families

from ssnet_client import Client, ClientConfig, Reply
from ssnet_client.local import local_stack, wait_for_workers
from ssnet_client.perf import ErrorLog, PerfRequest, Row, build_requests, measure_level, synthetic_events
from ssnet_data.larcv1msg import decode_images
from ssnet_data.ndarray import COMPRESSIONS, DEFAULT_CODEC

REPO = Path(__file__).resolve().parents[1]
GPU_UTIL = "ssnet_worker_gpu_utilization_ratio"


@dataclass(frozen=True)
class Setup:
    slots: int
    max_batch: int
    codec: Optional[str]

    @classmethod
    def parse(cls, text: str) -> Setup:
        try:
            slots, batch, codec = text.split(",")
            name = None if codec in ("raw", "none") else codec
            if name not in COMPRESSIONS:
                raise ValueError(f"codec {codec!r} (choose from raw, {', '.join(c for c in COMPRESSIONS if c)})")
            return cls(int(slots), int(batch), name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--config SLOTS,MAX_BATCH,CODEC, e.g. 4,4,raw: {exc}") from None

    def __str__(self) -> str:
        return f"slots {self.slots}, max batch {self.max_batch}, codec {self.codec or 'raw'}"


def digest(reply: Reply) -> str:
    sha = hashlib.sha256()
    for product in decode_images(reply.payload):
        sha.update(product.name.encode())
        sha.update(product.array.tobytes())
    return sha.hexdigest()


def run_setup(args: argparse.Namespace, setup: Setup, pool: list[PerfRequest]) -> tuple[Row, list[str], str]:
    worker = ["--kind", args.kind, "--slots", str(setup.slots), "--batch-wait-ms", str(args.batch_wait_ms)]
    if args.kind == "ssnet":
        worker += ["--ssnet-model-dir", args.model_dir, "--ssnet-engine", args.engine, "--ssnet-device", args.device,
                   "--ssnet-max-batch", str(setup.max_batch), "--ssnet-precision", args.precision]
    ports = [_free_port() for _ in range(args.workers)]
    with local_stack(heartbeat=2.5, log_level="WARNING") as stack:
        stack.start_broker()
        procs = [stack.add_worker([*worker, "--metrics-port", str(port)]) for port in ports]
        wait_for_workers(stack.frontend, args.kind, procs)
        with Client(stack.frontend, ClientConfig(timeout=300, retries=0)) as client:
            digests = [digest(reply) for reply in client.imap(((args.kind, r.frames) for r in pool),
                                                                window=args.clients)]
            row = measure_level(client, args.kind, pool, args.clients, warmup=args.clients * 2,
                                requests=args.requests, duration=None, errors=ErrorLog())
        gpu = "-"
        if args.device.startswith("cuda"):
            values = [v for port in ports for v in gpu_utilisation(port)]
            gpu = f"{100 * max(values):.0f} %" if values else "?"
    return row, digests, gpu


def gpu_utilisation(port: int) -> list[float]:
    """The GPU utilisation a worker's metrics report (NVML's last sample period)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == GPU_UTIL]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="ssnet", help="worker kind (ssnet, dummy, echo)")
    parser.add_argument("--engine", default="onnx", help="SSNet engine")
    parser.add_argument("--model-dir", default=str(REPO / "models" / "tiny"), help="SSNet model directory")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--precision", default="float32", help="float32 or float16 (torch on CUDA)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--clients", type=int, default=4, help="requests in flight (clients sending one at a time)")
    parser.add_argument("--requests", type=int, default=40, help="measured requests per configuration")
    parser.add_argument("--events", type=int, default=8, help="distinct events in the pool")
    parser.add_argument("--shape", type=int, nargs=3, default=(3, 512, 512), metavar=("PLANES", "ROWS", "COLS"))
    parser.add_argument("--occupancy", type=float, default=0.03, help="fraction of nonzero pixels")
    parser.add_argument("--batch-wait-ms", type=float, default=20.0, help="the workers' --batch-wait-ms")
    parser.add_argument("--config", type=Setup.parse, action="append", dest="setups",
                        help="SLOTS,MAX_BATCH,CODEC (repeat); default: 1,4,DEFAULT and 4,4,DEFAULT")
    args = parser.parse_args()
    default = DEFAULT_CODEC or "raw"
    setups = args.setups or [Setup.parse(f"1,4,{default}"), Setup.parse(f"4,4,{default}")]
    events = synthetic_events(args.events, args.shape, args.occupancy)
    print(f"# {args.kind} on {args.device} ({args.engine}), {args.workers} worker(s), {args.clients} in flight, "
          f"{args.requests} requests of one {'x'.join(map(str, args.shape))} event, occupancy {args.occupancy}")
    print(f"{'configuration':<40} {'events/s':>9} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'GPU':>6}")
    results = []
    for setup in setups:
        pool = build_requests(events, "wire", 1, setup.codec)
        began = time.monotonic()
        row, digests, gpu = run_setup(args, setup, pool)
        results.append((setup, row, digests))
        print(f"{setup!s:<40} {row.events_per_s:9.1f} {row.mb_per_s:8.1f} {row.p50_ms:8.1f} {row.p99_ms:8.1f} "
              f"{gpu:>6}   ({time.monotonic() - began:.0f} s)", flush=True)
    one = next((r for r in results if r[0].slots == 1), None)
    many = next((r for r in results if r[0].slots > 1), None)
    if one and many:
        print(f"throughput ratio, {many[0]} vs {one[0]}: {many[1].events_per_s / one[1].events_per_s:.2f}x")
    same = all(r[2] == results[0][2] for r in results)
    print(f"outputs byte-identical across configurations: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
