"""The broker's I/O loop: two ROUTER sockets around :class:`~ssnet_broker.state.BrokerState`.

poll → handle each message → purge → heartbeat → send what the state machine returned.  Frames received are
forwarded as the same ``zmq.Frame`` objects, so request and reply bodies cross the broker without copies.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import zmq

from ssnet_broker.state import BrokerState, Limits, Outgoing, Side
from ssnet_common import transport
from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import frame_bytes, frames_nbytes

if TYPE_CHECKING:
    from types import FrameType

    from ssnet_broker.metrics import BrokerMetrics

log = logging.getLogger(__name__)

PURGE_PERIOD = 0.1  # seconds between expiry scans; far below any sensible heartbeat interval
GAUGE_PERIOD = 1.0  # seconds between refreshes of the metrics gauges


@dataclass(frozen=True)
class BrokerConfig:
    frontend: str = "tcp://*:5559"
    backend: str = "tcp://*:5560"
    limits: Limits = field(default_factory=Limits)
    metrics_port: int = 0
    metrics_addr: str = "0.0.0.0"


class Broker:
    """Binds the frontend (clients) and backend (workers) and runs until :meth:`stop` or SIGTERM/SIGINT."""

    def __init__(self, config: BrokerConfig, metrics: Optional[BrokerMetrics] = None,
                 context: Optional[zmq.Context] = None) -> None:  # type: ignore[type-arg]
        self.config = config
        self.metrics = metrics
        self.context = context or zmq.Context.instance()
        self.state = BrokerState(config.limits, time.monotonic(), metrics)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe, signal-safe)."""
        self._stopping = True
        with suppress(OSError):  # a full wake-up pipe means the loop is being woken anyway
            self._wake_w.send(b"\0")

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
            self._wake_r.close()
            self._wake_w.close()

    def _loop(self, frontend: zmq.Socket, backend: zmq.Socket) -> None:  # type: ignore[type-arg]
        poller = zmq.Poller()
        poller.register(frontend, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        sockets = {Side.CLIENT: frontend, Side.WORKER: backend}
        state = self.state
        next_purge = next_gauges = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            timeout = min(state.next_timer(now), max(0.0, next_purge - now))
            with transport.zmq_errors("poll"):
                ready = dict(poller.poll(int(timeout * 1000) + 1))
            if self._wake_r.fileno() in ready:
                self._drain_wake()
            for side, sock in sockets.items():
                if sock in ready:
                    self._receive(side, sock, sockets)
            now = time.monotonic()
            if now >= next_purge:
                self._send(sockets, state.purge(now))
                next_purge = now + PURGE_PERIOD
            self._send(sockets, state.heartbeat(now))
            if self.metrics is not None and now >= next_gauges:
                self.metrics.observe(state, now)
                next_gauges = now + GAUGE_PERIOD
        log.info("broker stopping: %d workers told to disconnect, %d queued requests dropped",
                 len(state.workers), state.queued())
        self._send(sockets, state.shutdown())

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
            if self.metrics is not None:
                self.metrics.bytes.labels(direction="in").inc(frames_nbytes(frames))
            identity, body = frame_bytes(frames[0]), frames[1:]
            handle = self.state.on_client if side is Side.CLIENT else self.state.on_worker
            try:
                out = handle(identity, body, time.monotonic())
            except ProtocolError as exc:
                log.warning("dropped malformed message from %s %s: %s", side.value, identity.hex(), exc)
                if self.metrics is not None:
                    self.metrics.malformed.labels(side=side.value).inc()
                continue
            self._send(sockets, out)

    def _send(self, sockets: dict[Side, zmq.Socket], out: list[Outgoing]) -> None:  # type: ignore[type-arg]
        for message in out:
            frames = [message.identity, *message.frames]
            try:
                sockets[message.side].send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:  # peer gone (ROUTER_MANDATORY) or queue full: nothing to retry
                log.warning("could not send to %s %s: %s", message.side.value, message.identity.hex(), exc)
                continue
            if self.metrics is not None:
                self.metrics.bytes.labels(direction="out").inc(frames_nbytes(frames))

    def _drain_wake(self) -> None:
        with suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly (call from the main thread)."""
        def handler(signum: int, frame: Optional[FrameType]) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
