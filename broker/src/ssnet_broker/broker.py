"""The broker's I/O loop: two ROUTER sockets around :class:`~ssnet_broker.state.BrokerState`.

poll → handle each message → purge → heartbeat; after each step, hand the state's events to the latency
histograms and send what the state machine returned.  Frames received are forwarded as the same ``zmq.Frame``
objects, so request and reply bodies cross the broker without copies.  The loop changes the state only while
holding :attr:`Broker.lock`, under which the metrics collector (another thread) reads it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

from ssnet_broker.auth import ZAP_ENDPOINT, KeyRing, answer
from ssnet_broker.state import BrokerState, Limits, Outgoing, Side
from ssnet_common import transport
from ssnet_common.curve import CLIENTS, WORKERS, CurveKeys
from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import BACKEND_BIND, FRONTEND_BIND, METRICS_ADDR, frame_bytes, frames_nbytes
from ssnet_common.rendezvous import probe_broker

if TYPE_CHECKING:
    from types import FrameType

    from prometheus_client import CollectorRegistry

    from ssnet_broker.metrics import BrokerCollector

log = logging.getLogger(__name__)

PURGE_PERIOD = 0.1  # seconds between expiry scans; far below any sensible heartbeat interval
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
        sockets = {Side.CLIENT: frontend, Side.WORKER: backend}
        state = self.state
        next_purge = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            timeout = min(state.next_timer(now), max(0.0, next_purge - now))
            with transport.zmq_errors("poll"):
                ready = dict(poller.poll(int(timeout * 1000) + 1))
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
            with self.lock:
                out: list[Outgoing] = []
                if now >= next_purge:
                    out = state.purge(now)
                    next_purge = now + PURGE_PERIOD
                out += state.heartbeat(now)
            self._emit(sockets, out)
        log.info("broker stopping: %d workers told to disconnect, %d queued requests dropped",
                 len(state.workers), state.queued())
        with self.lock:
            out = state.shutdown()
        self._emit(sockets, out)

    def _receive(self, side: Side, sock: zmq.Socket, sockets: dict[Side, zmq.Socket]) -> None:  # type: ignore[type-arg]
        """Handle every message waiting on ``sock`` (bounded, so one busy side cannot starve the other)."""
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.error("receive on %s socket failed: %s", side.value, exc)
                return
            self.traffic.bytes_in += frames_nbytes(frames)
            identity, body = frame_bytes(frames[0]), frames[1:]
            handle = self.state.on_client if side is Side.CLIENT else self.state.on_worker
            try:
                with self.lock:
                    out = handle(identity, body, time.monotonic())
            except ProtocolError as exc:
                log.warning("dropped malformed message from %s %s: %s", side.value, identity.hex(), exc)
                with self.lock:
                    self.traffic.malformed[side.value] += 1
                continue
            self._emit(sockets, out)

    def _emit(self, sockets: dict[Side, zmq.Socket], out: list[Outgoing]) -> None:  # type: ignore[type-arg]
        """After a change of the state: its events to the latency histograms, its messages out."""
        events = self.state.drain_events()  # drained with or without metrics, so they never pile up
        if self.metrics is not None:
            self.metrics.observe(events)
        self._send(sockets, out)

    def _send(self, sockets: dict[Side, zmq.Socket], out: list[Outgoing]) -> None:  # type: ignore[type-arg]
        pending = deque(out)
        while pending:
            message = pending.popleft()
            frames = [message.identity, *message.frames]
            try:
                sockets[message.side].send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:  # peer gone (ROUTER_MANDATORY) or its queue full
                log.warning("could not send to %s %s: %s", message.side.value, message.identity.hex(), exc)
                if message.side is Side.WORKER and exc.errno == zmq.EHOSTUNREACH:
                    with self.lock:  # the worker is gone: drop it now, its request goes to another worker
                        pending.extend(self.state.on_unreachable(message.identity, time.monotonic(),
                                                                 delivered=not message.request))
                        events = self.state.drain_events()
                    if self.metrics is not None:
                        self.metrics.observe(events)
                continue
            self.traffic.bytes_out += frames_nbytes(frames)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly (call from the main thread)."""
        def handler(signum: int, frame: Optional[FrameType]) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
