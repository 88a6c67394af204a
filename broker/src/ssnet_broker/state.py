"""The broker's state machine: services, idle-worker queues, request queues, expiry.  No sockets here.

Every entry point takes the current time (``time.monotonic()``) and the frames received, and returns the
messages to send as :class:`Outgoing` values; the I/O loop in :mod:`ssnet_broker.broker` only moves frames.

Rules (RFC 18 plus ours):

* Each service has a queue of idle workers, least recently used first, and a bounded queue of requests.
* A request goes to the least recently used idle worker of its service.  If its worker dies (expired or
  disconnected) before answering, it goes back to the front of the queue, at most ``max_attempts`` tries in
  all; then the client gets a ``worker_lost`` error.  A worker the broker cannot send to (the socket says
  the peer is gone: :meth:`BrokerState.on_unreachable`) is removed at once, and a request that never reached
  it does not use up one of its attempts.
* A request waiting longer than ``queue_timeout`` for a worker gets ``queue_timeout``; one for a service no
  worker ever registered gets ``unknown_service`` after ``unknown_service_timeout`` (much shorter).
* The whole state is bounded: a request arriving at a full queue (``max_queue``), when ``max_queued`` requests
  wait in all, or for a new service when ``max_services`` services are held, gets ``queue_full``.
* A request in our format that repeats the (client, request id) of one already queued or being processed is
  a client's retry of it: it is dropped, so one request is never worked on twice at once.
* Workers are sent a HEARTBEAT every ``heartbeat_interval``, idle or busy; a worker silent for
  ``heartbeat_liveness`` intervals is dropped.  Unexpected commands get DISCONNECT, as RFC 18 asks.

Besides the current state, the machine keeps what cannot be read off it later: running totals
(:class:`Counters`) and, for latency histograms, the durations it measured (:data:`Event` values, in a bounded
buffer that the loop drains with :meth:`BrokerState.drain_events` after each call).  It exports nothing itself.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence, Union

from ssnet_common import protocol as mdp
from ssnet_common.errors import ErrorCode, ProtocolError, worker_lost_message

if TYPE_CHECKING:
    from ssnet_common.protocol import Frame

log = logging.getLogger(__name__)

UNKNOWN_SERVICE_LABEL = "_unknown"
"""The one name under which totals and events count services no worker ever registered (clients may ask for any
name: this keeps the counters, and the metrics labels made from them, bounded)."""

MAX_EVENTS = 100_000
"""Events kept until drained; past it the oldest are dropped (only if nobody drains, or one call makes more)."""


class Side(enum.Enum):
    CLIENT = "client"
    WORKER = "worker"


class Outgoing(NamedTuple):
    """One message to send: on the client (frontend) or worker (backend) socket, to ``identity``;
    ``request``: it hands the worker a request (if it cannot be delivered, the request never reached it)."""

    side: Side
    identity: bytes
    frames: list[Frame]
    request: bool = False


class Outcome(str, enum.Enum):
    """How a request ended; the failures are also the error codes clients receive."""

    OK = "ok"
    WORKER_ERROR = ErrorCode.WORKER_ERROR.value
    QUEUE_FULL = ErrorCode.QUEUE_FULL.value
    QUEUE_TIMEOUT = ErrorCode.QUEUE_TIMEOUT.value
    UNKNOWN_SERVICE = ErrorCode.UNKNOWN_SERVICE.value
    WORKER_LOST = ErrorCode.WORKER_LOST.value


@dataclass
class Counters:
    """Running totals since the state was made; they only grow.  Services are named by :meth:`BrokerState.label`."""

    heartbeats_received: int = 0  # from known workers
    heartbeats_sent: int = 0
    finished: Counter[tuple[str, Outcome]] = field(default_factory=Counter)  # requests ended, by service and outcome
    requeues: Counter[str] = field(default_factory=Counter)  # requests put back in the queue as their worker died
    expirations: Counter[str] = field(default_factory=Counter)  # workers dropped for silence
    unreachable: Counter[str] = field(default_factory=Counter)  # workers dropped as the socket could not reach them
    rejected: Counter[str] = field(default_factory=Counter)  # requests refused, by the bound: max_queue, max_queued,
    #                                                          max_services


class Dispatched(NamedTuple):
    """A worker of ``service`` took a request that had waited ``waited`` seconds in the queue."""

    service: str
    waited: float


class Finished(NamedTuple):
    """A request for ``service`` (see :meth:`BrokerState.label`) ended with ``outcome``, ``seconds`` after arriving."""

    service: str
    outcome: Outcome
    seconds: float


Event = Union[Dispatched, Finished]


class Request:
    """A client's request while the broker holds it (queued, or with a worker)."""

    __slots__ = ("attempts", "client", "key", "message", "queued", "received", "request_id", "service")

    def __init__(self, client: bytes, message: mdp.ClientRequest, received: float, queued: float,
                 attempts: int = 0, request_id: Optional[int] = None) -> None:
        self.client = client
        self.message = message
        self.service = message.service
        self.received = received
        self.queued = queued
        self.attempts = attempts
        self.request_id = request_id  # set for requests in our format
        self.key: Optional[tuple[bytes, int]] = None if request_id is None else (client, request_id)

    def __repr__(self) -> str:
        return (f"Request(client={self.client!r}, service={self.service!r}, request_id={self.request_id}, "
                f"attempts={self.attempts})")


