"""Transport benchmark: one sparse 3-plane 512x512 float32 event echoed, several ways, in one run.

The event is what a wire plane looks like (3 % of the pixels nonzero, in short track-like runs:
:func:`ssnet_client.perf.synthetic_image`), 3.1 MB raw.

1. through the broker: ``Client`` → ``ssnet-broker`` → ``EchoWorker`` and back (the production path), with the
   arrays raw and in the default wire codec (:data:`ssnet_data.ndarray.DEFAULT_CODEC`, encoded and decoded by the
   client: what the codec costs is in the figures), in the clear and with CURVE (Curve25519 authentication and
   encryption on both hops: what encryption costs);
2. direct: a DEALER sending the same codec frames to a ROUTER echo server (no broker: the floor);
3. pickle: the list of arrays pickled over REQ/REP (what a naive design would do).

Servers run as subprocesses on ``ipc://`` endpoints; every path sends the same event the same number of
times, sequentially (latency) and with several requests in flight (throughput).  The paths run in ``--rounds``
interleaved rounds (each round in a rotated order), so that a burst of other load on a shared machine hits every
path alike; a ratio is the median over rounds of that round's ratio.  Prints round-trip times, events/s and the
ratios.  Usage: ``python bench/transport.py [--events N] [--window W] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import pickle  # the baseline being measured against; never used by the project itself
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import zmq

from ssnet_client import Client, ClientConfig
from ssnet_client.local import local_stack, services, stop, wait_for_workers
from ssnet_client.perf import synthetic_image
from ssnet_common.curve import CurveKeys, create_keys, peer_keys
from ssnet_data.ndarray import DEFAULT_CODEC, decode_arrays, encode_arrays

EVENT = [synthetic_image(np.random.default_rng(seed), 512, 512, 0.03) for seed in range(3)]
EVENT_BYTES = sum(a.nbytes for a in EVENT)


def serve(kind: str, endpoint: str) -> None:
    """Echo server for the baselines (run in a subprocess)."""
    context = zmq.Context.instance()
    if kind == "router":
        sock = context.socket(zmq.ROUTER)
        sock.bind(endpoint)
        while True:
            frames = sock.recv_multipart(copy=False)
            sock.send_multipart(frames, copy=False)
    else:
        sock = context.socket(zmq.REP)
        sock.bind(endpoint)
        while True:
            arrays = pickle.loads(sock.recv())  # noqa: S301 - baseline only, trusted local peer
            sock.send(pickle.dumps(arrays, protocol=pickle.HIGHEST_PROTOCOL))


def timed(events: int, one: Callable[[], None]) -> list[float]:
    one()  # warm up connections and caches
    times = []
    for _ in range(events):
        start = time.perf_counter()
        one()
        times.append(time.perf_counter() - start)
    return times


def through_broker(frontend: str, events: int, window: int, curve: Optional[CurveKeys] = None,
                   codec: Optional[str] = None) -> tuple[list[float], float]:
    """Each event encoded (``codec``), sent, echoed and its reply decoded: the codec's cost on the client is in."""
    with Client(frontend, ClientConfig(timeout=60, retries=0, window=window, curve=curve)) as client:

        def one() -> None:
            arrays = decode_arrays(client.request("echo", encode_arrays(EVENT, codec)))
            assert arrays[2].shape == (512, 512)

        latencies = timed(events, one)
        start = time.perf_counter()
        for reply in client.imap(("echo", encode_arrays(EVENT, codec)) for _ in range(events)):
            decode_arrays(reply.payload)
        return latencies, events / (time.perf_counter() - start)


def direct(endpoint: str, events: int, window: int) -> tuple[list[float], float]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    payload = encode_arrays(EVENT)

    def one() -> None:
        sock.send_multipart(payload, copy=False)
        assert decode_arrays(sock.recv_multipart(copy=False))[2].shape == (512, 512)

    latencies = timed(events, one)
    start = time.perf_counter()
    sent = received = 0
    while received < events:
        while sent < events and sent - received < window:
            sock.send_multipart(payload, copy=False)
            sent += 1
        decode_arrays(sock.recv_multipart(copy=False))
        received += 1
    rate = events / (time.perf_counter() - start)
    sock.close()
    return latencies, rate


