"""The Majordomo (RFC 18, MDP/0.2) worker base class.

A worker kind subclasses :class:`Worker` and implements :meth:`Worker.handle`: request payload in, reply payload
out.  Everything else is here: one DEALER socket to the broker, READY, heartbeats, broker liveness, reconnects
with exponential backoff, graceful shutdown on SIGTERM/SIGINT or :meth:`Worker.stop`, and metrics.

Threads.  ``handle`` runs in one handler thread, one request at a time, so that a request that takes minutes
never delays a heartbeat.  The main thread owns the socket and runs a thin loop::

    poll(broker socket, wake-up fd) -> read broker messages -> send finished replies -> heartbeat -> liveness

The handler thread never touches ZeroMQ: it takes jobs from a queue, appends each reply to a deque and writes
one byte to the wake-up socket pair, which the main loop polls next to the broker socket.  The same wake-up
socket is the ``signal.set_wakeup_fd`` of the process and what :meth:`Worker.stop` writes to, so a signal, a
stop request and a finished reply all end the poll at once; the poll timeout is only ever the time to the
next heartbeat, liveness deadline or reconnect.

Connections.  Every connection has a generation number and every job remembers the generation it came from.
When the broker has been silent for ``heartbeat_liveness * heartbeat_interval`` seconds, or sends DISCONNECT,
the socket is closed and a new one is opened after a backoff (about 1 s, 2 s, 4 s ... ``reconnect_max``, with
jitter: :mod:`ssnet_common.backoff`; back to the start once the broker speaks again).  A reply that finishes
after its connection was replaced is dropped with a log line: the broker has re-queued that request already.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import signal
import threading
import time
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import zmq
from prometheus_client import CollectorRegistry

from ssnet_common.backoff import Backoff
from ssnet_common.curve import CurveKeys
from ssnet_common.errors import ConfigError, ErrorCode, ProtocolError, TransportError
from ssnet_common.metrics import serve_metrics
from ssnet_common.protocol import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    METRICS_ADDR,
    WORKER_CONNECT,
    BodyKind,
    Disconnect,
    Frame,
    Heartbeat,
    Ready,
    WorkerReply,
    WorkerRequest,
    decode_body,
    decode_to_worker,
    error_body,
    frames_nbytes,
    is_ours,
    plain_error_body,
    result_body,
    validate_service_name,
)
from ssnet_common.transport import Waker, connect, new_socket, recv, send, zmq_errors
from ssnet_worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    ZmqSocket = zmq.Socket[bytes]

log = logging.getLogger(__name__)

_MAX_BATCH = 64  # broker messages read per loop iteration before the loop looks at replies and timers again
MAX_SLOTS = 256  # broker sessions one worker process may hold (--slots)
BATCH_WAIT = 0.005  # seconds the handler waits for the other slots' requests (--batch-wait-ms); unused at 1 slot


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class WorkerConfig:
    """Everything a :class:`Worker` needs to know; validated on construction (:class:`ConfigError`).

    ``heartbeat_interval``: seconds between our heartbeats, and the broker's expected rhythm.
    ``heartbeat_liveness``: heartbeat intervals of broker silence after which the connection is replaced.
    ``reconnect_min``/``reconnect_max``: first and largest wait before reconnecting (doubling in between).
    ``metrics_port``: serve Prometheus metrics there (0: not at all), on ``metrics_addr``.
    ``shutdown_linger``: how long the final reply and DISCONNECT may take to leave when the worker stops.
    """

    service: str
    broker: str = WORKER_CONNECT
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_liveness: int = HEARTBEAT_LIVENESS
    reconnect_min: float = 1.0
    reconnect_max: float = 32.0
    metrics_port: int = 0
    metrics_addr: str = METRICS_ADDR
    shutdown_linger: float = 2.0
    curve: Optional[CurveKeys] = None  # this worker's key pair and the broker's public key (CURVE); None: clear
    slots: int = 1  # broker sessions (MDP workers of the service) around one handler: requests in hand at once
    batch_wait: float = BATCH_WAIT  # seconds the handler waits for the other slots' requests before it starts

    def __post_init__(self) -> None:
        try:
            validate_service_name(self.service)
        except ProtocolError as exc:
            raise ConfigError(f"invalid service name {self.service!r}: {exc}") from None
        transport, sep, address = self.broker.partition("://")
        if not sep or transport not in ("tcp", "ipc", "inproc") or not address:
            raise ConfigError(f"broker endpoint must look like tcp://host:port or ipc:///path, got {self.broker!r}")
        for name in ("heartbeat_interval", "reconnect_min", "reconnect_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError(
                f"reconnect_max ({self.reconnect_max}) must not be smaller than reconnect_min ({self.reconnect_min})"
            )
        if (
            isinstance(self.heartbeat_liveness, bool) or not isinstance(self.heartbeat_liveness, int)
            or self.heartbeat_liveness < 1
        ):
            raise ConfigError(f"heartbeat_liveness must be an integer of at least 1, got {self.heartbeat_liveness!r}")
        if isinstance(self.metrics_port, bool) or not isinstance(self.metrics_port, int) or not (
            0 <= self.metrics_port <= 65535
        ):
            raise ConfigError(f"metrics_port must be a TCP port or 0, got {self.metrics_port!r}")
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or not 1 <= self.slots <= MAX_SLOTS:
            raise ConfigError(f"slots must be an integer from 1 to {MAX_SLOTS}, got {self.slots!r}")
        wait = self.batch_wait
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 60:
            raise ConfigError(f"batch_wait must be 0 to 60 seconds, got {wait!r}")
        linger = self.shutdown_linger
        if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not 0 <= linger < math.inf:
            raise ConfigError(f"shutdown_linger must be 0 or more seconds, got {linger!r}")

    @property
    def broker_timeout(self) -> float:
        """Seconds of broker silence after which the connection is replaced."""
        return self.heartbeat_interval * self.heartbeat_liveness


# ------------------------------------------------------------------------------------- pure timer state
class Liveness:
    """Heartbeat schedule and broker liveness of one connection.  Pure: every method takes the clock."""

    def __init__(self, interval: float, liveness: int, now: float) -> None:
        self.interval = interval
        self.timeout = interval * liveness
        self.last_received = now
        self.next_heartbeat = now + interval

    def received(self, now: float) -> None:
        """Any message from the broker proves it is alive."""
        self.last_received = now

    def heartbeat_due(self, now: float) -> bool:
        return now >= self.next_heartbeat

    def heartbeat_sent(self, now: float) -> None:
        """Schedule the next heartbeat one interval after the one due (no drift), or after ``now`` if late."""
        self.next_heartbeat += self.interval
        if self.next_heartbeat <= now:
            self.next_heartbeat = now + self.interval

    def expired(self, now: float) -> bool:
        """Whether the broker has been silent for ``liveness`` intervals."""
        return now - self.last_received >= self.timeout

    def age(self, now: float) -> float:
        """Seconds since the broker was last heard from."""
        return max(0.0, now - self.last_received)

    def next_deadline(self) -> float:
        """When something is next due: a heartbeat to send or the liveness check."""
        return min(self.next_heartbeat, self.last_received + self.timeout)


@dataclass
class WorkerStatus:
    """What the worker's ``/readyz`` reads (:meth:`Worker.readiness`): set by :meth:`Worker.run` and its loop, read
    from the metrics server's threads (single assignments, atomic)."""

    loaded: bool = False  # setup() has finished (the model is loaded)
    heard: Optional[float] = None  # time.monotonic() of the last message on this connection; None: none yet
    lost: Optional[str] = None  # why the previous connection was given up


