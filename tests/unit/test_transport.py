"""The broker's fast frame helpers (ssnet_common.transport.recv_frames / send_routed) against pyzmq's own."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from ssnet_common import transport

pytestmark = pytest.mark.py39


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:  # type: ignore[type-arg]
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    dealer.setsockopt(zmq.IDENTITY, b"peer")
    router.bind("inproc://fast")
    dealer.connect("inproc://fast")
    try:
        yield router, dealer
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        context.term()


def test_frames_cross_both_ways_as_with_the_multipart_calls(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = pair
    with pytest.raises(zmq.Again):
        transport.recv_frames(router)
    big = np.arange(100_000, dtype=np.float64)  # above pyzmq's copy threshold
    sent = [b"", b"MDPC02", b"\x01", b"echo", memoryview(big), b""]
    dealer.send_multipart(sent, copy=False)
    assert router.poll(5000)
    frames = transport.recv_frames(router)
    assert all(isinstance(f, zmq.Frame) for f in frames)
    assert [bytes(f) for f in frames] == [b"peer", *(bytes(f) for f in sent)]
    transport.send_routed(router, b"peer", [*frames[1:], b"tail"])  # received frames forwarded, plus bytes
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [*(bytes(f) for f in sent), b"tail"]
    with pytest.raises(zmq.ZMQError) as raised:  # ROUTER_MANDATORY: an unknown peer is an error, as before
        transport.send_routed(router, b"nobody", [b"x"])
    assert raised.value.errno == zmq.EHOSTUNREACH
    transport.send_routed(router, b"peer", [b"after"])  # nothing half-sent is left behind
    assert dealer.poll(5000) and dealer.recv_multipart() == [b"after"]
