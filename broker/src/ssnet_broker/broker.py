"""The broker's I/O loop: two ROUTER sockets around :class:`~ssnet_broker.state.BrokerState`.

poll → handle the messages waiting, in batches → purge → heartbeat; after each batch, hand the state's events to
the latency histograms and send what the state machine returned.  Frames received are forwarded as the same
``zmq.Frame`` objects, so request and reply bodies cross the broker without copies.  The loop changes the state
only while holding :attr:`Broker.lock`, under which the metrics collector (another thread) reads it.

The per-message path is kept lean (``bench/broker_rate.py`` measures it): a batch of up to :data:`BATCH` messages
shares one clock reading and hands its events to the histograms in one call; what a message causes is sent at once,
workers' messages first (with one request per worker, a worker's wait for its next request is the broker's
throughput); frames move through :func:`~ssnet_common.transport.recv_frames` and
:func:`~ssnet_common.transport.send_routed` rather than pyzmq's slower multipart helpers.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

from ssnet_broker.auth import ZAP_ENDPOINT, KeyRing, answer
from ssnet_broker.state import BrokerState, Limits, Outgoing, Side
from ssnet_common import transport
from ssnet_common.curve import CLIENTS, WORKERS, CurveKeys
from ssnet_common.errors import ProtocolError, TransportError
from ssnet_common.protocol import BACKEND_BIND, FRONTEND_BIND, METRICS_ADDR
from ssnet_common.rendezvous import probe_broker

if TYPE_CHECKING:
    from types import FrameType

    from prometheus_client import CollectorRegistry

    from ssnet_broker.metrics import BrokerCollector

log = logging.getLogger(__name__)

PURGE_PERIOD = 0.1  # seconds between expiry scans; far below any sensible heartbeat interval
BATCH = 64  # messages handled with one clock reading, their events handed to the histograms together
MAX_PER_POLL = 1024  # messages taken from one socket per poll, so one busy side cannot starve the other
ASK_FIRST = 4  # messages of a round before which the socket is asked whether one waits (a receive that fails
#               costs about four askings, so asking pays for short rounds; past these, receive until one fails)
REFUSAL_LOG_PERIOD = 5.0  # seconds between log lines about refused connections, per side
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def reachable_by_others(endpoint: str) -> bool:
    """Whether a ``tcp://`` bind address listens beyond this machine (not loopback)."""
    transport_name, _, address = endpoint.partition("://")
    host = address.rsplit(":", 1)[0].strip("[]")
    return transport_name == "tcp" and host not in ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker listens and its bounds; ``curve``: its key pair, with ``authorized`` naming the
    directories of the public keys allowed per side (:data:`~ssnet_common.curve.CLIENTS`, ``WORKERS``)."""

    frontend: str = FRONTEND_BIND
    backend: str = BACKEND_BIND
    limits: Limits = field(default_factory=Limits)
    metrics_port: int = 0
    metrics_addr: str = METRICS_ADDR
    curve: Optional[CurveKeys] = None
    authorized: dict[str, Path] = field(default_factory=dict)


@dataclass
class Traffic:
    """What the loop itself counts (the state machine never sees bytes or undecodable messages)."""

    bytes_in: int = 0
    bytes_out: int = 0
    malformed: Counter[str] = field(default_factory=Counter)  # messages dropped, by side (changed under the lock)
    auth_failures: Counter[str] = field(default_factory=Counter)  # connections refused by CURVE, by side
    # messages the broker could not send, by (side, reason): "gone" (no such peer) or "full" (its queue at the HWM)
    undeliverable: Counter[tuple[str, str]] = field(default_factory=Counter)


class Broker:
    """Binds the frontend (clients) and backend (workers) and runs until :meth:`stop` or SIGTERM/SIGINT.

    With a ``registry``, the broker's metrics are registered on it (serve it once the broker is made).
    """

    def __init__(self, config: BrokerConfig, registry: Optional[CollectorRegistry] = None,
                 context: Optional[zmq.Context] = None) -> None:  # type: ignore[type-arg]
        self.config = config
        self.context = context or zmq.Context.instance()
        self.state = BrokerState(config.limits, time.monotonic())
        self.traffic = Traffic()
        self.lock = threading.Lock()  # held while the state changes; the metrics collector reads it under the lock
        self.metrics: Optional[BrokerCollector] = None
        if registry is not None:
            from ssnet_broker.metrics import BrokerCollector

            self.metrics = BrokerCollector(self.state, self.traffic, self.lock)
            registry.register(self.metrics)
        self._waker = transport.Waker()
        self._stopping = False
        self.bound = threading.Event()  # both sockets bound: what /readyz reports (readiness())
        self._zap: Optional[zmq.Socket] = None  # type: ignore[type-arg]
        self._keys: Optional[KeyRing] = None
        self._monitors: dict[zmq.Socket, Side] = {}  # type: ignore[type-arg]
        self._refused: Counter[Side] = Counter()  # refusals not yet logged
        self._refusal_logged: dict[Side, float] = {}
        self._zap_logged = -REFUSAL_LOG_PERIOD

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe, signal-safe)."""
        self._stopping = True
        self._waker.wake()

    def run(self) -> None:
        frontend = transport.new_socket(self.context, zmq.ROUTER)
        backend = transport.new_socket(self.context, zmq.ROUTER)
        extra: list[zmq.Socket] = []  # type: ignore[type-arg]
        try:
            for sock in (frontend, backend):
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished peer is an error we log, not a silent drop
            curve = self.config.curve
            if curve is not None:  # the ZAP handler first: libzmq asks it about every CURVE peer
                self._zap = transport.new_socket(self.context, zmq.REP)
                extra.append(self._zap)
                transport.bind(self._zap, ZAP_ENDPOINT)
                self._keys = KeyRing(self.config.authorized, time.monotonic, always={curve.public})
                for side, sock, domain in ((Side.CLIENT, frontend, CLIENTS), (Side.WORKER, backend, WORKERS)):
                    curve.server_side(sock, domain)
                    monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
                    self._monitors[monitor] = side
                    extra.append(monitor)
            transport.bind(frontend, self.config.frontend)
            transport.bind(backend, self.config.backend)
            self.bound.set()
            security = "CURVE" if curve is not None else "in the clear"
            log.info("broker up (%s): clients on %s, workers on %s", security, self.config.frontend,
                     self.config.backend)
            if curve is None:
                for endpoint in (self.config.frontend, self.config.backend):
                    if reachable_by_others(endpoint):
                        log.warning("%s is reachable from other machines and runs without CURVE: anyone who can "
                                    "reach it can submit work or register workers (see --curve-secret)", endpoint)
            self._loop(frontend, backend)
        finally:
            self.bound.clear()
            for sock in extra:
                sock.close(linger=0)
            frontend.close(linger=0)
            backend.close(linger=0)
            self._waker.close()

    def readiness(self) -> tuple[bool, str]:
        """Ready once both sockets are bound (the metrics endpoint's ``/readyz``; any thread)."""
        if self.bound.is_set():
            return True, f"bound: clients on {self.config.frontend}, workers on {self.config.backend}"
        return False, "sockets not bound (starting or stopped)"

    def probe(self, frontend: str, timeout: float) -> bool:
        """Whether this broker answers an MMI round trip on ``frontend`` (with CURVE: as itself, a key it
        always admits)."""
        curve = self.config.curve
        keys = None if curve is None else CurveKeys(curve.public, curve.secret, server=curve.public)
        return probe_broker(frontend, timeout, keys)

    def _authenticate(self) -> None:
        """Answer the ZAP requests waiting (CURVE peers asking to connect)."""
        assert self._zap is not None and self._keys is not None
        while self._zap.poll(0):
            reply, refused = answer(self._zap.recv_multipart(), self._keys)
            now = time.monotonic()
            if refused is not None and now - self._zap_logged >= REFUSAL_LOG_PERIOD:
                log.warning("refused %s", refused)  # at most every few seconds: a refused peer retries constantly
                self._zap_logged = now
            if reply is not None:
                self._zap.send_multipart(reply)

    def _count_refusals(self, monitor: zmq.Socket) -> None:  # type: ignore[type-arg]
        """A handshake that failed (no CURVE, a bad key, an unknown key): counted by side, logged at most every
        :data:`REFUSAL_LOG_PERIOD` seconds per side (a misconfigured peer retries ten times a second)."""
        side = self._monitors[monitor]
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            with self.lock:
                self.traffic.auth_failures[side.value] += 1
            self._refused[side] += 1
            now = time.monotonic()
            if now - self._refusal_logged.get(side, -REFUSAL_LOG_PERIOD) >= REFUSAL_LOG_PERIOD:
                endpoint = event.get("endpoint", b"?")
                log.warning("refused %d %s connection(s) on %s: CURVE handshake failed (no CURVE, a wrong broker "
                            "key, or a key not authorized)", self._refused[side], side.value,
                            endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else endpoint)
                self._refusal_logged[side], self._refused[side] = now, 0

    def _loop(self, frontend: zmq.Socket, backend: zmq.Socket) -> None:  # type: ignore[type-arg]
        poller = zmq.Poller()
        poller.register(frontend, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        poller.register(self._waker, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        sockets = {Side.WORKER: backend, Side.CLIENT: frontend}  # workers first: a reply frees a worker for the queue
        state = self.state
        next_purge = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            timeout = min(state.next_timer(now), max(0.0, next_purge - now))
            try:
                ready = dict(poller.poll(int(timeout * 1000) + 1))
            except zmq.ZMQError as exc:
                raise TransportError(f"poll: {exc.strerror} (errno {exc.errno})") from exc
            if self._waker in ready:
                self._waker.drain()
            if self._zap is not None and self._zap in ready:
                self._authenticate()
            for monitor in self._monitors:
                if monitor in ready:
                    self._count_refusals(monitor)
            for side, sock in sockets.items():
                if sock in ready:
                    self._receive(side, sock, sockets)
            now = time.monotonic()
            if now >= next_purge or now >= state.next_heartbeat:
                with self.lock:
                    out: list[Outgoing] = []
                    if now >= next_purge:
                        out = state.purge(now)
                        next_purge = now + PURGE_PERIOD
                    out += state.heartbeat(now)
                    self._observe()
                if out:
                    self._send(sockets, out)
        log.info("broker stopping: %d workers told to disconnect, %d queued requests dropped",
                 len(state.workers), state.queued())
        with self.lock:
            out = state.shutdown()
            self._observe()
        self._send(sockets, out)

    def _receive(self, side: Side, sock: zmq.Socket, sockets: dict[Side, zmq.Socket]) -> None:  # type: ignore[type-arg]
        """Handle the messages waiting on ``sock`` (a poll just said one is), :data:`BATCH` at a time, at most
        :data:`MAX_PER_POLL`, so one busy side cannot starve the other."""
        handle = self.state.on_client if side is Side.CLIENT else self.state.on_worker
        recv, readable = transport.recv_frames, transport.readable
        traffic = self.traffic
        total = 0
        lock = self.lock
        polled = True  # the first message is there: no need to ask
        for _ in range(MAX_PER_POLL // BATCH):
            taken = 0
            now = time.monotonic()  # one reading per batch: a batch takes well under a millisecond
            while taken < BATCH:
                if polled:
                    polled = False
                elif total + taken < ASK_FIRST and not readable(sock):
                    break
                try:
                    frames = recv(sock)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    log.error("receive on %s socket failed: %s", side.value, exc)
                    break
                taken += 1
                traffic.bytes_in += sum(map(len, frames))  # zmq.Frame: len() is the size in bytes
                identity = frames[0].bytes
                try:
                    with lock:
                        out = handle(identity, frames[1:], now)
                except ProtocolError as exc:
                    log.warning("dropped malformed message from %s %s: %s", side.value, identity.hex(), exc)
                    with lock:
                        traffic.malformed[side.value] += 1
                    continue
                if out:  # at once: a worker waiting for its next request is throughput lost
                    self._send(sockets, out)
            if taken:
                with lock:
                    self._observe()
            total += taken
            if taken < BATCH:
                return

    def _observe(self) -> None:
        """The state's events to the latency histograms (with the lock held, under which they are scraped); drained
        with or without metrics, so they never pile up."""
        events = self.state.drain_events()
        if self.metrics is not None and events:
            self.metrics.observe(events)

    def _send(self, sockets: dict[Side, zmq.Socket], out: list[Outgoing]) -> None:  # type: ignore[type-arg]
        send = transport.send_routed
        frontend, backend = sockets[Side.CLIENT], sockets[Side.WORKER]
        sent = 0
        # Workers' messages first (a worker waiting for its next request is throughput lost; a client's reply can
        # wait the few microseconds); each socket's messages keep their order.
        messages = out if len(out) < 2 else ([m for m in out if m.side is Side.WORKER]
                                             + [m for m in out if m.side is Side.CLIENT])
        while messages:
            later: list[Outgoing] = []  # what dropping an unreachable worker gives, sent after these
            for message in messages:
                try:
                    send(frontend if message.side is Side.CLIENT else backend, message.identity, message.frames)
                except zmq.ZMQError as exc:  # peer gone (ROUTER_MANDATORY) or its queue full
                    log.warning("could not send to %s %s: %s", message.side.value, message.identity.hex(), exc)
                    reason = "gone" if exc.errno == zmq.EHOSTUNREACH else "full"
                    with self.lock:
                        self.traffic.undeliverable[message.side.value, reason] += 1
                    if message.side is Side.WORKER and exc.errno == zmq.EHOSTUNREACH:
                        with self.lock:  # the worker is gone: drop it now, its request goes to another worker
                            later += self.state.on_unreachable(message.identity, time.monotonic(),
                                                               delivered=not message.request)
                            self._observe()
                    continue
                sent += len(message.identity) + sum(map(len, message.frames))  # bytes and zmq.Frame only
            messages = later
        self.traffic.bytes_out += sent

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly (call from the main thread)."""
        def handler(signum: int, frame: Optional[FrameType]) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