# --------------------------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class _Job:
    slot: int
    generation: int
    client: bytes
    body: Sequence[Frame]
    delimited: bool


@dataclass(frozen=True)
class _Done:
    slot: int
    generation: int
    client: bytes
    delimited: bool
    reply: Sequence[Frame]
    label: str


_StopRequest = Union[int, str]  # a signal number, "stop" or "force"
REPEATED_SIGNAL_GRACE = 2.0  # seconds in which a second SIGTERM/SIGINT is taken as the same request to stop


def _describe(body: Sequence[Frame]) -> str:
    """A short name for a request body in log lines: ``request 42`` or ``plain request``."""
    if is_ours(body):
        try:
            return f"request {decode_body(body).request_id}"
        except ProtocolError:
            return "malformed request"
    return "plain request"


def _plain_error(message: str) -> list[Frame]:
    """``[b"error", b"worker_error", message]``: the error reply to a plain MDP request (no envelope)."""
    return plain_error_body(ErrorCode.WORKER_ERROR, message)


# ------------------------------------------------------------------------------------------------ worker
class Worker:
    """Base class of every worker.  Subclasses implement :meth:`handle` (and optionally :meth:`setup`).

    ``registry`` receives the worker's metrics (a fresh registry if not given); ``context`` is the ZeroMQ
    context to use (the worker makes and terminates its own if not given).  :meth:`run` blocks until the worker
    is stopped; :meth:`stop` may be called from any thread.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        registry: Optional[CollectorRegistry] = None,
        context: Optional[zmq.Context[ZmqSocket]] = None,
    ) -> None:
        self.config = config
        self.metrics = WorkerMetrics(registry if registry is not None else CollectorRegistry(), config.service)
        self._context = context
        self._stop_requests: queue.SimpleQueue[_StopRequest] = queue.SimpleQueue()
        self._waker: Optional[Waker] = None
        self._started = False
        self.status = WorkerStatus()

    # ----------------------------------------------------------------------------------- subclass API
    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        """Answer one request: its payload frames (after our envelope) in, the reply payload out.

        Runs in the handler thread, one request at a time.  Raising any exception answers the client with an
        ERROR body (``worker_error``, ``"<ExceptionType>: message"``); the worker keeps running.  A plain MDP
        request (no envelope) is handed over whole and its reply sent as is.
        """
        raise NotImplementedError

    def setup(self) -> None:
        """Called once by :meth:`run` before the worker registers with the broker (e.g. load a model)."""

    def readiness(self) -> tuple[bool, str]:
        """Ready when the model is loaded and the worker is registered with a broker it hears: something came
        from the broker on this connection (the broker heartbeats the workers it registered) within the liveness
        limit.  Served as ``/readyz`` on the metrics port."""
        status, config = self.status, self.config
        heard = status.heard
        if not status.loaded:
            return False, "loading: setup() (the model) has not finished"
        if heard is None:
            why = status.lost or f"no word yet from the broker at {config.broker}"
            return False, f"not registered: {why}"
        age = max(0.0, time.monotonic() - heard)
        if age >= config.broker_timeout:
            return False, f"broker silent for {age:.1f} s (limit {config.broker_timeout:g} s)"
        return True, f"registered as {config.service!r} at {config.broker}; broker heard {age:.1f} s ago"

    # ------------------------------------------------------------------------------------------ control
    def stop(self, *, force: bool = False) -> None:
        """Ask :meth:`run` to finish the current request, send its reply, DISCONNECT and return.

        ``force=True`` abandons the current request instead (as a second SIGTERM/SIGINT does).  Thread-safe,
        and also safe before :meth:`run` started.
        """
        self._stop_requests.put("force" if force else "stop")
        waker = self._waker
        if waker is not None:
            waker.wake()

    def run(self, *, install_signal_handlers: bool = True) -> int:
        """Serve until stopped; return the exit status (0, or 1 when a request was abandoned).

        SIGTERM and SIGINT handlers are installed (and restored on return) when ``install_signal_handlers`` is
        true and this is the main thread.  Raises :class:`TransportError` if the broker endpoint cannot be used
        and :class:`ConfigError` if the metrics endpoint cannot be served.
        """
        if self._started:
            raise RuntimeError("Worker.run() may only be called once")
        self._started = True
        # /livez from now on, during setup() too; /readyz once the model is loaded and the broker heard
        server = serve_metrics(self.metrics.registry, self.config.metrics_port, self.config.metrics_addr,
                               ready=self.readiness)
        try:
            self.setup()
            self.status.loaded = True
            return self._serve(install_signal_handlers)
        finally:
            if server is not None:
                server.close()

    def _serve(self, install_signal_handlers: bool) -> int:
        context = self._context if self._context is not None else zmq.Context()
        waker = Waker()
        self._waker = waker
        restore = _no_restore
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            restore = _install_signal_handlers(self._stop_requests, waker)
        runner = _Runner(self._answer, waker, self.config.slots, self.config.batch_wait)
        session = _Session(self, context, waker, runner, self._stop_requests)
        try:
            return session.run()
        finally:
            restore()
            session.close()
            runner.close(wait=not session.abandoned)
            self._waker = None
            waker.close()
            if self._context is None:
                context.term()

    # ------------------------------------------------------------------------------------- request path
    def answer(self, body: Sequence[Frame]) -> tuple[list[Frame], bool]:
        """The reply body for a request body and whether it succeeded; never raises.

        Our envelope: RESULT with the same request id, or ERROR ``worker_error``.  A plain body: the reply of
        :meth:`handle` as is, or ``[b"error", b"worker_error", message]``.
        """
        return self.answer_many([body])[0]

    def answer_many(self, bodies: Sequence[Sequence[Frame]]) -> list[tuple[list[Frame], bool]]:
        """:meth:`answer` for the requests in hand on every slot: their payloads go to :meth:`handle_many` at
        once; one request's failure is its own reply and no other's.  Never raises."""
        replies: list[Optional[tuple[list[Frame], bool]]] = [None] * len(bodies)
        pending: list[tuple[int, Optional[int], str]] = []  # (index in bodies, request id or None if plain, label)
        payloads: list[list[Frame]] = []
        for i, body in enumerate(bodies):
            label = _describe(body)
            if not is_ours(body):
                pending.append((i, None, label))
                payloads.append(list(body))
                continue
            try:
                request = decode_body(body)
            except ProtocolError as exc:
                log.warning("malformed request envelope: %s", exc)
                replies[i] = _plain_error(f"ProtocolError: {exc}"), False
                continue
            if request.kind != BodyKind.REQUEST:
                message = f"ProtocolError: expected a REQUEST body, got {request.kind.name}"
                log.warning("%s: %s", label, message)
                replies[i] = error_body(request.request_id, ErrorCode.WORKER_ERROR, message).encode(), False
                continue
            pending.append((i, request.request_id, label))
            payloads.append(list(request.payload))
        if payloads:
            for (i, request_id, label), outcome in zip(pending, self._handle_all(payloads)):
                failure: Optional[BaseException] = outcome if isinstance(outcome, BaseException) else None
                if failure is None:
                    try:
                        frames = self._checked(outcome)  # type: ignore[arg-type]
                    except TypeError as exc:
                        failure = exc
                    else:
                        replies[i] = (frames, True) if request_id is None else (
                            result_body(request_id, frames).encode(), True)
                        continue
                log.error("%s: %s failed", label, type(self).__name__, exc_info=failure)
                message = f"{type(failure).__name__}: {failure}"
                error = _plain_error(message) if request_id is None else (
                    error_body(request_id, ErrorCode.WORKER_ERROR, message).encode())
                replies[i] = error, False
        return [reply for reply in replies if reply is not None]

    def handle_many(self, payloads: list[list[Frame]]) -> list[Union[Sequence[Frame], BaseException]]:
        """Answer several requests at once: one reply payload, or the exception that failed it, per payload.

        The worker hands over every request in hand on its slots (``WorkerConfig.slots``) at once, so a kind
        that can batch (SSNet: one forward pass over the images of several requests) overrides this.  The
        default calls :meth:`handle` for each in turn.
        """
        outcomes: list[Union[Sequence[Frame], BaseException]] = []
        for payload in payloads:
            try:
                outcomes.append(self.handle(payload))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _handle_all(self, payloads: list[list[Frame]]) -> list[Union[Sequence[Frame], BaseException]]:
        """:meth:`handle_many`, its own failure (or a wrong number of replies) failing every request."""
        try:
            outcomes = list(self.handle_many(payloads))
        except Exception as exc:
            return [exc] * len(payloads)
        if len(outcomes) != len(payloads):
            error = RuntimeError(f"handle_many() gave {len(outcomes)} replies for {len(payloads)} requests")
            return [error] * len(payloads)
        return outcomes

    @staticmethod
    def _checked(reply: Sequence[Frame]) -> list[Frame]:
        frames = list(reply)
        try:
            frames_nbytes(frames)
        except TypeError:
            kinds = sorted({type(frame).__name__ for frame in frames})
            raise TypeError(f"handle() must return a sequence of buffers (bytes, ...), got {kinds}") from None
        return frames

    def _answer(self, jobs: Sequence[_Job]) -> list[_Done]:
        """Handler thread: run the jobs in hand (one per busy slot) together, time them, count them."""
        labels = [_describe(job.body) for job in jobs]
        if log.isEnabledFor(logging.DEBUG):
            for job, label in zip(jobs, labels):
                log.debug("%s: handling (%d frames, %d bytes)", label, len(job.body), frames_nbytes(job.body))
        started = time.perf_counter()
        try:
            outcomes = self.answer_many([job.body for job in jobs])
        except BaseException as exc:  # answer_many() catches Exception; this is SystemExit & co. from handle()
            log.exception("%s: handler thread interrupted", ", ".join(labels))
            outcomes = [(_plain_error(f"{type(exc).__name__}: {exc}"), False)] * len(jobs)
        seconds = time.perf_counter() - started
        done = []
        for job, label, (reply, ok) in zip(jobs, labels, outcomes):
            self.metrics.request_done(ok, seconds)
            log.debug("%s: %s in %.3f s", label, "done" if ok else "failed", seconds)
            done.append(_Done(job.slot, job.generation, job.client, job.delimited, reply, label))
        return done


def _no_restore() -> None:
    pass


def _install_signal_handlers(requests: queue.SimpleQueue[_StopRequest], waker: Waker) -> Callable[[], None]:
    """SIGTERM/SIGINT put their number on ``requests``; the wake-up fd ends the main loop's poll at once."""

    def on_signal(signum: int, frame: Optional[types.FrameType]) -> None:
        requests.put(signum)  # SimpleQueue.put is reentrant: safe in a signal handler

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_fd = signal.set_wakeup_fd(waker.write_fileno(), warn_on_full_buffer=False)

    def restore() -> None:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore


