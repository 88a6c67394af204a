"""The ssnet client: Majordomo (MDP/0.2) requests over one DEALER socket, many of them in flight.

:class:`Client` sends requests through the broker and matches the replies to them by the 64-bit request id
in our body envelope (see :mod:`ssnet_common.protocol`).  All the decisions (which request is pending, when
one has timed out and is resent, when a result may be handed out in submission order) are taken by
:class:`RequestTracker`, a plain class that is given the time and touches no socket; :class:`Client` only
moves frames between it and the socket.

Why one socket, never re-created: the ZeroMQ guide's "lazy pirate" clients close and re-open their socket
after a timeout.  That cures a REQ socket stuck in its send/receive state machine, which a DEALER does not
have; and re-creating the socket here would give it a new ROUTER identity at the broker, so the replies to
every *other* request in flight would be routed to a dead identity and lost.  ZeroMQ reconnects a DEALER by
itself (broker restarts included) and queues what is sent while it is not connected, so a client may start
before its broker.  A timed-out request is therefore simply sent again on the same socket, with the same
request id: whichever copy is answered first completes it and any later answer is dropped as not pending.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import weakref
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Literal,
    Optional,
    Sequence,
    Union,
    cast,
    overload,
)

import zmq

from ssnet_common import transport
from ssnet_common.backoff import JITTER, backoff_delay
from ssnet_common.curve import CurveKeys
from ssnet_common.errors import (
    ConfigError,
    ErrorCode,
    ProtocolError,
    RequestError,
    RequestTimeout,
    TransportError,
    error_for,
)
from ssnet_common.metrics import LATENCY_BUCKETS
from ssnet_common.protocol import (
    MMI_FOUND,
    MMI_NOT_FOUND,
    MMI_SERVICE,
    Body,
    BodyKind,
    ClientRequest,
    Frame,
    decode_body,
    decode_client_reply,
    frame_bytes,
    frames_nbytes,
    request_body,
    validate_service_name,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

# How many queued messages one wake-up handles before looking at timeouts again.
_MAX_DRAIN = 1000
# Longest single wait on the socket (only reached if nothing is pending, which the loops never wait on).
_MAX_WAIT_MS = 1000


def _positive_finite(name: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ClientConfig:
    """How a :class:`Client` waits, retries and batches.

    ``timeout``: seconds to wait for the reply to one attempt of a request; when it passes, the request is
    sent again (same request id) if ``retries`` allows, else it fails with :class:`RequestTimeout`.  A
    request thus takes at most about ``timeout * (retries + 1)`` plus back-offs.
    ``retries``: how many times a request may be re-sent, after a timeout or a ``queue_full`` answer.
    ``window``: how many requests :meth:`Client.imap` keeps submitted and not yet handed to the caller.
    ``busy_backoff`` / ``busy_backoff_max``: after the n-th ``queue_full`` answer to a request, wait
    ``busy_backoff * 2**(n-1)`` seconds (at most ``busy_backoff_max``), less up to ``jitter`` of it at random
    (:mod:`ssnet_common.backoff`), before sending it again.
    ``linger``: seconds unsent messages may keep :meth:`Client.close` waiting.
    ``curve``: this client's key pair and the broker's public key (CURVE); None talks in the clear.
    """

    timeout: float = 120.0
    retries: int = 3
    window: int = 8
    busy_backoff: float = 0.5
    busy_backoff_max: float = 10.0
    jitter: float = JITTER
    linger: float = 0.0
    curve: Optional[CurveKeys] = None

    def __post_init__(self) -> None:
        _positive_finite("timeout", self.timeout)
        _positive_finite("busy_backoff", self.busy_backoff)
        _positive_finite("busy_backoff_max", self.busy_backoff_max)
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, got {self.retries!r}")
        if self.window < 1:
            raise ConfigError(f"window must be at least 1, got {self.window!r}")
        if not (self.linger >= 0 and math.isfinite(self.linger)):
            raise ConfigError(f"linger must be 0 or more seconds, got {self.linger!r}")

    def backoff(self, busy_answers: int) -> float:
        """Seconds to wait before re-sending a request that got its ``busy_answers``-th ``queue_full``."""
        return backoff_delay(busy_answers, self.busy_backoff, max(self.busy_backoff, self.busy_backoff_max),
                             jitter=self.jitter)


@dataclass(frozen=True)
class Reply:
    """The result of one request.

    ``payload``: the RESULT body's frames after the envelope, as received (zero-copy ``zmq.Frame`` objects;
    ``frame.buffer`` is a memoryview of the data).  ``rtt``: seconds from the first sending of the request
    to the arrival of this reply, retries included.  ``attempts``: how many times the request was sent.
    """

    service: str
    request_id: int
    payload: list[zmq.Frame]
    rtt: float
    attempts: int


Outcome = Union[Reply, RequestError]
Request = tuple[str, Sequence[Frame]]


@dataclass(frozen=True)
class Send:
    """A message the tracker wants sent: the whole MDP request (``attempt`` 1) or a resend of it."""

    request_id: int
    service: str
    frames: list[Frame]
    attempt: int
    reason: str = ""  # why a resend: "timeout" or "busy"


class ReplyDisposition(Enum):
    """What :meth:`RequestTracker.on_reply` did with a reply."""

    FINISHED = "finished"        # the request is complete (result or error)
    BACKOFF = "backoff"          # queue_full: the request will be re-sent after a back-off
    NOT_PENDING = "not_pending"  # no such pending request here: late, duplicate, cancelled or someone else's
    INVALID = "invalid"          # the id is pending but the body is not an answer (a REQUEST body)


@dataclass
class _Pending:
    request_id: int
    service: str
    frames: list[Frame]
    first_sent: float
    deadline: float  # reply timeout, or end of the back-off while backing_off
    attempts: int = 1
    busy_answers: int = 0
    backing_off: bool = False


class RequestTracker:
    """Bookkeeping of one stream of requests, with no socket and no clock of its own.

    Requests are submitted in order (:meth:`submit`, at most ``window`` not yet taken), the replies are
    matched by request id (:meth:`on_reply`), timeouts and back-offs are acted on when :meth:`poll` is given
    a time past them, and the outcomes come out in submission order (:meth:`pop_next`).  Every method that
    wants something sent returns :class:`Send` objects; the caller sends them.

    A request is *pending* from :meth:`submit` until its first final answer (RESULT, or ERROR other than a
    retried ``queue_full``) or its last timeout; after that any answer with its id is ``NOT_PENDING``.
    Since every attempt carries the same id, the first answer to *any* attempt completes the request.
    """

    def __init__(
        self,
        config: ClientConfig,
        next_id: Callable[[], int],
        *,
        timeout: Optional[float] = None,
        window: Optional[int] = None,
    ) -> None:
        self.config = config
        self.timeout = config.timeout if timeout is None else _positive_finite("timeout", timeout)
        if window is not None and window < 1:
            raise ConfigError(f"window must be at least 1, got {window!r}")
        self.window = config.window if window is None else window
        self._next_id = next_id
        self._order: deque[int] = deque()
        self._pending: dict[int, _Pending] = {}
        self._finished: dict[int, Outcome] = {}

    @property
    def in_flight(self) -> int:
        """Requests sent (or backing off) and not yet answered."""
        return len(self._pending)

    @property
    def outstanding(self) -> int:
        """Requests submitted and not yet taken with :meth:`pop_next` (what the window bounds)."""
        return len(self._order)

    def has_room(self) -> bool:
        return len(self._order) < self.window

    def is_pending(self, request_id: int) -> bool:
        return request_id in self._pending

    def submit(self, service: str, payload: Sequence[Frame], now: float) -> Send:
        """Give the next request an id and return its message; :class:`ProtocolError` on a bad service name."""
        if not self.has_room():
            raise RuntimeError(f"request window full ({self.window} outstanding)")
        validate_service_name(service)
        request_id = self._next_id()
        if request_id in self._pending or request_id in self._finished:
            raise RuntimeError(f"request id {request_id} reused")
        frames = ClientRequest(service, request_body(request_id, payload).encode()).encode()
        self._pending[request_id] = _Pending(request_id, service, frames, now, now + self.timeout)
        self._order.append(request_id)
        return Send(request_id, service, frames, attempt=1)

    def on_reply(self, service: str, body: Body, now: float) -> ReplyDisposition:
        """Take a FINAL reply from ``service`` with our decoded ``body``."""
        pending = self._pending.get(body.request_id)
        if pending is None:
            return ReplyDisposition.NOT_PENDING
        if service != pending.service:
            log.warning(
                "reply to request %d names service %r, the request went to %r",
                body.request_id, service, pending.service,
            )
        if body.kind == BodyKind.RESULT:
            payload = cast("list[zmq.Frame]", list(body.payload))
            self._finish(pending, Reply(pending.service, pending.request_id, payload, now - pending.first_sent,
                                        pending.attempts))
            return ReplyDisposition.FINISHED
        if body.kind != BodyKind.ERROR:
            return ReplyDisposition.INVALID
        code, message = body.error
        if code == ErrorCode.QUEUE_FULL and pending.attempts <= self.config.retries:
            pending.busy_answers += 1
            pending.backing_off = True
            pending.deadline = now + self.config.backoff(pending.busy_answers)
            log.debug("request %d to %r: broker queue full, re-sending in %.3f s",
                      pending.request_id, pending.service, pending.deadline - now)
            return ReplyDisposition.BACKOFF
        self._finish(pending, error_for(code, message, service=pending.service, request_id=pending.request_id))
        return ReplyDisposition.FINISHED

    def poll(self, now: float) -> list[Send]:
        """Act on every deadline at or before ``now``: re-send, or fail with :class:`RequestTimeout`."""
        sends: list[Send] = []
        for pending in list(self._pending.values()):
            if now < pending.deadline:
                continue
            if pending.backing_off:
                reason = "busy"
            elif pending.attempts <= self.config.retries:
                reason = "timeout"
            else:
                self._finish(pending, RequestTimeout(
                    f"service {pending.service!r}, request {pending.request_id}: no reply within "
                    f"{self.timeout:g} s, {pending.attempts} attempt(s)",
                    service=pending.service, request_id=pending.request_id,
                ))
                continue
            pending.attempts += 1
            pending.backing_off = False
            pending.deadline = now + self.timeout
            sends.append(Send(pending.request_id, pending.service, pending.frames, pending.attempts, reason))
        return sends

    def next_deadline(self) -> Optional[float]:
        """The earliest time :meth:`poll` has something to do, or None if nothing is pending."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def pop_next(self) -> Optional[Outcome]:
        """The outcome of the oldest outstanding request, once it has one (else None)."""
        if self._order and self._order[0] in self._finished:
            return self._finished.pop(self._order.popleft())
        return None

    def cancel(self) -> list[str]:
        """Forget every outstanding request; return their services (for accounting)."""
        services = [
            self._pending[i].service if i in self._pending else self._finished[i].service for i in self._order
        ]
        self._order.clear()
        self._pending.clear()
        self._finished.clear()
        return services

    def _finish(self, pending: _Pending, outcome: Outcome) -> None:
        del self._pending[pending.request_id]
        self._finished[pending.request_id] = outcome


