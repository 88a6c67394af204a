"""Thin ZeroMQ helpers: where ``zmq`` errors enter our code they become :class:`TransportError`.

Messages are sent and received with ``copy=False``: large frames (arrays) travel without copies, and a
received frame can be forwarded as is.
"""

from __future__ import annotations

import contextlib
import socket
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import zmq

from ssnet_common import protocol as mdp
from ssnet_common.curve import CurveKeys
from ssnet_common.errors import ProtocolError, TransportError
from ssnet_common.protocol import Frame


@contextmanager
def zmq_errors(what: str) -> Iterator[None]:
    """Translate ``zmq.ZMQError`` raised inside the block into :class:`TransportError` naming ``what``."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise TransportError(f"{what}: {exc.strerror} (errno {exc.errno})") from exc


def send(socket: zmq.Socket, frames: Sequence[Frame]) -> None:  # type: ignore[type-arg]
    with zmq_errors("send"):
        socket.send_multipart(frames, copy=False)


def recv(socket: zmq.Socket) -> list[zmq.Frame]:  # type: ignore[type-arg]
    with zmq_errors("receive"):
        frames: list[zmq.Frame] = socket.recv_multipart(copy=False)
        return frames


def new_socket(context: zmq.Context, kind: int, *, linger_ms: int = 0) -> zmq.Socket:  # type: ignore[type-arg]
    """A socket with the options every ssnet socket wants (bounded linger so shutdown never hangs)."""
    with zmq_errors("create socket"):
        socket: zmq.Socket = context.socket(kind)  # type: ignore[type-arg]
        socket.setsockopt(zmq.LINGER, linger_ms)
        return socket


def bind(socket: zmq.Socket, endpoint: str) -> None:  # type: ignore[type-arg]
    with zmq_errors(f"bind {endpoint}"):
        socket.bind(endpoint)


def connect(socket: zmq.Socket, endpoint: str) -> None:  # type: ignore[type-arg]
    with zmq_errors(f"connect {endpoint}"):
        socket.connect(endpoint)


def mmi_service(frontend: str, service: str, timeout: float = 1.0, curve: Optional[CurveKeys] = None
                ) -> Optional[bytes]:
    """Ask the broker on ``frontend`` whether ``service`` has workers (RFC 8, ``mmi.service``), on a socket of its
    own: ``MMI_FOUND`` (b"200"), ``MMI_NOT_FOUND`` (b"404"), or None without an answer within ``timeout`` seconds
    (no broker there yet, not an MDP broker, or one that refuses our CURVE key).  The one "is the broker / the
    service there yet" probe."""
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if curve is not None:
                curve.client_side(sock)
            sock.connect(frontend)
            sock.send_multipart(mdp.ClientRequest(mdp.MMI_SERVICE, [service.encode("ascii")]).encode())
            if not sock.poll(max(1, int(timeout * 1000))):
                return None
            reply = mdp.decode_client_reply(sock.recv_multipart())
            return bytes(mdp.frame_bytes(reply.body[0])) if reply.body else None
        finally:
            sock.close(linger=0)
    except (zmq.ZMQError, ProtocolError):
        return None
    finally:
        context.term()


class Waker:
    """A socket pair that wakes a poll loop: anyone may :meth:`wake` it; the loop polls :meth:`fileno`.

    The same pair can be the process's ``signal.set_wakeup_fd`` (:meth:`write_fileno`).
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def write_fileno(self) -> int:
        return self._writer.fileno()

    def wake(self) -> None:
        # OSError: the buffer is full (the loop is awake anyway) or the pair is closed (the loop is gone).
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except OSError:  # BlockingIOError: nothing left
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
