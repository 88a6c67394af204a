"""Events/s of the whole LArCV1 client pipeline against the project's reader alone, on the shared samples.

    python bench/client_pipeline.py [--repeat N] [--rounds R] [--window W] [--batch-size B] [--no-profile]

A broker and 2 DummyLArCV1 workers run as subprocesses on private ``ipc://`` endpoints;
``SimpleLArCV1Client`` runs in this process: read, encode, send, wait, receive, decode, write.
Each sample's file is given ``--repeat`` times as the inputs (the 512 sample holds only 10 entries).  The
reader alone (``LArCV1Reader`` iterating the same inputs, as a user runs it: its default decompression
threads) is timed in the same run; both rates and their ratio are printed per sample (target: client/reader
>= 0.9).  Every process competes for the same cores: the machine's core count is printed with the results.

Then, unless ``--no-profile``, one more client run per sample with timers around the stages (installed by
wrapping the client's functions from here; the client is not changed), kept per thread of the client: the
main thread (waiting for entries from the read-ahead thread, encode, send, wait, receive, decode, handing
replies to the writer thread), the read-ahead thread (read) and the writer thread (write); exclusive (a stage
called inside another is counted once, in the inner one).  With it, the CPU time per event of the client, the
broker, the workers and the reader alone, and the rate the pipeline could reach at most with every core busy
at that CPU cost (when it is CPU-bound, no overlap of reading with the rest can beat that).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ssnet_client import base as client_base
from ssnet_client import larcv1_client
from ssnet_client.base import ClientConfig
from ssnet_client.larcv1_client import LArCV1JobConfig, SimpleLArCV1Client
from ssnet_client.local import services, wait_for_workers
from ssnet_data import larcv1
from ssnet_data.larcv1 import LArCV1Reader, load_writer_backend

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "larcv1"
FILES = ("ssnet_sample_512.root", "ssnet_sample_fullevent.root")
TARGET = 0.9
STAGES = ("read", "encode", "send", "wait", "receive", "decode", "write", "other")


# ---------------------------------------------------------------------------------------------- services
@contextmanager
def dummy_services(workers: int) -> Iterator[str]:
    """A broker and ``workers`` dummy workers (ssnet_client.local's stack), registered; yields the frontend."""
    with services([["--kind", "dummy"]] * workers, heartbeat=1.0, log_level="WARNING") as (frontend, procs):
        wait_for_workers(frontend, "dummy", procs)
        yield frontend


# ------------------------------------------------------------------------------------------------ timing
def time_reader(inputs: list[str]) -> tuple[int, float]:
    """The reader as a user runs it (its default decompression threads): events and seconds."""
    began = time.perf_counter()
    count = sum(1 for _ in LArCV1Reader(inputs, producers=["wire"]))
    return count, time.perf_counter() - began


def reader_cpu(inputs: list[str]) -> float:
    """CPU seconds per event of the reader alone, its decompression threads included."""
    began = time.process_time()
    count = sum(1 for _ in LArCV1Reader(inputs, producers=["wire"]))
    return (time.process_time() - began) / count


def time_client(inputs: list[str], output: str, frontend: str, window: int, batch_size: int) -> tuple[int, float]:
    config = LArCV1JobConfig(
        inputs=tuple(inputs), output=output, producers=("wire",), service="dummy", broker=frontend,
        batch_size=batch_size, client=ClientConfig(window=window),
    )
    began = time.perf_counter()
    summary = SimpleLArCV1Client(config).run()
    seconds = time.perf_counter() - began
    os.unlink(output)
    return summary.done, seconds


# ---------------------------------------------------------------------------------------------- profile
class StageClock:
    """Exclusive wall time per thread and stage: in each thread the clock runs for the innermost stage entered
    (a thread's "other" is its time outside every stage, from its first stage on)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], float] = defaultdict(float)  # (thread name, stage) -> seconds
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self._local = threading.local()

    def _thread(self) -> tuple[list[str], list[float]]:
        """This thread's stack of stages and the time its current stage was last switched to."""
        state: tuple[list[str], list[float]] | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = (["other"], [time.perf_counter()])
        return state

    def _switch(self) -> None:
        stack, last = self._thread()
        now = time.perf_counter()
        self.totals[threading.current_thread().name, stack[-1]] += now - last[0]
        last[0] = now

    def start(self) -> None:
        """Start this thread's clock now (its "other" counts from here)."""
        self._thread()[1][0] = time.perf_counter()

    def enter(self, stage: str) -> None:
        self._switch()
        self._thread()[0].append(stage)
        self.calls[threading.current_thread().name, stage] += 1

    def leave(self) -> None:
        self._switch()
        self._thread()[0].pop()

    def function(self, stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(stage)
            try:
                return func(*args, **kwargs)
            finally:
                self.leave()
        return timed

    def generator(self, stage: str, func: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """Time every resumption of the generators ``func`` returns (not the time their consumer holds them)."""
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            inner = func(*args, **kwargs)
            try:
                while True:
                    self.enter(stage)
                    try:
                        item = next(inner)
                    except StopIteration:
                        return
                    finally:
                        self.leave()
                    yield item
            finally:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()  # as the consumer closing the wrapper would have closed it
        return timed


# Per thread of the client, what its stages are (the client's functions that the profile wraps in timers).
THREADS = {
    "MainThread": "read: waiting for the next entry from the read-ahead thread; write: handing replies to the "
                  "writer thread (it waits when that one's queue is full)",
    "ssnet-reader": "the read-ahead thread: read (LArCV1Reader); other: waiting for room in its queue",
    "ssnet-writer": "the writer thread: write (LArCV1Writer, ROOT); other: waiting for replies to write",
}


@contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    """Wrap the pipeline's stage functions in timers; restore them after."""
    patches = [
        (larcv1.LArCV1Reader, "_read_file", clock.generator("read", larcv1.LArCV1Reader._read_file)),
        (larcv1_client, "_prefetch", clock.generator("read", larcv1_client._prefetch)),
        (larcv1_client.SimpleLArCV1Client, "_products",
         clock.generator("encode", larcv1_client.SimpleLArCV1Client._products)),
        (larcv1_client, "encode_images", clock.function("encode", larcv1_client.encode_images)),
        (client_base.Client, "_send", clock.function("send", client_base.Client._send)),
        (client_base.Client, "_poll", clock.function("wait", client_base.Client._poll)),
        (client_base.Client, "_handle", clock.function("receive", client_base.Client._handle)),
        (larcv1_client.SimpleLArCV1Client, "_decode",
         clock.function("decode", larcv1_client.SimpleLArCV1Client._decode)),
        (larcv1_client, "_per_entry", clock.function("decode", larcv1_client._per_entry)),
        (larcv1_client._BackgroundWriter, "write", clock.function("write", larcv1_client._BackgroundWriter.write)),
        (larcv1_client._OutputWriter, "write", clock.function("write", larcv1_client._OutputWriter.write)),
        (larcv1_client._OutputWriter, "finish", clock.function("write", larcv1_client._OutputWriter.finish)),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def profile_client(inputs: list[str], output: str, frontend: str, window: int, batch_size: int
                   ) -> tuple[int, float, StageClock, dict[str, float]]:
    """One instrumented run: events, seconds, the stage clock and the CPU seconds of each process kind."""
    clock = StageClock()
    before = cpu_snapshot()
    with instrumented(clock):
        clock.start()
        events, seconds = time_client(inputs, output, frontend, window, batch_size)
        clock.enter("other")
        clock.leave()  # account the tail
    after = cpu_snapshot()
    return events, seconds, clock, {kind: after[kind] - before.get(kind, 0.0) for kind in after}


# --------------------------------------------------------------------------------------------- CPU use
def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, from /proc (Linux); 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def children() -> dict[int, str]:
    """This process's children (the broker and the workers): {pid: its command's kind}."""
    found = {}
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, pids):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            found[pid] = "broker" if b"ssnet_broker" in argv else "workers"
    return found


def cpu_snapshot() -> dict[str, float]:
    usage: dict[str, float] = defaultdict(float)
    usage["client"] = process_cpu(os.getpid())
    for pid, kind in children().items():
        usage[kind] += process_cpu(pid)
    return usage


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="times each sample file is given as input (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per rate; the best is kept (default 3)")
    parser.add_argument("--window", type=int, default=ClientConfig().window, help="client requests in flight")
    parser.add_argument("--batch-size", type=int, default=1, help="events per request")
    parser.add_argument("--workers", type=int, default=2, help="dummy workers (default 2)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-stage profile")
    args = parser.parse_args()
    if not (SAMPLES / FILES[0]).is_file():
        print(f"shared samples not found in {SAMPLES}", file=sys.stderr)
        return 2

    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (cores or 1)
    print(f"machine: {cores} cores ({usable} usable by this process); Python {sys.version.split()[0]}")
    print(f"client pipeline: broker + {args.workers} dummy workers (subprocesses, ipc://), SimpleLArCV1Client "
          f"in-process, window {args.window}, batch size {args.batch_size}; each file given {args.repeat}x; "
          f"best of {args.rounds}")
    print("the broker, the workers, the client and the reader share those cores.\n")

    load_writer_backend()
    results = []
    profiles = []
    with tempfile.TemporaryDirectory(prefix="ssnet-bench-") as tmp, dummy_services(args.workers) as frontend:
        output = str(Path(tmp) / "out.root")
        # Warm-up: every worker registered and warm, caches (file pages, ROOT's lazily bound classes) filled.
        time_client([str(SAMPLES / FILES[0])], output, frontend, args.window, args.batch_size)
        for name in FILES:
            inputs = [str(SAMPLES / name)] * args.repeat
            readers, clients = [], []
            for _ in range(args.rounds):  # interleaved, so that load from elsewhere hits both alike
                readers.append(time_reader(inputs))
                clients.append(time_client(inputs, output, frontend, args.window, args.batch_size))
            results.append((name, readers, clients))
            if not args.no_profile:
                profiles.append((name, reader_cpu(inputs),
                                 profile_client(inputs, output, frontend, args.window, args.batch_size)))

    header = (f"{'sample':<28} {'events':>6} {'reader ev/s':>12} {'client ev/s':>12} {'ratio':>6}  "
              f"(target {TARGET}; best of {args.rounds}, [slowest-fastest] in brackets)")
    print(header)
    print("-" * len(header))
    for name, readers, clients in results:
        events = readers[0][0]
        assert all(n == events for n, _ in readers + clients), (readers, clients)
        reader_rates = sorted(events / t for _, t in readers)
        client_rates = sorted(events / t for _, t in clients)
        ratio = client_rates[-1] / reader_rates[-1]
        verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
        spread = (f"[reader {reader_rates[0]:.2f}-{reader_rates[-1]:.2f}, "
                  f"client {client_rates[0]:.2f}-{client_rates[-1]:.2f}]")
        print(f"{name:<28} {events:>6} {reader_rates[-1]:>12.2f} {client_rates[-1]:>12.2f} {ratio:>6.2f}  "
              f"{verdict}  {spread}")

    best_reader = {name: max(events / t for events, t in readers) for name, readers, _ in results}
    for name, read_cpu, (events, seconds, clock, cpu) in profiles:
        print(f"\nwhere the client's time goes, {name}: {events} events in {seconds:.2f} s "
              f"({events / seconds:.2f} ev/s with timers)")
        total = sum(cpu.values())
        print(f"  CPU per event: client {cpu['client'] / events * 1e3:.1f} ms (its ZeroMQ I/O thread included), "
              f"broker {cpu['broker'] / events * 1e3:.1f} ms, workers {cpu['workers'] / events * 1e3:.1f} ms; "
              f"all {total:.2f} s CPU in {seconds:.2f} s = {total / seconds:.2f} of {usable} cores busy")
        ceiling = usable / (total / events)
        print(f"  the reader alone takes {read_cpu * 1e3:.1f} ms CPU per event; at {total / events * 1e3:.1f} ms, the "
              f"whole pipeline could do at most {ceiling:.2f} ev/s with all {usable} cores busy: "
              f"{ceiling / best_reader[name]:.2f}x the reader")
        print(f"  wall time of each client thread per stage, exclusive (% of the run's {seconds:.2f} s):")
        for thread, meaning in THREADS.items():
            print(f"  {thread} ({meaning}):")
            for stage in STAGES:
                spent = clock.totals.get((thread, stage), 0.0)
                calls = clock.calls.get((thread, stage), 0)
                if spent or calls:
                    print(f"    {stage:<8} {spent:7.2f} s {100 * spent / seconds:5.1f} %  "
                          f"{spent / events * 1e3:8.1f} ms/event  ({calls} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
