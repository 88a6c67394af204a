"""Client against a scripted broker: the test binds a ROUTER on an ipc:// path and answers by hand.

The client runs in a helper thread (its calls block); the test thread plays the broker, waiting only by
polling the ROUTER socket with a timeout.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
import zmq

from ssnet_client import Client, ClientConfig, Reply
from ssnet_common.errors import (
    BrokerBusy,
    ErrorCode,
    NoSuchService,
    QueueTimeout,
    RequestError,
    RequestTimeout,
    TransportError,
    WorkerError,
    WorkerLost,
)
from ssnet_common.protocol import (
    MMI_SERVICE,
    Body,
    ClientReply,
    ClientRequest,
    Frame,
    decode_body,
    decode_client_request,
    error_body,
    frame_bytes,
    mmi_reply,
    result_body,
)

Context = zmq.Context[zmq.Socket[bytes]]
Run = Callable[[Callable[[], Any]], "Future[Any]"]
MakeClient = Callable[..., Client]
WAIT = 5.0  # generous bound on anything that should happen "now"


@dataclass
class Incoming:
    identity: bytes
    request: ClientRequest
    body: Body

    @property
    def request_id(self) -> int:
        return self.body.request_id


class FakeBroker:
    """A ROUTER socket the test drives by hand."""

    def __init__(self, ctx: Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)

    def bind(self) -> None:
        self.socket.bind(self.endpoint)

    def recv(self, timeout: float = WAIT) -> Incoming:
        if not self.socket.poll(int(timeout * 1000), zmq.POLLIN):
            pytest.fail(f"no request reached the broker within {timeout} s")
        identity, *frames = self.socket.recv_multipart(copy=False)
        request = decode_client_request(frames)
        return Incoming(identity.bytes, request, decode_body(request.body))

    def recv_n(self, count: int) -> list[Incoming]:
        return [self.recv() for _ in range(count)]

    def quiet_for(self, seconds: float) -> bool:
        """True if no request arrives within ``seconds``."""
        return not self.socket.poll(int(seconds * 1000), zmq.POLLIN)

    def send(self, to: Incoming, body: Sequence[Frame], *, final: bool = True) -> None:
        self.raw(to.identity, ClientReply(to.request.service, body, final=final).encode())

    def result(self, to: Incoming, *payload: Frame) -> None:
        self.send(to, result_body(to.request_id, list(payload)).encode())

    def error(self, to: Incoming, code: str, message: str = "the server says no") -> None:
        self.send(to, error_body(to.request_id, code, message).encode())

    def raw(self, identity: bytes, frames: Sequence[Frame]) -> None:
        self.socket.send_multipart([identity, *frames], copy=False)

    def echo(self, to: Incoming) -> None:
        self.result(to, *to.body.payload)


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path / 'broker.ipc'}"


@pytest.fixture
def broker(ctx: Context, endpoint: str) -> FakeBroker:
    fake = FakeBroker(ctx, endpoint)
    fake.bind()
    return fake


@pytest.fixture
def make_client(ctx: Context, endpoint: str) -> Iterator[MakeClient]:
    """Clients with short timeouts and no retries unless asked, so a failing test never hangs for long."""
    clients: list[Client] = []

    def make(**config: Any) -> Client:
        config.setdefault("timeout", WAIT)
        config.setdefault("retries", 0)
        client = Client(endpoint, ClientConfig(**config), context=ctx)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def run() -> Iterator[Run]:
    """Run the client side in a helper thread; the test thread plays the broker."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit


def payloads(replies: Sequence[Reply]) -> list[list[bytes]]:
    return [[f.bytes for f in r.payload] for r in replies]


def flush(client: Client, broker: FakeBroker, run: Run) -> None:
    """One more request and answer: whatever the broker sent before it has been handled by the client."""
    future = run(lambda: client.request("echo", [b"flush"]))
    broker.echo(broker.recv())
    assert [f.bytes for f in future.result(WAIT)] == [b"flush"]


