"""Thin ZeroMQ helpers: where ``zmq`` errors enter our code they become :class:`TransportError`.

Messages are sent and received with ``copy=False``: large frames (arrays) travel without copies, and a
received frame can be forwarded as is.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import zmq

from ssnet_common.errors import TransportError
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