def pickled(endpoint: str, events: int) -> tuple[list[float], float]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.connect(endpoint)

    def one() -> None:
        sock.send(pickle.dumps(EVENT, protocol=pickle.HIGHEST_PROTOCOL))
        assert pickle.loads(sock.recv())[2].shape == (512, 512)  # noqa: S301 - baseline only

    latencies = timed(events, one)
    sock.close()
    return latencies, 1 / statistics.mean(latencies)  # REQ/REP cannot pipeline: throughput = 1 / latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="events per path")
    parser.add_argument("--window", type=int, default=4, help="requests in flight for the throughput runs")
    parser.add_argument("--rounds", type=int, default=5,
                        help="runs of every path, interleaved; figures are medians over rounds (default 5)")
    args = parser.parse_args()
    codec_name = DEFAULT_CODEC or "raw"
    root = Path(tempfile.mkdtemp(prefix="ssnet-bench-"))
    router, rep = f"ipc://{root}/router", f"ipc://{root}/rep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    baselines = [subprocess.Popen([sys.executable, __file__, "--serve", kind, where], env=env)
                 for kind, where in (("router", router), ("rep", rep))]
    try:
        keys = root / "keys"
        for name in ("broker", "client", "worker"):
            create_keys(keys / "private", name)
        for side, name in (("clients", "client"), ("workers", "worker")):
            (keys / side).mkdir(mode=0o755)
            shutil.copy(keys / "private" / f"{name}.key", keys / side)
        broker_key = keys / "private" / "broker.key"
        client = peer_keys(keys / "private" / "client.key_secret", broker_key)
        with services([["--kind", "echo"]], heartbeat=2.5, log_level="WARNING") as (frontend, workers), \
                local_stack(heartbeat=2.5, log_level="WARNING") as secure:
            wait_for_workers(frontend, "echo", workers)
            secure.start_broker("--curve-secret", str(keys / "private" / "broker.key_secret"),
                                "--curve-clients", str(keys / "clients"), "--curve-workers", str(keys / "workers"))
            secure.add_worker(["--kind", "echo", "--curve-secret", str(keys / "private" / "worker.key_secret"),
                               "--curve-server", str(broker_key)])
            wait_for_workers(secure.frontend, "echo", secure.workers, client)
            paths: dict[str, Callable[[], tuple[list[float], float]]] = {
                "broker, raw": lambda: through_broker(frontend, args.events, args.window),
                f"broker, {codec_name}": lambda: through_broker(frontend, args.events, args.window,
                                                                codec=DEFAULT_CODEC),
                f"broker with CURVE (both hops), {codec_name}": lambda: through_broker(
                    secure.frontend, args.events, args.window, client, codec=DEFAULT_CODEC),
                "direct DEALER <-> ROUTER": lambda: direct(router, args.events, args.window),
                "pickle over REQ/REP": lambda: pickled(rep, args.events),
            }
            latencies: dict[str, list[float]] = {name: [] for name in paths}
            rates: dict[str, list[float]] = {name: [] for name in paths}
            names = list(paths)
            for round_number in range(args.rounds):  # interleaved, each round in a rotated order
                for name in names[round_number % len(names):] + names[:round_number % len(names)]:
                    times, rate = paths[name]()
                    latencies[name] += times
                    rates[name].append(rate)
    finally:
        stop(baselines)
        shutil.rmtree(root, ignore_errors=True)
    encoded = sum(len(memoryview(f)) for f in encode_arrays(EVENT, DEFAULT_CODEC))
    print(f"event: 3 x 512x512 float32, 3 % nonzero = {EVENT_BYTES / 1e6:.1f} MB raw, {encoded / 1e6:.2f} MB "
          f"{codec_name}; {args.events} events per path; throughput with {args.window} in flight; "
          f"{os.cpu_count()} cores; MB/s counts raw bytes")
    print(f"{'path':42s} {'median rtt ms':>14s} {'p90 ms':>8s} {'events/s':>9s} {'MB/s':>8s}  (medians of "
          f"{args.rounds} rounds)")
    for name in names:
        rate = statistics.median(rates[name])
        print(f"{name:42s} {statistics.median(latencies[name]) * 1e3:14.2f} "
              f"{np.percentile(latencies[name], 90) * 1e3:8.2f} {rate:9.1f} {rate * EVENT_BYTES / 1e6:8.0f}")
    raw, coded, curve, direct_, pickle_ = names

    def ratio(a: str, b: str) -> float:
        """The median over rounds of a round's throughput ratio: both paths met the same load in that round."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    def show(name: str, a: str, b: str) -> None:
        print(f"ratio {name:38s} latency {statistics.median(latencies[a]) / statistics.median(latencies[b]):.2f}x, "
              f"throughput {ratio(a, b):.2f}x (rounds {min(x / y for x, y in zip(rates[a], rates[b])):.2f}"
              f"-{max(x / y for x, y in zip(rates[a], rates[b])):.2f}x)")

    show(f"CURVE/clear ({codec_name})", curve, coded)
    show("broker raw/direct raw", raw, direct_)
    show(f"broker {codec_name}/broker raw", coded, raw)
    show(f"broker {codec_name}/pickle", coded, pickle_)
    print(f"throughput ratio, broker with the default codec vs pickle over REQ/REP: {ratio(coded, pickle_):.2f}x")
    print(f"throughput ratio, broker with the default codec vs direct raw: {ratio(coded, direct_):.2f}x")

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
