"""What the two job clients share: fan-out, fan-in, resubmission and their statistics.

A *unit* is what a job hands on as one piece: a batch of LArCV1 events (one request, or one per plane with
``--per-plane``) or a training batch (one request per shard).  :class:`FanOut` sends the requests of unit after
unit through :meth:`Client.imap <ssnet_client.base.Client.imap>` (``window`` requests in flight) and yields
each unit with its replies in request order, units in the order they were given, whatever order the workers
answer in.  A unit without requests (an event without images) is yielded in its turn with no replies.

Resubmission (:class:`RetryPolicy`, the one set of rules both jobs use): the broker already gives a dead
worker's request to another worker, and the client re-sends a request that gets no answer.  When the broker
gives up anyway (``worker_lost`` after its ``--max-attempts`` workers, ``queue_timeout`` while a service has no
worker) or the client's own retries run out, the request is sent again, until ``max_attempts`` workers in all
have had it (a ``worker_lost`` reply counts the workers the broker tried; any other failure counts one).  An
error reply from a worker (bad input) is never sent again: it would fail again.  A request that exhausts its
attempts raises its last error, or (``return_exceptions``) takes its place among the unit's replies.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar, Union

import numpy as np

from ssnet_client.base import Client, Reply
from ssnet_common import config as cfg
from ssnet_common.curve import CurveKeys
from ssnet_common.errors import (
    BrokerUnreachable,
    NoSuchService,
    RequestError,
    RequestTimeout,
    ServiceUnavailable,
    WorkerLost,
)
from ssnet_common.protocol import MMI_FOUND, frames_nbytes
from ssnet_common.transport import mmi_service
from ssnet_data.ndarray import COMPRESSIONS, DEFAULT_CODEC

log = logging.getLogger(__name__)

U = TypeVar("U")
Request = tuple[str, Sequence[Any]]  # (service, payload frames)

RESUBMITTABLE: tuple[type[RequestError], ...] = (WorkerLost, ServiceUnavailable, RequestTimeout)
"""Errors after which a request is worth sending again (``ServiceUnavailable`` includes ``BrokerBusy`` and the
broker's ``queue_timeout``)."""


SERVICE_POLL = 0.5  # seconds between asking the broker whether a service has a worker yet
CONNECT_TIMEOUT = 10.0  # seconds a broker has to answer before a job's first request
SERVICE_WAIT = 60.0  # seconds a job waits for a worker of each service it needs
RAW = "raw"  # --wire-codec's name for no codec (the array's bytes as they are)


def add_wait_options(options: cfg.EnvOptions) -> None:
    """``--connect-timeout`` and ``--service-wait``: what :func:`wait_for_service` is given (every job command)."""
    options.add("--connect-timeout", default=CONNECT_TIMEOUT, type=cfg.positive_float,
                help="seconds the broker has to answer before the first request; else exit 1 at once")
    options.add("--service-wait", default=SERVICE_WAIT, type=cfg.non_negative_float,
                help="seconds to wait for a worker of the service before the first request; else exit 1")


def add_wire_codec_option(options: cfg.EnvOptions) -> None:
    """``--wire-codec`` (old spelling ``--compression``): how the arrays a job sends are encoded
    (:mod:`ssnet_data.ndarray`; workers answer in the codec they were sent).  :func:`wire_codec` reads it."""
    options.add("--wire-codec", "--compression", default=DEFAULT_CODEC or RAW, choices=[c or RAW for c in COMPRESSIONS],
                help="encoding of the image arrays on the wire; the default sends only the nonzero pixels of the "
                     "sparse detector images (raw: every byte, zero copy; zlib, lz4, sparse-lz4: compressed)")


def wire_codec(args: Any) -> Optional[str]:
    """The codec ``--wire-codec`` names (None: raw)."""
    return None if args.wire_codec == RAW else str(args.wire_codec)


def wait_for_service(broker: str, services: Sequence[str], *, connect_timeout: float, service_wait: float,
                     curve: Optional[CurveKeys] = None) -> None:
    """Before a job's first request: the broker must answer within ``connect_timeout`` seconds
    (:class:`BrokerUnreachable` otherwise), and each service must have a worker within ``service_wait`` seconds
    (:class:`NoSuchService` otherwise; it logs that it waits)."""
    deadline = time.monotonic() + service_wait
    for name in services:
        waiting = False
        while True:
            status = mmi_service(broker, name, connect_timeout, curve)
            if status is None:
                hint = ("; with CURVE, check that --curve-server is the broker's public key and that the broker "
                        "authorizes this client's key" if curve is not None else "")
                raise BrokerUnreachable(f"broker at {broker} does not answer (no reply within {connect_timeout:g} s)"
                                        f"{hint}")
            if status == MMI_FOUND:
                break
            if not waiting:
                log.info("waiting for a worker of service %r (up to %g s)", name, service_wait)
                waiting = True
            if time.monotonic() > deadline:
                raise NoSuchService(f"no worker of service {name!r} within {service_wait:g} s", service=name)
            time.sleep(SERVICE_POLL)  # MMI answers at once: pace the questions while workers start


@dataclass
class JobStats:
    """What a job did: the LArCV1 job (``unit="event"``) and the training feed (``unit="batch"``) alike."""

    unit: str = "event"
    done: int = 0             # units handed on: events written, or batches given to the training loop
    entries: int = 0          # LArCV1 entries in them
    nbytes: int = 0           # bytes of the arrays handed on (training feed)
    resumed: int = 0          # entries found done in checkpoint chunks (LArCV1 job with --resume)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # events left out after failing for good
    notes: list[str] = field(default_factory=list)  # what the summary must say (workers that disagree)
    requests: int = 0         # requests sent, resubmissions not counted
    resubmits: int = 0        # requests sent again after the broker or the client gave up on them
    bytes_sent: int = 0
    bytes_received: int = 0
    round_trips: list[float] = field(default_factory=list)  # seconds per request, retries included
    wait: float = 0.0         # seconds the consumer waited for units (training feed), the first one included
    first_wait: float = 0.0   # seconds it waited for the first unit (workers opening files, cold caches)
    started: Optional[float] = None   # time.monotonic() when the job started
    last: Optional[float] = None      # time.monotonic() when the last unit was handed on

    def handed(self, entries: int, nbytes: int = 0, waited_since: Optional[float] = None) -> float:
        """Count one unit handed on; ``waited_since``: when the consumer began waiting for it.  Returns the wait."""
        now = time.monotonic()
        if self.started is None:
            self.started = now if waited_since is None else waited_since
        wait = 0.0 if waited_since is None else now - waited_since
        if waited_since is not None:
            if self.done == 0:
                self.first_wait = wait
            self.wait += wait
        self.done += 1
        self.entries += entries
        self.nbytes += nbytes
        self.last = now
        return wait

    @property
    def finished(self) -> int:
        """Events the job is through with: written, found in checkpoint chunks, or skipped (what progress counts)."""
        return self.done + self.resumed + len(self.skipped)

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None or self.last is None else self.last - self.started

    def wait_fraction(self, *, steady: bool = False) -> float:
        """Waiting time over the time from the start to the last unit; ``steady`` leaves the first unit out of
        both (the start-up)."""
        wait, elapsed = self.wait, self.elapsed
        if steady:
            wait, elapsed = wait - self.first_wait, elapsed - self.first_wait
        return wait / elapsed if elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.round_trips, q)) if self.round_trips else 0.0

    def text(self) -> str:
        seconds = self.elapsed
        unit = "entries" if self.unit == "entry" else f"{self.unit}{'es' if self.unit.endswith('h') else 's'}"
        parts = [f"{self.done} {unit}"]
        if self.entries != self.done:
            parts.append(f" ({self.entries} entries)")
        parts.append(f" in {seconds:.2f} s ({self.done / seconds if seconds > 0 else 0.0:.2f} {unit}/s)")
        if self.resumed:
            parts.append(f" after {self.resumed} from checkpoints")
        if self.skipped:
            parts.append(f"; {len(self.skipped)} skipped: " + ", ".join(
                f"{e['run']}/{e['subrun']}/{e['event']}" for e in self.skipped[:10])
                + (" ..." if len(self.skipped) > 10 else ""))
        if self.notes:
            parts.append("; " + "; ".join(self.notes))
        parts.append(f"; {self.requests} requests, {self.resubmits} sent again, sent {self.bytes_sent / 1e6:.1f} MB, "
                     f"received {self.bytes_received / 1e6:.1f} MB")
        if self.round_trips:
            parts.append(f"; round trip p50 {self.percentile(50) * 1e3:.1f} ms, p90 {self.percentile(90) * 1e3:.1f} "
                         f"ms, p99 {self.percentile(99) * 1e3:.1f} ms, max {max(self.round_trips) * 1e3:.1f} ms")
        if self.first_wait or self.wait:
            parts.append(f"; waited {self.wait:.3f} s = {100 * self.wait_fraction():.1f} % "
                         f"({100 * self.wait_fraction(steady=True):.1f} % after the first {self.unit}, which took "
                         f"{self.first_wait:.3f} s)")
        return "".join(parts)


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is sent again: up to ``max_attempts`` workers per request, across resubmissions."""

    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    @staticmethod
    def cost(error: RequestError) -> int:
        """The workers a failed submission used up."""
        return error.workers if isinstance(error, WorkerLost) else 1

    @staticmethod
    def resubmittable(error: RequestError) -> bool:
        return isinstance(error, RESUBMITTABLE)


@dataclass(eq=False)
class _Pending(Generic[U]):
    unit: U
    requests: list[Request]
    replies: list[Union[Reply, RequestError]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.replies) == len(self.requests)


class FanOut(Generic[U]):
    """Sends the requests of each unit and yields ``(unit, replies)`` in unit order (see the module's text).

    ``describe(unit)`` names a unit in log lines ("entries 4-7", "batch 0/3").  ``return_exceptions``: a
    request that fails for good is yielded as its :class:`RequestError` among the unit's replies (else raised).
    """

    def __init__(self, client: Client, stats: JobStats, *, describe: Callable[[U], str],
                 policy: RetryPolicy = RetryPolicy(), window: Optional[int] = None, timeout: Optional[float] = None,
                 return_exceptions: bool = False) -> None:
        self.client = client
        self.stats = stats
        self.describe = describe
        self.policy = policy
        self.window = window
        self.timeout = timeout
        self.return_exceptions = return_exceptions

    def run(self, units: Iterable[tuple[U, Sequence[Request]]]
            ) -> Generator[tuple[U, list[Union[Reply, RequestError]]], None, None]:
        """``units``: each unit with its requests, consumed lazily as the window allows."""
        sent: deque[_Pending[U]] = deque()  # units whose requests went out, in order, until they are yielded

        def requests() -> Iterator[Request]:
            for unit, unit_requests in units:
                pending = _Pending(unit, list(unit_requests))
                sent.append(pending)
                for service, payload in pending.requests:
                    self.stats.requests += 1
                    self.stats.bytes_sent += frames_nbytes(payload)
                    yield service, payload

        def ready() -> Iterator[tuple[U, list[Union[Reply, RequestError]]]]:
            while sent and sent[0].complete:
                done = sent.popleft()
                yield done.unit, done.replies

        stream = self.client.imap(requests(), window=self.window, timeout=self.timeout, return_exceptions=True)
        try:
            for outcome in stream:
                yield from ready()  # units without requests, given before this reply's unit
                pending = sent[0]
                if isinstance(outcome, RequestError):
                    service, payload = pending.requests[len(pending.replies)]
                    reply = self._resubmit(pending.unit, service, payload, outcome)
                else:
                    reply = outcome
                if isinstance(reply, Reply):
                    self.stats.bytes_received += frames_nbytes(reply.payload)
                    self.stats.round_trips.append(reply.rtt)
                pending.replies.append(reply)
                yield from ready()
            yield from ready()
        finally:
            stream.close()

    def _resubmit(self, unit: U, service: str, payload: Sequence[Any], error: RequestError
                  ) -> Union[Reply, RequestError]:
        """Send a request again after the broker or the client gave up on it, as the policy allows; its last
        error when it runs out of attempts, or at once for an error that another try would not mend."""
        policy = self.policy
        used = policy.cost(error)
        while policy.resubmittable(error) and used < policy.max_attempts:
            self.stats.resubmits += 1
            log.warning("%s: request to %r failed (%s) after %d of %d workers: sending it again",
                        self.describe(unit), service, error.code, used, policy.max_attempts)
            began = time.monotonic()
            try:
                answer = self.client.request(service, payload, timeout=self.timeout)
            except RequestError as exc:
                error = exc
                used += policy.cost(exc)
                continue
            return Reply(service, 0, answer, time.monotonic() - began, 1)
        if self.return_exceptions:
            return error
        raise error


__all__ = [
    "CONNECT_TIMEOUT",
    "RESUBMITTABLE",
    "SERVICE_WAIT",
    "FanOut",
    "JobStats",
    "Request",
    "RetryPolicy",
    "add_wait_options",
    "wait_for_service",
]
