"""Small-request rate of ``ssnet-broker`` against majortomo 0.2.0, a plain Python MDP/0.2 broker.

    python bench/broker_rate.py [--rounds 5] [--duration 2] [--warmup 1] [--workers 4] [--clients 4]
                                [--window 16] [--size 100] [--no-metrics]
    python bench/broker_rate.py --profile broker.prof [--duration 5]   # our broker only, under cProfile

Each run starts one broker as a subprocess on ``ipc://`` endpoints in a temporary directory, then ``--workers``
worker processes and ``--clients`` client processes that speak plain MDP/0.2 with raw pyzmq DEALER sockets, in
the layout both brokers accept (an empty delimiter frame first, as REQ sockets send it; majortomo requires it):

    client -> broker   "" MDPC02 0x01 "echo" body
    worker -> broker   "" MDPW02 0x01 "echo"                    (READY)
                       "" MDPW02 0x04 client "" body            (FINAL)
                       "" MDPW02 0x05                           (HEARTBEAT, every 2.5 s)

The one difference: majortomo 0.2.0 numbers the client commands like the worker ones (its client sends
REQUEST as 0x02, it answers FINAL as 0x04 without a service frame) where RFC 18 has 0x01 and 0x03, and it drops
a 0x01 REQUEST as unexpected; so the clients send the REQUEST byte each broker takes, and count any reply.

Workers answer every request at once with a ``--size``-byte body; each client keeps ``--window`` requests of
``--size`` bytes in flight.  Clients first run ``--warmup`` seconds (connections up, workers registered, caches
warm), drain, and wait at a barrier; then all run ``--duration`` seconds and report the replies they received.
The rate is all replies over the measured time.  Each round runs both brokers, alternating which goes first;
the last line is the median of the per-round ratios.  Each run also reports the broker process's CPU time (all
its threads, from /proc) per request: on a machine with few cores, where brokers, workers and clients share them,
the rate ratio understates the brokers' own difference, which the CPU figure shows.

Ours runs as deployed (``python -m ssnet_broker``, metrics endpoint on, log level WARNING; ``--no-metrics``
leaves the endpoint off); majortomo's ``Broker`` class runs with its logging at WARNING too (its command line
would log a line per reply at INFO, which would measure its log handler rather than its broker).

``--profile FILE`` runs only our broker, in a process that runs its ``Broker`` under cProfile, and prints the
costliest functions (the stats are also written to FILE for ``python -m pstats``).  The default run takes about
40 seconds; every process is stopped when it ends or fails.  Run it on a quiet machine: rounds are short and
interleaved so that a burst of other load hits both brokers alike, and the median of the rounds discounts the rest.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Optional

import zmq

SERVICE = b"echo"
CLIENT_HEADER, WORKER_HEADER = b"MDPC02", b"MDPW02"
REQUEST = b"\x01"  # MDP/Client REQUEST (RFC 18)
MAJORTOMO_REQUEST = b"\x02"  # what majortomo 0.2.0 takes for it
READY, WORKER_REQUEST, FINAL, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x04", b"\x05", b"\x06"  # MDP/Worker
HEARTBEAT_INTERVAL = 2.5
BROKERS = ("ssnet-broker", "majortomo")


# ------------------------------------------------------------------------------------------ the peers
# The peers are kept lean so that the brokers, not the load, set the pace: pyzmq's compiled send/recv with int
# flags and the frame's own ``more`` flag (its send_multipart/recv_multipart cost several microseconds more per
# message), blocking receives (no poll), and the client address forwarded as the frame received.
_BLOCK, _MORE = 0, int(zmq.SNDMORE)
_Socket = getattr(zmq.backend, "Socket", zmq.Socket)
_send, _recv = _Socket.send, _Socket.recv


def receive(sock: zmq.Socket) -> list[zmq.Frame]:  # type: ignore[type-arg]
    """One whole message (blocking, within the socket's RCVTIMEO: zmq.Again past it)."""
    frame = _recv(sock, _BLOCK, False)
    frames = [frame]
    while frame.more:
        frame = _recv(sock, _BLOCK, False)
        frames.append(frame)
    return frames


def send(sock: zmq.Socket, frames: list[Any]) -> None:  # type: ignore[type-arg]
    for frame in frames[:-1]:
        _send(sock, frame, _MORE)
    _send(sock, frames[-1], _BLOCK)


def run_worker(endpoint: str, size: int) -> None:
    """An MDP/0.2 worker that answers every request at once with ``size`` bytes (until DISCONNECT or SIGTERM)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(HEARTBEAT_INTERVAL * 1000))
    sock.connect(endpoint)
    send(sock, [b"", WORKER_HEADER, READY, SERVICE])
    reply = b"r" * size
    heartbeat = [b"", WORKER_HEADER, HEARTBEAT]
    next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
    handled = 0
    while True:
        try:
            frames = receive(sock)
        except zmq.Again:
            pass
        else:
            command = frames[2].bytes
            if command == WORKER_REQUEST:
                send(sock, [b"", WORKER_HEADER, FINAL, frames[3], b"", reply])
            elif command == DISCONNECT:
                return
            handled += 1
            if handled % 64:
                continue  # the clock every 64 messages (or when idle) is often enough for a heartbeat
        now = time.monotonic()
        if now >= next_heartbeat:
            send(sock, heartbeat)
            next_heartbeat = now + HEARTBEAT_INTERVAL


def run_client(endpoint: str, command: bytes, size: int, window: int, warmup: float, duration: float) -> None:
    """Warm up, say ``ready`` on stdout, wait for a line on stdin, run ``duration`` seconds with ``window``
    requests in flight, then print ``<replies> <seconds>``."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 15_000)  # a broker that stops answering fails the run instead of hanging it
    sock.connect(endpoint)
    request = [b"", CLIENT_HEADER, command, SERVICE, b"q" * size]

    def burst(seconds: float) -> tuple[int, float]:
        """Keep ``window`` requests in flight for ``seconds``; the replies received by then, and the time taken.
        Drains the requests still in flight afterwards (not counted)."""
        for _ in range(window):
            send(sock, request)
        replies = 0
        began = time.monotonic()
        deadline = began + seconds
        now = began
        while now < deadline:
            for _ in range(16):
                frames = receive(sock)
                if len(frames) < 4 or frames[1].bytes != CLIENT_HEADER:
                    raise SystemExit(f"unexpected reply {[f.bytes for f in frames[:4]]!r}")
                replies += 1
                send(sock, request)
            now = time.monotonic()
        for _ in range(window):
            receive(sock)
        return replies, now - began

    try:
        burst(warmup)
    except zmq.Again:
        raise SystemExit("no reply within 15 s during the warm-up") from None
    print("ready", flush=True)
    sys.stdin.readline()
    replies, seconds = burst(duration)
    print(f"{replies} {seconds:.6f}", flush=True)


def run_majortomo(endpoint: str) -> None:
    from majortomo.broker import Broker

    def stop(*_: object) -> None:
        raise SystemExit(0)  # at once: its stop() is seen only when a receive times out (2.5 s)

    logging_warning()
    broker = Broker(bind=endpoint)
    signal.signal(signal.SIGTERM, stop)
    broker.run()


def run_profiled(frontend: str, backend: str, output: str) -> None:
    """Our broker in this process under cProfile, as ``python -m ssnet_broker`` would run it (no endpoint file)."""
    import cProfile
    import pstats

    from prometheus_client import CollectorRegistry

    from ssnet_broker.broker import Broker, BrokerConfig

    logging_warning()
    registry = CollectorRegistry()
    broker = Broker(BrokerConfig(frontend=frontend, backend=backend), registry)  # its metrics, unserved
    broker.install_signal_handlers()
    profile = cProfile.Profile()
    profile.runcall(broker.run)
    profile.dump_stats(output)
    pstats.Stats(output).sort_stats("tottime").print_stats(30)


def logging_warning() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


# ------------------------------------------------------------------------------------------ the harness
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(args: list[str], *, stdin: Optional[int] = None, stdout: Optional[int] = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], stdin=stdin, stdout=stdout, text=True)


