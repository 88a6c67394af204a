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
from typing import TYPE_CHECKING, Optional

import zmq

from ssnet_broker.state import BrokerState, Limits, Outgoing, Side
from ssnet_common import transport
from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import frame_bytes, frames_nbytes

if TYPE_CHECKING:
    from types import FrameType

    from prometheus_client import CollectorRegistry

    from ssnet_broker.metrics import BrokerCollector

log = logging.getLogger(__name__)

PURGE_PERIOD = 0.1  # seconds between expiry scans; far below any sensible heartbeat interval


@dataclass(frozen=True)
class BrokerConfig:
    frontend: str = "tcp://*:5559"
    backend: str = "tcp://*:5560"
    limits: Limits = field(default_factory=Limits)
    metrics_port: int = 0
    metrics_addr: str = "0.0.0.0"


@dataclass
class Traffic:
    """What the loop itself counts (the state machine never sees bytes or undecodable messages)."""

    bytes_in: int = 0
    bytes_out: int = 0
    malformed: Counter[str] = field(default_factory=Counter)  # messages dropped, by side (changed under the lock)


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

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe, signal-safe)."""
        self._stopping = True
        self._waker.wake()

    def run(self) -> None:
        frontend = transport.new_socket(self.context, zmq.ROUTER)
        backend = transport.new_socket(self.context, zmq.ROUTER)
        try:
            for sock in (frontend, backend):
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished peer is an error we log, not a silent drop
            transport.bind(frontend, self.config.frontend)
            transport.bind(backend, self.config.backend)
            log.info("broker up: clients on %s, workers on %s", self.config.frontend, self.config.backend)
            self._loop(frontend, backend)
        finally:
            frontend.close(linger=0)
            backend.close(linger=0)
            self._waker.close()

    def _loop(self, frontend: zmq.Socket, backend: zmq.Socket) -> None:  # type: ignore[type-arg]
        poller = zmq.Poller()
        poller.register(frontend, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        poller.register(self._waker, zmq.POLLIN)
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
