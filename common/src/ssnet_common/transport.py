"""Thin ZeroMQ helpers: where ``zmq`` errors enter our code they become :class:`TransportError`.

Messages are sent and received with ``copy=False``: large frames (arrays) travel without copies, and a
received frame can be forwarded as is.
"""

from __future__ import annotations

import contextlib
import socket
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, cast

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


# The broker's hot path: one message in and out costs a few microseconds of Python per frame in pyzmq's
# ``send_multipart``/``recv_multipart`` (flag-enum arithmetic, a getsockopt(RCVMORE) call per frame); these two
# do the same with plain int flags and the received frame's own ``more`` flag.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK
_backend_socket = getattr(zmq.backend, "Socket", zmq.Socket)  # pyzmq's compiled class, under its Python layer
_send = _backend_socket.send
_recv = _backend_socket.recv
_get = _backend_socket.get
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def readable(socket: zmq.Socket) -> bool:  # type: ignore[type-arg]
    """Whether a message is waiting on ``socket``: a quarter of the cost of a receive that fails with
    ``zmq.Again`` (pyzmq makes an exception object, with its error text, for it)."""
    return bool(cast(int, _get(socket, _EVENTS)) & _POLLIN)


def recv_frames(socket: zmq.Socket) -> list[zmq.Frame]:  # type: ignore[type-arg]
    """One whole multipart message as ``zmq.Frame`` objects (no copies), without blocking: ``zmq.Again`` if none
    is waiting."""
    frame: zmq.Frame = _recv(socket, _NOBLOCK, False)
    frames = [frame]
    while frame.more:
        frame = _recv(socket, _NOBLOCK, False)
        frames.append(frame)
    return frames


def send_routed(socket: zmq.Socket, identity: bytes, frames: Sequence[Frame]) -> None:  # type: ignore[type-arg]
    """Send ``[identity, *frames]`` on a ROUTER socket without blocking.  ``bytes`` frames are copied (the
    broker's own small frames), ``zmq.Frame`` objects go as they are (forwarded bodies cross without a copy).
    Raises ``zmq.ZMQError`` as ``send_multipart`` would (ROUTER_MANDATORY: the peer is gone, or its queue full)."""
    send = _send
    if not frames:
        send(socket, identity, _NOBLOCK)
        return
    send(socket, identity, _MORE)
    for frame in frames[:-1]:
        send(socket, frame, _MORE)
    send(socket, frames[-1], _NOBLOCK)


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