@dataclass
class Worker:
    identity: bytes
    service: str
    delimited: bool
    expires: float
    last_seen: float
    request: Optional[Request] = None


@dataclass
class Service:
    name: str
    idle: OrderedDict[bytes, Worker] = field(default_factory=OrderedDict)  # front = least recently used
    queue: deque[Request] = field(default_factory=deque)
    workers: int = 0


@dataclass(frozen=True)
class Limits:
    heartbeat_interval: float = mdp.HEARTBEAT_INTERVAL
    heartbeat_liveness: int = mdp.HEARTBEAT_LIVENESS
    queue_timeout: float = 300.0
    max_queue: int = 10000
    max_attempts: int = 3
    unknown_service_timeout: float = 10.0
    max_queued: int = 100_000
    max_services: int = 1000

    @property
    def worker_ttl(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


class BrokerState:
    """Everything the broker knows; see the module docstring for the rules."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.services: dict[str, Service] = {}
        self.workers: dict[bytes, Worker] = {}
        self.registered: set[str] = set()  # services that ever had a worker
        self.pending: set[tuple[bytes, int]] = set()  # (client, request id) queued or being processed
        self.next_heartbeat = now + limits.heartbeat_interval
        self.counters = Counters()
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._worker_ttl = limits.worker_ttl
        self._queued = 0  # requests in all the services' queues (changed with them)

    # ----------------------------------------------------------------------------------- queries
    def has_workers(self, service: str) -> bool:
        found = self.services.get(service)
        return found is not None and found.workers > 0

    def label(self, service: str) -> str:
        """``service``, or :data:`UNKNOWN_SERVICE_LABEL` if no worker ever registered for it."""
        return service if service in self.registered else UNKNOWN_SERVICE_LABEL

    def queued(self) -> int:
        """Requests waiting for a worker, in all services."""
        return self._queued

    def next_timer(self, now: float) -> float:
        """Seconds until the next heartbeat is due (the loop's longest poll)."""
        return max(0.0, self.next_heartbeat - now)

    def drain_events(self) -> list[Event]:
        """The events since the last call, oldest first (the loop hands them to the latency histograms)."""
        events = list(self.events)
        self.events.clear()
        return events

    # ------------------------------------------------------------------------------ client side
    def on_client(self, identity: bytes, frames: Sequence[Frame], now: float) -> list[Outgoing]:
        """A message from client ``identity``.  Raises :class:`ProtocolError` for malformed frames."""
        message = mdp.decode_client_request(frames)
        request_id = None
        envelope = mdp.peek_envelope(message.body)
        if envelope is not None:
            kind, request_id = envelope
            if kind != mdp.BodyKind.REQUEST:
                raise ProtocolError("a client may only send REQUEST bodies")
        name = message.service
        if name.startswith(mdp.MMI_PREFIX):
            reply = mdp.mmi_reply(message, self.has_workers)
            return [Outgoing(Side.CLIENT, identity, reply.encode())]
        request = Request(identity, message, now, now, request_id=request_id)
        key = request.key
        if key is not None and key in self.pending:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("dropped retry of request %d of client %s: already in hand", request_id, identity.hex())
            return []
        service = self.services.get(name)
        refused = self._refusal(name, service)
        if refused is not None:
            bound, why = refused
            self.counters.rejected[bound] += 1
            return [self._fail(request, Outcome.QUEUE_FULL, why, now, quiet=True)]
        if service is None:
            service = self.services[name] = Service(name)
        if key is not None:
            self.pending.add(key)
        service.queue.append(request)
        self._queued += 1
        return self._dispatch(service, now)

    def _refusal(self, name: str, service: Optional[Service]) -> Optional[tuple[str, str]]:
        """(bound, why) if a request for service ``name`` (held as ``service``, or not held) would overstep a
        bound of the state, else None."""
        limits = self.limits
        if service is None:
            if len(self.services) >= limits.max_services:
                return "max_services", f"the broker holds {len(self.services)} services, its most; not {name!r}"
        elif len(service.queue) >= limits.max_queue:
            return "max_queue", f"queue of service {name!r} is full ({limits.max_queue} requests)"
        if self._queued >= limits.max_queued:
            return "max_queued", f"the broker holds {limits.max_queued} queued requests, its most"
        return None

    # ------------------------------------------------------------------------------ worker side
    def on_worker(self, identity: bytes, frames: Sequence[Frame], now: float) -> list[Outgoing]:
        """A message from worker ``identity``.  Raises :class:`ProtocolError` for malformed frames."""
        message = mdp.decode_from_worker(frames)
        worker = self.workers.get(identity)
        if worker is not None:
            worker.expires = now + self._worker_ttl
            worker.last_seen = now
            if message.__class__ is mdp.WorkerReply:  # the common case first
                return self._on_reply(worker, message, now)
        if isinstance(message, mdp.Ready):
            return self._on_ready(identity, message, worker, now)
        if isinstance(message, mdp.Disconnect):
            return self._remove(worker, now, "disconnected") if worker is not None else []
        if worker is None:
            log.info("message from unknown worker %s: sending DISCONNECT", identity.hex())
            return [Outgoing(Side.WORKER, identity, mdp.Disconnect(message.delimited).encode())]
        if isinstance(message, mdp.Heartbeat):
            self.counters.heartbeats_received += 1
            return []
        return self._on_reply(worker, message, now)

    def on_unreachable(self, identity: bytes, now: float, *, delivered: bool = True) -> list[Outgoing]:
        """The socket could not send to worker ``identity``: it is gone.  ``delivered``: False when the message
        that failed handed it its request, which then never reached it and does not count as an attempt."""
        worker = self.workers.get(identity)
        if worker is None:
            return []
        if worker.request is not None and not delivered:
            worker.request.attempts -= 1
        self.counters.unreachable[worker.service] += 1
        return self._remove(worker, now, "unreachable")

    def _on_ready(self, identity: bytes, ready: mdp.Ready, known: Optional[Worker], now: float) -> list[Outgoing]:
        if known is not None or ready.service.startswith(mdp.MMI_PREFIX):
            reason = "a second READY" if known is not None else f"reserved service name {ready.service!r}"
            log.warning("worker %s sent %s: sending DISCONNECT", identity.hex(), reason)
            out = self._remove(known, now, "protocol violation") if known is not None else []
            return [*out, Outgoing(Side.WORKER, identity, mdp.Disconnect(ready.delimited).encode())]
        worker = Worker(identity, ready.service, ready.delimited, now + self._worker_ttl, now)
        self.workers[identity] = worker
        self.registered.add(ready.service)
        service = self._service(ready.service)
        service.workers += 1
        service.idle[identity] = worker
        log.info("worker %s ready for service %r (%d workers)", identity.hex(), ready.service, service.workers)
        return self._dispatch(service, now)

    def _on_reply(self, worker: Worker, reply: mdp.WorkerReply, now: float) -> list[Outgoing]:
        request = worker.request
        if request is None or reply.client != request.client:
            log.warning("worker %s answered a request it does not hold: sending DISCONNECT", worker.identity.hex())
            out = self._remove(worker, now, "protocol violation")
            return [*out, Outgoing(Side.WORKER, worker.identity, mdp.Disconnect(worker.delimited).encode())]
        answer = mdp.client_reply_frames(request.service, reply.body, final=reply.final,
                                         delimited=request.message.delimited)
        out = [Outgoing(Side.CLIENT, request.client, answer)]
        if not reply.final:
            return out
        worker.request = None
        if request.key is not None:
            self.pending.discard(request.key)
        service = self._service(worker.service)
        service.idle[worker.identity] = worker  # most recently used: back of the queue
        self._finished(request, Outcome.WORKER_ERROR if mdp.is_error_body(reply.body) else Outcome.OK, now)
        if service.queue:
            out += self._dispatch(service, now)
        return out

    # ------------------------------------------------------------------------------ timers
    def purge(self, now: float) -> list[Outgoing]:
        """Drop workers silent too long, and fail requests that waited too long for a worker."""
        out: list[Outgoing] = []
        for worker in [w for w in self.workers.values() if w.expires < now]:
            log.warning("worker %s of service %r expired (silent %.1f s)",
                        worker.identity.hex(), worker.service, now - worker.last_seen)
            self.counters.expirations[worker.service] += 1
            out += self._remove(worker, now, "expired")
        for service in list(self.services.values()):
            known = service.name in self.registered
            deadline = now - (self.limits.queue_timeout if known else self.limits.unknown_service_timeout)
            late = [r for r in service.queue if r.queued < deadline]
            if late:
                service.queue = deque(r for r in service.queue if r.queued >= deadline)
                self._queued -= len(late)
            for request in late:
                if known:
                    out.append(self._fail(request, Outcome.QUEUE_TIMEOUT,
                                          f"no worker of service {service.name!r} took the request within "
                                          f"{self.limits.queue_timeout:g} s", now))
                else:
                    out.append(self._fail(request, Outcome.UNKNOWN_SERVICE,
                                          f"no worker for service {service.name!r} (none has offered it; "
                                          f"waited {self.limits.unknown_service_timeout:g} s)", now))
            self._forget_if_unused(service)
        return out

    def heartbeat(self, now: float) -> list[Outgoing]:
        """HEARTBEAT every worker, idle or busy, once per interval."""
        if now < self.next_heartbeat:
            return []
        self.next_heartbeat = now + self.limits.heartbeat_interval
        self.counters.heartbeats_sent += len(self.workers)
        return [Outgoing(Side.WORKER, w.identity, mdp.Heartbeat(w.delimited).encode()) for w in self.workers.values()]

    def shutdown(self) -> list[Outgoing]:
        """DISCONNECT every worker (the broker is stopping; they will reconnect to its successor)."""
        out = [Outgoing(Side.WORKER, w.identity, mdp.Disconnect(w.delimited).encode()) for w in self.workers.values()]
        self.workers.clear()
        self.services.clear()
        self.pending.clear()
        self._queued = 0
        return out

    # ------------------------------------------------------------------------------ internals
    def _service(self, name: str) -> Service:
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = Service(name)
        return service

    def _forget_if_unused(self, service: Service) -> None:
        if not service.workers and not service.queue:
            del self.services[service.name]

    def _dispatch(self, service: Service, now: float) -> list[Outgoing]:
        out = []
        idle, queue = service.idle, service.queue
        while idle and queue:
            _, worker = idle.popitem(last=False)
            request = queue.popleft()
            self._queued -= 1
            request.attempts += 1
            worker.request = request
            self.events.append(Dispatched(service.name, now - request.queued))
            frames = mdp.worker_request_frames(request.client, request.message.body, delimited=worker.delimited)
            out.append(Outgoing(Side.WORKER, worker.identity, frames, True))
        return out

    def _remove(self, worker: Worker, now: float, why: str) -> list[Outgoing]:
        """Forget ``worker``; its request (if any) goes back to the front of the queue or fails."""
        del self.workers[worker.identity]
        service = self._service(worker.service)
        service.workers -= 1
        service.idle.pop(worker.identity, None)
        log.info("worker %s of service %r removed (%s); %d left", worker.identity.hex(), worker.service, why,
                 service.workers)
        request, worker.request = worker.request, None
        out: list[Outgoing] = []
        if request is not None:
            if request.attempts >= self.limits.max_attempts:
                out.append(self._fail(request, Outcome.WORKER_LOST, worker_lost_message(request.attempts, service.name),
                                      now))
            else:
                log.info("request of client %s goes back to the queue of %r (attempt %d of %d)",
                         request.client.hex(), service.name, request.attempts + 1, self.limits.max_attempts)
                self.counters.requeues[service.name] += 1
                request.queued = now
                service.queue.appendleft(request)
                self._queued += 1
                out += self._dispatch(service, now)
        self._forget_if_unused(service)
        return out

    def _forget(self, request: Request) -> None:
        if request.key is not None:
            self.pending.discard(request.key)

    def _fail(self, request: Request, outcome: Outcome, message: str, now: float, *, quiet: bool = False
              ) -> Outgoing:
        """The error reply for ``request``; ``quiet``: logged at DEBUG only (refusals a flood may cause by the
        thousand: the metrics count them)."""
        self._forget(request)
        level = logging.DEBUG if quiet else logging.WARNING
        if log.isEnabledFor(level):  # a flood of refusals formats nothing
            log.log(level, "request of client %s for %r failed: %s", request.client.hex(), request.service, message)
        self._finished(request, outcome, now)
        reply = mdp.broker_error(request.message, outcome.value, message)
        return Outgoing(Side.CLIENT, request.client, reply.encode())

    def _finished(self, request: Request, outcome: Outcome, now: float) -> None:
        label = self.label(request.service)
        self.counters.finished[label, outcome] += 1
        self.events.append(Finished(label, outcome, now - request.received))


__all__ = ["BrokerState", "Counters", "Dispatched", "Event", "Finished", "Limits", "Outcome", "Outgoing",
           "ProtocolError", "Side"]