def stop_all(processes: list[subprocess.Popen[str]]) -> None:
    """SIGTERM the broker (the first) and wait, then the others (ours tells its workers to go as it stops)."""
    for group in (processes[:1], processes[1:]):
        for process in group:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in group:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) process ``pid`` has used; NaN where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(broker: str, args: argparse.Namespace, profile: Optional[str] = None) -> tuple[float, float]:
    """Requests per second through ``broker`` (one of :data:`BROKERS`), and the broker's CPU microseconds per
    request meanwhile."""
    me = str(Path(__file__).resolve())
    processes: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="broker-rate-") as tmp:
        frontend, backend = f"ipc://{tmp}/frontend", f"ipc://{tmp}/backend"
        command = REQUEST
        try:
            if profile is not None:
                processes.append(spawn([me, "--role", "profiled", "--endpoint", frontend, "--backend", backend,
                                        "--output", profile]))
            elif broker == "ssnet-broker":
                metrics = ["--metrics-port", str(free_port())] if args.metrics else []
                processes.append(spawn(["-m", "ssnet_broker", "--frontend", frontend, "--backend", backend,
                                        "--log-level", "WARNING", *metrics]))
            else:
                backend = frontend  # majortomo takes clients and workers on one socket
                command = MAJORTOMO_REQUEST
                processes.append(spawn([me, "--role", "majortomo", "--endpoint", frontend]))
            for _ in range(args.workers):
                processes.append(spawn([me, "--role", "worker", "--endpoint", backend, "--size", str(args.size)]))
            clients = [spawn([me, "--role", "client", "--endpoint", frontend, "--command", command.hex(),
                              "--size", str(args.size), "--window", str(args.window), "--warmup", str(args.warmup),
                              "--duration", str(args.duration)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                       for _ in range(args.clients)]
            processes += clients
            for client in clients:  # the barrier: every client warm and idle
                if readline(client.stdout) != "ready":
                    raise SystemExit(f"{broker}: a client failed during the warm-up")
            cpu = cpu_seconds(processes[0].pid)
            for client in clients:
                assert client.stdin is not None
                client.stdin.write("go\n")
                client.stdin.flush()
            replies, longest = 0, 0.0
            for client in clients:
                count, seconds = readline(client.stdout).split()
                replies, longest = replies + int(count), max(longest, float(seconds))
            cpu = cpu_seconds(processes[0].pid) - cpu
            return replies / longest, cpu / max(1, replies) * 1e6
        finally:
            stop_all(processes)


def readline(stream: Optional[IO[str]]) -> str:
    assert stream is not None
    return stream.readline().strip()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each broker, interleaved (default 5)")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run (default 2)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run (default 1)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--window", type=int, default=16, help="requests in flight per client (default 16)")
    parser.add_argument("--size", type=int, default=100, help="request and reply body bytes (default 100)")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false",
                        help="run ssnet-broker without its metrics endpoint")
    parser.add_argument("--profile", metavar="FILE", help="profile our broker (one run) and write the stats here")
    parser.add_argument("--role", choices=("worker", "client", "majortomo", "profiled"), help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--command", default=REQUEST.hex(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "worker":
        run_worker(args.endpoint, args.size)
        return 0
    if args.role == "client":
        run_client(args.endpoint, bytes.fromhex(args.command), args.size, args.window, args.warmup, args.duration)
        return 0
    if args.role == "majortomo":
        run_majortomo(args.endpoint)
        return 0
    if args.role == "profiled":
        run_profiled(args.endpoint, args.backend, args.output)
        return 0

    print(f"{args.workers} workers, {args.clients} clients x {args.window} in flight, {args.size}-byte bodies, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s per run; {os.cpu_count()} CPUs", flush=True)
    if args.profile:
        rate, cpu = one_run("ssnet-broker", args, profile=args.profile)
        print(f"ssnet-broker under cProfile: {rate:,.0f} requests/s, {cpu:.1f} us of broker CPU per request "
              f"(profile in {args.profile})")
        return 0
    rates: dict[str, list[float]] = {name: [] for name in BROKERS}
    cpus: dict[str, list[float]] = {name: [] for name in BROKERS}
    ratios, cpu_ratios = [], []
    for round_number in range(args.rounds):
        order = BROKERS if round_number % 2 == 0 else BROKERS[::-1]
        for name in order:
            rate, cpu = one_run(name, args)
            rates[name].append(rate)
            cpus[name].append(cpu)
        ours, theirs = rates["ssnet-broker"][-1], rates["majortomo"][-1]
        ratios.append(ours / theirs)
        cpu_ratios.append(cpus["majortomo"][-1] / cpus["ssnet-broker"][-1])
        print(f"round {round_number + 1}: ssnet-broker {ours:8,.0f} requests/s ({cpus['ssnet-broker'][-1]:5.1f} us "
              f"CPU/request), majortomo {theirs:8,.0f} requests/s ({cpus['majortomo'][-1]:5.1f} us CPU/request), "
              f"ratio {ratios[-1]:.2f}x", flush=True)
    print(f"medians: ssnet-broker {statistics.median(rates['ssnet-broker']):,.0f} requests/s, "
          f"majortomo {statistics.median(rates['majortomo']):,.0f} requests/s; broker CPU per request, majortomo / "
          f"ssnet-broker: {statistics.median(cpu_ratios):.2f}x")
    print(f"small-request rate ratio, ssnet-broker vs majortomo 0.2.0: {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