# --------------------------------------------------------------------------------------------- basics
def test_request_round_trip_is_zero_copy(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    big = bytes(range(256)) * 4096  # 1 MiB
    future = run(lambda: client.request("echo", [b"hello", big]))
    incoming = broker.recv()
    assert incoming.request.service == "echo"
    assert [frame_bytes(f) for f in incoming.body.payload] == [b"hello", big]
    broker.echo(incoming)
    payload = future.result(WAIT)
    assert all(isinstance(f, zmq.Frame) for f in payload)
    assert payload[0].bytes == b"hello" and memoryview(payload[1].buffer) == big
    assert client.stats.sent == client.stats.received == 1


def test_replies_answered_in_reverse_come_out_in_order(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client(window=8)
    future = run(lambda: list(client.imap(("echo", [b"%d" % i]) for i in range(5))))
    incoming = broker.recv_n(5)
    ids = [i.request_id for i in incoming]
    assert ids == sorted(ids) and len(set(ids)) == 5  # unique, increasing
    for request in reversed(incoming):
        broker.echo(request)
    replies = future.result(WAIT)
    assert payloads(replies) == [[b"%d" % i] for i in range(5)]
    assert [r.request_id for r in replies] == ids
    assert all(r.attempts == 1 and r.rtt > 0 for r in replies)


def test_window_limits_what_is_outstanding(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client(window=2)
    future = run(lambda: list(client.imap(("echo", [b"%d" % i]) for i in range(5))))
    first, second = broker.recv_n(2)
    assert broker.quiet_for(0.2)
    broker.echo(second)  # answered out of order: held, still counts against the window
    assert broker.quiet_for(0.2)
    broker.echo(first)  # both handed out: two more come
    third, fourth = broker.recv_n(2)
    assert broker.quiet_for(0.1)
    broker.echo(third)
    fifth = broker.recv()
    broker.echo(fourth)
    broker.echo(fifth)
    assert payloads(future.result(WAIT)) == [[b"%d" % i] for i in range(5)]


def test_duplicate_replies_are_dropped(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    future = run(lambda: list(client.imap(("echo", [b"%d" % i]) for i in range(3))))
    for request in reversed(broker.recv_n(3)):
        broker.echo(request)
        broker.result(request, b"duplicate")
    assert payloads(future.result(WAIT)) == [[b"0"], [b"1"], [b"2"]]
    flush(client, broker, run)
    assert client.stats.not_pending == 3


def test_interleaved_streams_serve_each_other(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    a1_done = threading.Event()

    def two_streams() -> list[bytes]:
        a = client.imap([("echo", [b"a1"]), ("echo", [b"a2"])])
        b = client.imap([("echo", [b"b1"]), ("echo", [b"b2"])])
        got = [next(a).payload[0].bytes]
        a1_done.set()
        got += [next(b).payload[0].bytes, next(a).payload[0].bytes, next(b).payload[0].bytes]
        return got

    future = run(two_streams)
    a1, a2 = broker.recv_n(2)
    broker.echo(a1)
    assert a1_done.wait(WAIT)
    b1, b2 = broker.recv_n(2)
    broker.echo(a2)  # arrives while stream b is waiting
    broker.echo(b2)
    broker.echo(b1)
    assert future.result(WAIT) == [b"a1", b"b1", b"a2", b"b2"]
    assert client.stats.not_pending == 0


# ------------------------------------------------------------------------------------- timeout and retry
def test_retry_after_timeout_delivers_exactly_one_result(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client(timeout=0.3, retries=3)
    frame = zmq.Frame(b"frame payload, sent twice")
    started = time.monotonic()
    future = run(lambda: list(client.imap([("echo", [frame])])))
    first = broker.recv()
    second = broker.recv()  # the resend, after the client's timeout
    assert time.monotonic() - started >= 0.29
    assert second.request_id == first.request_id
    assert [frame_bytes(f) for f in second.body.payload] == [b"frame payload, sent twice"]
    broker.echo(second)
    broker.echo(first)
    (reply,) = future.result(WAIT)
    assert reply.attempts == 2 and reply.request_id == first.request_id
    flush(client, broker, run)
    assert client.stats.retries == 1 and client.stats.not_pending == 1


def test_request_timeout_after_retries(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client(timeout=0.2, retries=2)
    future = run(lambda: client.request("slow", [b"x"]))
    copies = broker.recv_n(3)
    assert len({c.request_id for c in copies}) == 1
    with pytest.raises(RequestTimeout) as caught:
        future.result(WAIT)
    assert caught.value.service == "slow" and caught.value.request_id == copies[0].request_id
    assert broker.quiet_for(0.4)  # no fourth attempt
    assert client.stats.retries == 2


def test_timeout_override_per_request(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client(timeout=60.0, retries=0)
    future = run(lambda: client.request("slow", [], timeout=0.2))
    broker.recv()
    with pytest.raises(RequestTimeout):
        future.result(WAIT)


# -------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (ErrorCode.QUEUE_TIMEOUT, QueueTimeout),
        (ErrorCode.UNKNOWN_SERVICE, NoSuchService),
        (ErrorCode.WORKER_LOST, WorkerLost),
        (ErrorCode.WORKER_ERROR, WorkerError),
    ],
)
def test_error_code_raises_its_exception(
    broker: FakeBroker, make_client: MakeClient, run: Run, code: str, kind: type[RequestError]
) -> None:
    client = make_client(retries=3)
    future = run(lambda: client.request("svc", [b"x"]))
    incoming = broker.recv()
    broker.error(incoming, code, "details from the server")
    with pytest.raises(kind) as caught:
        future.result(WAIT)
    assert type(caught.value) is kind and caught.value.code == code
    assert caught.value.service == "svc" and caught.value.request_id == incoming.request_id
    assert "details from the server" in str(caught.value)
    assert broker.quiet_for(0.1)  # not retried
    assert client.stats.retries == 0


def test_queue_full_is_retried(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client(retries=2, busy_backoff=0.05)
    future = run(lambda: list(client.imap([("echo", [b"x"])])))
    first = broker.recv()
    broker.error(first, ErrorCode.QUEUE_FULL, "queue full")
    again = broker.recv()
    assert again.request_id == first.request_id
    broker.echo(again)
    (reply,) = future.result(WAIT)
    assert reply.attempts == 2 and payloads([reply]) == [[b"x"]]
    assert client.stats.retries == 1


def test_queue_full_after_retries_is_broker_busy(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client(retries=1, busy_backoff=0.05)
    future = run(lambda: client.request("echo", [b"x"]))
    broker.error(broker.recv(), ErrorCode.QUEUE_FULL)
    broker.error(broker.recv(), ErrorCode.QUEUE_FULL, "still full")
    with pytest.raises(BrokerBusy, match="still full"):
        future.result(WAIT)


def test_return_exceptions_yields_errors_in_place(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    future = run(lambda: list(client.imap((("echo", [b"%d" % i]) for i in range(3)), return_exceptions=True)))
    one, two, three = broker.recv_n(3)
    broker.echo(three)
    broker.error(two, ErrorCode.WORKER_ERROR, "bad input")
    broker.echo(one)
    first, second, third = future.result(WAIT)
    assert isinstance(first, Reply) and isinstance(third, Reply)
    assert isinstance(second, WorkerError) and second.request_id == two.request_id


def test_error_ends_the_stream_at_its_turn(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    got: list[Reply] = []

    def consume() -> None:
        got.extend(client.imap(("echo", [b"%d" % i]) for i in range(3)))

    future = run(consume)
    one, two, three = broker.recv_n(3)
    broker.echo(three)
    broker.error(two, ErrorCode.WORKER_ERROR, "bad input")
    broker.echo(one)
    with pytest.raises(WorkerError, match="bad input"):
        future.result(WAIT)
    assert payloads(got) == [[b"0"]]


def test_abandoned_stream_drops_later_answers(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()

    def first_only() -> Reply:
        stream = client.imap(("echo", [b"%d" % i]) for i in range(3))
        reply = next(stream)
        stream.close()
        return reply

    future = run(first_only)
    one, two, three = broker.recv_n(3)
    broker.echo(one)
    assert payloads([future.result(WAIT)]) == [[b"0"]]
    broker.echo(two)
    broker.echo(three)
    flush(client, broker, run)
    assert client.stats.not_pending == 2


# ------------------------------------------------------------------------------------ other messages
def test_partial_replies_are_ignored(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    future = run(lambda: client.request("echo", [b"x"]))
    incoming = broker.recv()
    broker.send(incoming, result_body(incoming.request_id, [b"partial"]).encode(), final=False)
    broker.result(incoming, b"final")
    assert [f.bytes for f in future.result(WAIT)] == [b"final"]
    assert client.stats.partial == 1


def test_invalid_messages_are_ignored(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    future = run(lambda: client.request("echo", [b"x"]))
    incoming = broker.recv()
    broker.raw(incoming.identity, [b"junk"])
    broker.send(incoming, [b"plain MDP body, no envelope"])
    broker.result(incoming, b"ok")
    assert [f.bytes for f in future.result(WAIT)] == [b"ok"]
    assert client.stats.invalid == 2


# ----------------------------------------------------------------------------------------------- MMI
def test_has_service(broker: FakeBroker, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    future = run(lambda: (client.has_service("echo"), client.has_service("nope")))
    for _ in range(2):
        incoming = broker.recv()
        assert incoming.request.service == MMI_SERVICE
        reply = mmi_reply(incoming.request, lambda name: name == "echo")
        broker.raw(incoming.identity, reply.encode())
    assert future.result(WAIT) == (True, False)


# ------------------------------------------------------------------------------------------ lifecycle
def test_client_started_before_the_broker(ctx: Context, endpoint: str, make_client: MakeClient, run: Run) -> None:
    client = make_client()
    sent = threading.Event()

    def requests() -> Iterator[tuple[str, list[bytes]]]:
        yield "echo", [b"early"]
        sent.set()  # the client asks for the next request only after sending the first

    future = run(lambda: list(client.imap(requests())))
    assert sent.wait(WAIT)
    assert not Path(endpoint[len("ipc://"):]).exists()
    late = FakeBroker(ctx, endpoint)
    late.bind()
    late.echo(late.recv())
    (reply,) = future.result(WAIT)
    assert payloads([reply]) == [[b"early"]] and reply.attempts == 1


def test_close_and_context_manager(broker: FakeBroker, ctx: Context, endpoint: str) -> None:
    with Client(endpoint, context=ctx) as client:
        was_open = not client.closed
    assert was_open and client.closed
    client.close()  # idempotent
    with pytest.raises(TransportError, match="closed"):
        client.request("echo", [])
    with pytest.raises(TransportError, match="closed"):
        client.imap([("echo", [])])


def test_metrics(broker: FakeBroker, ctx: Context, endpoint: str, run: Run) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    with Client(endpoint, ClientConfig(retries=1, busy_backoff=0.05), registry=registry, context=ctx) as client:
        future = run(lambda: list(client.imap([("echo", [b"abc"]), ("echo", [b"def"])], return_exceptions=True)))
        one, two = broker.recv_n(2)
        broker.error(one, ErrorCode.QUEUE_FULL)
        broker.echo(broker.recv())
        broker.error(two, ErrorCode.WORKER_ERROR, "nope")
        ok, failed = future.result(WAIT)
        assert isinstance(ok, Reply) and isinstance(failed, WorkerError)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("ssnet_client_requests_total", service="echo", outcome="ok") == 1
    assert sample("ssnet_client_requests_total", service="echo", outcome="worker_error") == 1
    assert sample("ssnet_client_request_duration_seconds_count", service="echo") == 1
    assert sample("ssnet_client_retries_total", service="echo") == 1
    assert (sample("ssnet_client_bytes_total", direction="sent") or 0) > 0
    assert (sample("ssnet_client_bytes_total", direction="received") or 0) > 0
    assert sample("ssnet_client_in_flight") == 0
    assert sample("ssnet_client_ignored_replies_total", reason="not_pending") is None