@dataclass
class ClientStats:
    """Counts kept by every :class:`Client` (with or without a Prometheus registry)."""

    sent: int = 0         # messages sent, resends included
    received: int = 0     # messages received
    retries: int = 0      # resends (after a timeout or a queue_full answer)
    not_pending: int = 0  # replies dropped because their id was not pending (late, duplicate, cancelled)
    partial: int = 0      # PARTIAL replies ignored
    invalid: int = 0      # messages that were not a valid reply in our format


class _Metrics:
    """The client's Prometheus metrics in one registry (shared by every Client given that registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.duration = Histogram(
            "ssnet_client_request_duration_seconds", "Time from sending a request to its result, retries included",
            ["service"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.requests = Counter(
            "ssnet_client_requests_total", "Requests finished, by outcome (ok or the error code)",
            ["service", "outcome"], registry=registry,
        )
        self.retries = Counter(
            "ssnet_client_retries_total", "Requests re-sent after a timeout or a queue_full answer",
            ["service"], registry=registry,
        )
        self.bytes = Counter(
            "ssnet_client_bytes_total", "Bytes of messages sent and received", ["direction"], registry=registry,
        )
        self.in_flight = Gauge("ssnet_client_in_flight", "Requests sent and not yet answered", registry=registry)
        self.ignored = Counter(
            "ssnet_client_ignored_replies_total", "Replies ignored: not_pending, partial or invalid",
            ["reason"], registry=registry,
        )


_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    metrics = _metrics_by_registry.get(registry)
    if metrics is None:
        metrics = _metrics_by_registry[registry] = _Metrics(registry)
    return metrics


class Client:
    """Requests to ssnet services through a Majordomo broker at ``endpoint``, over one DEALER socket.

    ``context``: the ZeroMQ context to make the socket in (default: the process-wide one; never terminated
    here).  ``registry``: where to register the Prometheus metrics (none without it; clients given the
    same registry share one set).

    Not thread-safe (one thread per Client, as with any ZeroMQ socket).  Several :meth:`imap` streams of
    one Client may be interleaved in that thread: whichever is being iterated also serves the others'
    replies and timeouts.  Nothing is sent until a stream is iterated.
    """

    def __init__(
        self,
        endpoint: str,
        config: Optional[ClientConfig] = None,
        *,
        registry: Optional[CollectorRegistry] = None,
        context: Optional[zmq.Context[Any]] = None,
    ) -> None:
        self.endpoint = endpoint
        self.config = config if config is not None else ClientConfig()
        self.stats = ClientStats()
        self._clock = time.monotonic
        self._ids = itertools.count(1)
        self._active: list[RequestTracker] = []
        self._in_flight_reported = 0
        self._metrics = _metrics_for(registry) if registry is not None else None
        self._closed = False
        ctx = context if context is not None else zmq.Context.instance()
        self._socket = transport.new_socket(ctx, zmq.DEALER, linger_ms=round(self.config.linger * 1000))
        try:
            with transport.zmq_errors("configure socket"):
                # No send high-water mark: what is queued is bounded by the windows and retries, and a send
                # must never block while the broker is away.
                self._socket.setsockopt(zmq.SNDHWM, 0)
                if self.config.curve is not None:
                    self.config.curve.client_side(self._socket)
            transport.connect(self._socket, endpoint)
        except BaseException:
            self._socket.close(linger=0)
            raise
        log.debug("client connected to %s", endpoint)

    # ------------------------------------------------------------------------------------------ public API
    @overload
    def imap(
        self, requests: Iterable[Request], *, timeout: Optional[float] = None, window: Optional[int] = None,
        return_exceptions: Literal[False] = False,
    ) -> Generator[Reply, None, None]: ...

    @overload
    def imap(
        self, requests: Iterable[Request], *, timeout: Optional[float] = None, window: Optional[int] = None,
        return_exceptions: Literal[True],
    ) -> Generator[Union[Reply, RequestError], None, None]: ...

    @overload
    def imap(
        self, requests: Iterable[Request], *, timeout: Optional[float] = None, window: Optional[int] = None,
        return_exceptions: bool,
    ) -> Generator[Union[Reply, RequestError], None, None]: ...

    def imap(
        self, requests: Iterable[Request], *, timeout: Optional[float] = None, window: Optional[int] = None,
        return_exceptions: bool = False,
    ) -> Generator[Union[Reply, RequestError], None, None]:
        """Send ``(service, payload)`` requests and yield their :class:`Reply` objects in submission order.

        ``requests`` is consumed lazily, keeping at most ``window`` (default ``config.window``) requests
        submitted and not yet yielded.  ``timeout`` overrides ``config.timeout`` (seconds per attempt).
        A failed request raises its :class:`RequestError` when its turn comes, which ends the iteration and
        abandons the requests still in flight; with ``return_exceptions=True`` the exception is yielded in
        its place instead and the iteration goes on.  Closing the generator early (``close()``, or dropping
        it) abandons what is in flight; answers that still arrive are dropped.  Payload buffers are sent
        without copies and may be sent again on a retry: do not modify them until their result is yielded.
        A bad service name raises :class:`ProtocolError` when that request is reached.
        """
        self._check_open()
        tracker = RequestTracker(self.config, self._ids.__next__, timeout=timeout, window=window)
        return self._run(tracker, iter(requests), return_exceptions)

    def request(self, service: str, payload: Sequence[Frame], timeout: Optional[float] = None) -> list[zmq.Frame]:
        """Send one request and wait for its result payload; raises the matching :class:`RequestError`."""
        self._check_open()
        tracker = RequestTracker(self.config, self._ids.__next__, timeout=timeout, window=1)
        results = self._run(tracker, iter([(service, payload)]), return_exceptions=False)
        try:
            outcome = next(results)
        finally:
            results.close()
        assert isinstance(outcome, Reply)
        return outcome.payload

    def has_service(self, name: str, timeout: Optional[float] = None) -> bool:
        """Whether the broker has a worker for service ``name`` (MMI ``mmi.service``)."""
        validate_service_name(name)
        payload = self.request(MMI_SERVICE, [name.encode("ascii")], timeout=timeout)
        status = frame_bytes(payload[0]) if len(payload) == 1 else None
        if status == MMI_FOUND:
            return True
        if status == MMI_NOT_FOUND:
            return False
        raise ProtocolError(f"unexpected {MMI_SERVICE} answer for {name!r}: {[frame_bytes(f)[:16] for f in payload]}")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the socket; requests still in flight are abandoned.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for tracker in self._active:
            self._account_cancelled(tracker.cancel())
        self._update_in_flight()
        with transport.zmq_errors("close socket"):
            self._socket.close()
        log.debug("client for %s closed", self.endpoint)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- engine
    def _run(
        self, tracker: RequestTracker, source: Iterator[Request], return_exceptions: bool,
    ) -> Generator[Union[Reply, RequestError], None, None]:
        self._active.append(tracker)
        exhausted = False
        try:
            while True:
                while not exhausted and tracker.has_room():
                    try:
                        service, payload = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    self._check_open()
                    self._send(tracker.submit(service, payload, self._clock()))
                    self._update_in_flight()
                outcome = tracker.pop_next()
                if outcome is not None:
                    self._account(outcome)
                    if isinstance(outcome, RequestError) and not return_exceptions:
                        raise outcome
                    yield outcome
                elif tracker.outstanding == 0:
                    return
                else:
                    self._step()
        finally:
            if tracker in self._active:
                self._active.remove(tracker)
            self._account_cancelled(tracker.cancel())
            self._update_in_flight()

    def _step(self) -> None:
        """Wait for replies until the earliest deadline of any stream; then act on the deadlines passed."""
        self._check_open()
        deadlines = [d for d in (t.next_deadline() for t in self._active) if d is not None]
        wait_ms = _MAX_WAIT_MS
        if deadlines:
            wait_ms = min(wait_ms, max(0, math.ceil((min(deadlines) - self._clock()) * 1000)))
        if self._poll(wait_ms):
            self._drain()
        now = self._clock()
        for tracker in list(self._active):
            for send in tracker.poll(now):
                self._send(send)
        self._update_in_flight()

    def _poll(self, wait_ms: int) -> bool:
        with transport.zmq_errors("poll"):
            return bool(self._socket.poll(wait_ms, zmq.POLLIN))

    def _drain(self) -> None:
        """Handle the messages waiting on the socket (first one known to be there)."""
        for _ in range(_MAX_DRAIN):
            self._handle(transport.recv(self._socket))
            if not self._poll(0):
                return

    def _handle(self, frames: list[zmq.Frame]) -> None:
        now = self._clock()
        self.stats.received += 1
        if self._metrics is not None:
            self._metrics.bytes.labels("received").inc(frames_nbytes(frames))
        try:
            reply = decode_client_reply(frames)
            if not reply.final:
                log.debug("ignoring a PARTIAL reply from %r", reply.service)
                self._ignored("partial")
                return
            body = decode_body(reply.body)
        except ProtocolError as exc:
            log.warning("ignoring a message from the broker that is not a reply of ours: %s", exc)
            self._ignored("invalid")
            return
        for tracker in self._active:
            disposition = tracker.on_reply(reply.service, body, now)
            if disposition is ReplyDisposition.NOT_PENDING:
                continue
            if disposition is ReplyDisposition.INVALID:
                log.warning("ignoring a %s body for request %d from %r", body.kind.name, body.request_id,
                            reply.service)
                self._ignored("invalid")
            return
        log.debug("dropping a %s for request %d from %r: not pending (late, duplicate or abandoned)",
                  body.kind.name, body.request_id, reply.service)
        self._ignored("not_pending")

    def _send(self, send: Send) -> None:
        self._check_open()
        transport.send(self._socket, send.frames)
        self.stats.sent += 1
        if send.attempt > 1:
            self.stats.retries += 1
            level = logging.WARNING if send.reason == "timeout" else logging.DEBUG
            log.log(level, "re-sending request %d to %r (attempt %d, after %s)", send.request_id, send.service,
                    send.attempt, send.reason)
        if self._metrics is not None:
            self._metrics.bytes.labels("sent").inc(frames_nbytes(send.frames))
            if send.attempt > 1:
                self._metrics.retries.labels(send.service).inc()

    # ------------------------------------------------------------------------------------------ accounting
    def _account(self, outcome: Outcome) -> None:
        if self._metrics is None:
            return
        if isinstance(outcome, Reply):
            self._metrics.requests.labels(outcome.service, "ok").inc()
            self._metrics.duration.labels(outcome.service).observe(outcome.rtt)
        else:
            self._metrics.requests.labels(outcome.service, outcome.code).inc()

    def _account_cancelled(self, services: list[str]) -> None:
        if self._metrics is not None:
            for service in services:
                self._metrics.requests.labels(service, "cancelled").inc()

    def _ignored(self, reason: str) -> None:
        if reason == "partial":
            self.stats.partial += 1
        elif reason == "invalid":
            self.stats.invalid += 1
        else:
            self.stats.not_pending += 1
        if self._metrics is not None:
            self._metrics.ignored.labels(reason).inc()

    def _update_in_flight(self) -> None:
        current = sum(t.in_flight for t in self._active)
        if self._metrics is not None and current != self._in_flight_reported:
            self._metrics.in_flight.inc(current - self._in_flight_reported)
        self._in_flight_reported = current

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"client for {self.endpoint} is closed")