class _Runner:
    """The handler thread: jobs in through a queue, replies out through a deque plus a wake-up.

    It takes every job in hand at once (at most ``slots``: one per slot), waiting up to ``batch_wait`` seconds
    after the first for the other slots' jobs, and answers them together."""

    def __init__(self, answer: Callable[[Sequence[_Job]], list[_Done]], waker: Waker, slots: int = 1,
                 batch_wait: float = 0.0) -> None:
        self._answer = answer
        self._waker = waker
        self._slots = slots
        self._batch_wait = batch_wait
        self._jobs: queue.SimpleQueue[Optional[_Job]] = queue.SimpleQueue()
        self.done: collections.deque[_Done] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="ssnet-worker-handler", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def close(self, wait: bool) -> None:
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _take(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and the jobs that join it; and whether the queue said to stop."""
        jobs = [first]
        deadline = time.monotonic() + self._batch_wait
        while len(jobs) < self._slots:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._jobs.get()
            if first is None:
                return
            jobs, closing = self._take(first)
            self.done.extend(self._answer(jobs))
            self._waker.wake()


@dataclass
class _Connection:
    socket: ZmqSocket
    generation: int
    liveness: Liveness


class _Slot:
    """One broker session: its connection (None between connections), reconnect schedule and request in hand."""

    def __init__(self, index: int, backoff: Backoff, now: float) -> None:
        self.index = index
        self.name = f"slot {index}"
        self.conn: Optional[_Connection] = None
        self.connections = 0  # made so far (a reconnect is any after the first)
        self.backoff = backoff
        self.reconnect_at = now
        self.in_flight = 0


class _Session:
    """The main loop's state for one :meth:`Worker.run`: ``config.slots`` broker sessions, one handler."""

    def __init__(
        self,
        worker: Worker,
        context: zmq.Context[ZmqSocket],
        waker: Waker,
        runner: _Runner,
        stop_requests: queue.SimpleQueue[_StopRequest],
    ) -> None:
        self.config = worker.config
        self.metrics = worker.metrics
        self.status = worker.status
        self.context = context
        self.waker = waker
        self.runner = runner
        self.stop_requests = stop_requests
        self.poller = zmq.Poller()
        self.poller.register(waker.fileno(), zmq.POLLIN)
        now = time.monotonic()
        self.slots = [_Slot(i, Backoff(self.config.reconnect_min, self.config.reconnect_max), now)
                      for i in range(self.config.slots)]
        self.by_socket: dict[ZmqSocket, _Slot] = {}
        self.generation = 0  # connections of every slot, numbered in order: a job remembers its connection's
        self.last_heard = now
        self.stop_level = 0  # 0 running, 1 finish the current requests and stop, 2 stop now
        self.stopping_since = 0.0  # when stop_level became 1
        self.abandoned = False

    @property
    def in_flight(self) -> int:
        return sum(slot.in_flight for slot in self.slots)

    def _label(self, slot: _Slot) -> str:
        return f" ({slot.name})" if len(self.slots) > 1 else ""

    # ------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        while True:
            self._take_stop_requests()
            in_flight = self.in_flight
            if self.stop_level >= 2 and in_flight:
                log.error("stopping now: abandoning %d request(s) in progress", in_flight)
                self.abandoned = True
                return self._finish(1)
            if self.stop_level and not in_flight:
                return self._finish(0)
            now = time.monotonic()
            if not self.stop_level:
                for slot in self.slots:
                    if slot.conn is None and now >= slot.reconnect_at:
                        self._connect(slot, now)
            events = dict(self.poller.poll(self._timeout_ms(time.monotonic())))
            if self.waker.fileno() in events:
                self.waker.drain()
            for sock in events:
                ready = self.by_socket.get(sock)
                if ready is not None:
                    self._receive(ready)
            self._deliver()
            self._tick(time.monotonic())

    def _timeout_ms(self, now: float) -> int:
        deadline = now + self.config.heartbeat_interval  # at least once per interval: keep the gauges fresh
        for slot in self.slots:
            if slot.conn is not None:
                deadline = min(deadline, slot.conn.liveness.next_deadline())
            elif not self.stop_level:
                deadline = min(deadline, slot.reconnect_at)
        return max(0, math.ceil((deadline - now) * 1000))

    def _take_stop_requests(self) -> None:
        while True:
            try:
                request = self.stop_requests.get_nowait()
            except queue.Empty:
                return
            now = time.monotonic()
            if request == "force":
                level = 2
            elif request == "stop":
                level = max(self.stop_level, 1)
            elif self.stop_level == 1 and now - self.stopping_since < REPEATED_SIGNAL_GRACE:
                log.info("signal %s again within %g s: ignored (container runtimes may forward one signal twice)",
                         request, REPEATED_SIGNAL_GRACE)
                continue
            else:
                level = min(self.stop_level + 1, 2)
            if level == self.stop_level:
                continue
            if level == 1:
                self.stopping_since = now
            self.stop_level = level
            what = signal.Signals(request).name if isinstance(request, int) else f"{request}()"
            in_flight = self.in_flight
            if level == 1 and in_flight:
                log.info("%s: finishing the current %s, then disconnecting", what,
                         "request" if in_flight == 1 else f"{in_flight} requests")
            elif level == 1:
                log.info("%s: disconnecting", what)
            elif in_flight:
                log.warning("%s: stopping without finishing the current %s", what,
                            "request" if in_flight == 1 else f"{in_flight} requests")

    def _tick(self, now: float) -> None:
        self.metrics.broker_heartbeat_age.set(max(0.0, now - self.last_heard))
        for slot in self.slots:
            conn = slot.conn
            if conn is None:
                continue
            if conn.liveness.expired(now):
                self._drop(slot, f"broker silent for {conn.liveness.age(now):.1f} s")
            elif conn.liveness.heartbeat_due(now):
                conn.liveness.heartbeat_sent(now)
                if self._send(slot, Heartbeat().encode()):
                    self.metrics.heartbeats_sent.inc()

    # ---------------------------------------------------------------------------------- connections
    def _connect(self, slot: _Slot, now: float) -> None:
        self.generation += 1
        slot.connections += 1
        if slot.connections > 1:
            self.metrics.reconnects.inc()
        sock: ZmqSocket = new_socket(self.context, zmq.DEALER, linger_ms=0)
        try:
            with zmq_errors("set socket options"):
                # A send never blocks the loop for long: at worst a heartbeat interval, then it counts as failed.
                sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.config.heartbeat_interval * 1000)))
                if self.config.curve is not None:
                    self.config.curve.client_side(sock)
            connect(sock, self.config.broker)
        except TransportError:
            sock.close(linger=0)
            raise
        slot.conn = _Connection(sock, self.generation, Liveness(
            self.config.heartbeat_interval, self.config.heartbeat_liveness, now,
        ))
        self.by_socket[sock] = slot
        if all(other.conn is None for other in self.slots if other is not slot):
            self.status.heard = None  # ready again once this connection hears the broker
        self.poller.register(sock, zmq.POLLIN)
        log.info(
            "connecting to broker %s as service %r (connection %d%s)",
            self.config.broker, self.config.service, slot.connections,
            f", slot {slot.index}" if len(self.slots) > 1 else "",
        )
        self._send(slot, Ready(self.config.service).encode())

    def _close(self, slot: _Slot, linger: float = 0.0) -> None:
        conn = slot.conn
        if conn is None:
            return
        slot.conn = None
        del self.by_socket[conn.socket]
        self.poller.unregister(conn.socket)
        conn.socket.close(linger=int(linger * 1000))

    def _drop(self, slot: _Slot, reason: str) -> None:
        """Close the slot's connection and schedule its next one after a backoff."""
        if slot.conn is None:
            return
        self._close(slot)
        if all(other.conn is None for other in self.slots):
            self.status.heard = None
        self.status.lost = reason
        delay = slot.backoff.next_delay()
        slot.reconnect_at = time.monotonic() + delay
        if self.stop_level:
            log.warning("%s%s: connection closed while stopping", reason, self._label(slot))
        else:
            log.warning("%s%s: reconnecting in %.1f s", reason, self._label(slot), delay)

    def _send(self, slot: _Slot, frames: list[Frame]) -> bool:
        conn = slot.conn
        if conn is None:
            return False
        try:
            send(conn.socket, frames)
        except TransportError as exc:
            self.metrics.errors.inc()
            self._drop(slot, f"cannot send to broker: {exc}")
            return False
        return True

    def _finish(self, status: int) -> int:
        for slot in self.slots:
            if slot.conn is not None:
                self._send(slot, Disconnect().encode())
        self.close(linger=self.config.shutdown_linger)
        log.info("stopped")
        return status

    def close(self, linger: float = 0.0) -> None:
        for slot in self.slots:
            if slot.conn is not None:
                self._close(slot, linger)
        self.status.heard, self.status.lost = None, "stopped"

    # ------------------------------------------------------------------------------------- messages
    def _receive(self, slot: _Slot) -> None:
        for _ in range(_MAX_BATCH):
            conn = slot.conn
            if conn is None:
                return
            try:
                if not conn.socket.poll(0, zmq.POLLIN):
                    return
                frames = recv(conn.socket)
            except (TransportError, zmq.ZMQError) as exc:
                self.metrics.errors.inc()
                self._drop(slot, f"cannot receive from broker: {exc}")
                return
            now = time.monotonic()
            self.last_heard = self.status.heard = now
            conn.liveness.received(now)
            try:
                message = decode_to_worker(frames)
            except ProtocolError as exc:
                self.metrics.errors.inc()
                log.warning("ignoring a malformed message from the broker%s: %s", self._label(slot), exc)
                continue
            if isinstance(message, Heartbeat):
                slot.backoff.reset()
                self.metrics.heartbeats_received.inc()
            elif isinstance(message, Disconnect):
                self._drop(slot, "broker sent DISCONNECT")
                return
            else:
                slot.backoff.reset()
                self._dispatch(slot, conn, message)

    def _dispatch(self, slot: _Slot, conn: _Connection, request: WorkerRequest) -> None:
        if self.stop_level:
            log.warning(
                "%s arrived while stopping%s: not handled (the broker re-queues it on DISCONNECT)",
                _describe(request.body), self._label(slot),
            )
            return
        if slot.in_flight:
            log.warning("%s arrived while busy%s: queued behind %d", _describe(request.body), self._label(slot),
                        slot.in_flight)
        slot.in_flight += 1
        self.metrics.busy.set(1)
        self.runner.submit(_Job(slot.index, conn.generation, request.client, request.body, request.delimited))

    def _deliver(self) -> None:
        while self.runner.done:
            done = self.runner.done.popleft()
            slot = self.slots[done.slot]
            slot.in_flight -= 1
            if not self.in_flight:
                self.metrics.busy.set(0)
            if slot.conn is None or slot.conn.generation != done.generation:
                log.warning(
                    "%s: reply dropped, its broker connection was replaced (the broker re-queued it)", done.label
                )
                continue
            self._send(slot, WorkerReply(done.client, done.reply, final=True, delimited=done.delimited).encode())
