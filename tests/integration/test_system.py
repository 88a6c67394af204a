"""Broker, workers and clients as real processes on real sockets (the foundation's system behaviour)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import zmq

from ssnet_client import Client, ClientConfig, NoSuchService
from ssnet_common import protocol as mdp
from ssnet_common.protocol import frame_bytes

from .conftest import Stack, free_port, mmi_service, scrape, wait_until


def echo_payload(client: int, n: int) -> list[bytes]:
    return [b"client %d request %d" % (client, n), bytes([n % 256]) * (n * 37 % 5000)]


def test_three_workers_two_clients_two_hundred_requests_each(stack: Stack) -> None:
    metrics_port = free_port()
    stack.broker(metrics_port=metrics_port)
    for _ in range(3):
        stack.worker("echo")
    stack.wait_for_service("echo")
    failures: list[BaseException] = []

    def run_client(index: int) -> None:
        try:
            with Client(stack.frontend, ClientConfig(timeout=30, window=16)) as client:
                requests = (("echo", echo_payload(index, n)) for n in range(200))
                for n, reply in enumerate(client.imap(requests)):
                    assert [bytes(f) for f in reply.payload] == echo_payload(index, n)
                assert client.stats.not_pending == 0
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run_client, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    samples = scrape(metrics_port)
    assert samples[("ssnet_broker_requests_total", (("outcome", "ok"), ("service", "echo")))] == 400


def test_worker_killed_mid_request_another_serves_it_exactly_once(stack: Stack) -> None:
    stack.broker()
    ports = [free_port(), free_port()]
    workers = [stack.worker("sleep", metrics_port=port) for port in ports]
    stack.wait_for_service("sleep")
    wait_until(lambda: mmi_service(stack.frontend, "sleep") == mdp.MMI_FOUND, 10, "workers")

    def busy_worker() -> int | None:
        for index, port in enumerate(ports):
            try:
                if scrape(port).get(("ssnet_worker_busy", (("service", "sleep"),))) == 1:
                    return index
            except OSError:
                pass  # metrics endpoint not up yet
        return None

    with Client(stack.frontend, ClientConfig(timeout=30, retries=0)) as client:
        stream = client.imap([("sleep", [b"1.5", b"the payload"])])
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.extend(stream))
        thread.start()
        try:
            wait_until(lambda: busy_worker() is not None, 20, "a worker to take the request")
            victim = busy_worker()
            assert victim is not None
            workers[victim].send_signal(signal.SIGKILL)
        finally:
            thread.join(60)
        assert len(result) == 1
        [reply] = result
        assert [bytes(f) for f in reply.payload] == [b"1.5", b"the payload"]  # type: ignore[attr-defined]
        assert client.stats.not_pending == 0  # exactly one reply reached the client
    survivor = ports[1 - victim]
    assert scrape(survivor)[("ssnet_worker_requests_total", (("outcome", "ok"), ("service", "sleep")))] == 1


@pytest.mark.slow
def test_worker_busy_for_20_seconds_with_1_second_heartbeat_is_not_expired(stack: Stack) -> None:
    stack.heartbeat = 1.0
    metrics_port = free_port()
    stack.broker(metrics_port=metrics_port)
    stack.worker("sleep")
    stack.wait_for_service("sleep")
    with Client(stack.frontend, ClientConfig(timeout=60, retries=0)) as client:
        assert [bytes(f) for f in client.request("sleep", [b"20"])] == [b"20"]
    samples = scrape(metrics_port)
    assert not any(name == "ssnet_broker_worker_expirations_total" and value for (name, _), value in samples.items())
    assert samples[("ssnet_broker_requests_total", (("outcome", "ok"), ("service", "sleep")))] == 1


def test_workers_and_clients_started_before_the_broker_recover(stack: Stack) -> None:
    stack.worker("echo", "--reconnect-max", "1")
    with Client(stack.frontend, ClientConfig(timeout=30, retries=0)) as client:
        stream = client.imap([("echo", [b"early bird"])])
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.extend(stream))
        thread.start()
        try:
            stack.broker()
        finally:
            thread.join(60)
        assert [[bytes(f) for f in r.payload] for r in result] == [[b"early bird"]]  # type: ignore[attr-defined]


def test_mmi_service(stack: Stack) -> None:
    stack.broker()
    stack.worker("echo")
    stack.wait_for_service("echo")
    with Client(stack.frontend) as client:
        assert client.has_service("echo")
        assert not client.has_service("nonexistent")
    assert mmi_service(stack.frontend, "echo") == mdp.MMI_FOUND  # a plain MDP client (no envelope) too


def test_metrics_endpoints_are_scraped_and_parsed(stack: Stack) -> None:
    broker_port, worker_port = free_port(), free_port()
    stack.broker(metrics_port=broker_port)
    stack.worker("echo", metrics_port=worker_port)
    stack.wait_for_service("echo")
    with Client(stack.frontend) as client:
        for n in range(5):
            client.request("echo", [b"x" * n])
    broker = scrape(broker_port)
    assert broker[("ssnet_broker_requests_total", (("outcome", "ok"), ("service", "echo")))] == 5
    assert broker[("ssnet_broker_request_duration_seconds_count", (("service", "echo"),))] == 5
    assert broker[("ssnet_broker_bytes_total", (("direction", "in"),))] > 0
    wait_until(lambda: scrape(broker_port).get(("ssnet_broker_workers", (("service", "echo"), ("state", "idle"))))
               == 1, 10, "the workers gauge")
    worker = scrape(worker_port)
    assert worker[("ssnet_worker_requests_total", (("outcome", "ok"), ("service", "echo")))] == 5
    assert worker[("ssnet_worker_processing_seconds_count", (("service", "echo"),))] == 5


def test_broker_survives_malformed_input_and_stops_cleanly_on_sigterm(stack: Stack) -> None:
    import zmq

    broker = stack.broker()
    context = zmq.Context.instance()
    for endpoint in (stack.frontend, stack.backend):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(endpoint)
        for frames in ([b""], [b"MDPC02"], [b"MDPW02", b"\x07"], [b"\xff" * 100, b"x"], [b"MDPW02", b"\x04", b"a"]):
            sock.send_multipart(frames)
        sock.close()
    assert mmi_service(stack.frontend, "anything") == mdp.MMI_NOT_FOUND  # still answering
    broker.send_signal(signal.SIGTERM)
    assert broker.wait(10) == 0


def test_a_killed_worker_is_dropped_when_the_broker_cannot_reach_it(stack: Stack) -> None:
    """SIGKILLed, a worker says no goodbye; its heartbeats would take 60 s to expire here.  The broker finds it
    unreachable at its next send (ROUTER_MANDATORY) and drops it at once; requests go to the live worker."""
    port = free_port()
    stack.broker("--heartbeat-liveness", "240", metrics_port=port)  # 0.25 s x 240 = 60 s to expire
    victim = stack.worker("echo", "--heartbeat-liveness", "240")
    stack.worker("echo", "--heartbeat-liveness", "240")

    def idle() -> float | None:
        return scrape(port).get(("ssnet_broker_workers", (("service", "echo"), ("state", "idle"))))

    wait_until(lambda: idle() == 2, 20, "two echo workers")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    wait_until(lambda: idle() == 1, 20, "the broker to drop the killed worker")
    samples = scrape(port)
    assert samples[("ssnet_broker_worker_unreachable_total", (("service", "echo"),))] == 1
    assert samples.get(("ssnet_broker_worker_expirations_total", (("service", "echo"),))) == 0
    with Client(stack.frontend, ClientConfig(timeout=5, retries=0)) as client:
        for n in range(6):
            assert frame_bytes(client.request("echo", [b"%d" % n])[0]) == b"%d" % n


def test_a_mistyped_service_fails_within_the_unknown_service_timeout(stack: Stack) -> None:
    stack.broker("--unknown-service-timeout", "1")
    began = time.monotonic()
    with Client(stack.frontend, ClientConfig(timeout=30, retries=0)) as client, \
            pytest.raises(NoSuchService, match="none has offered it; waited 1 s"):
        client.request("ehco", [b"x"])
    assert time.monotonic() - began < 10  # not the 300 s queue timeout


def vm_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def test_a_flood_of_hostile_messages_leaves_the_broker_up_bounded_and_routing(stack: Stack) -> None:
    """Garbage on both sockets and requests to 100,000 distinct service names: the broker holds at most
    --max-services services, refuses the rest at once, grows by at most 100 MB and still routes."""
    port = free_port()
    broker = stack.broker(metrics_port=port)
    stack.worker("echo")
    stack.wait_for_service("echo")
    before = vm_rss_mib(broker.pid)
    context = zmq.Context()
    try:
        front, back = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
        front.connect(stack.frontend)
        back.connect(stack.backend)
        answers = 0
        for n in range(100_000):
            if n % 50 == 0:  # garbage: not MDP at all, a wrong protocol, a worker command from a stranger
                front.send_multipart([b"junk", bytes([n % 256])])
                back.send_multipart([b"", b"MDPW02", b"\x09"])
                back.send_multipart([b"", b"MDPW02", b"\x04"])
            front.send_multipart(mdp.ClientRequest(f"flood{n}", [b"x"]).encode())
            while front.poll(0):
                front.recv_multipart()
                answers += 1
        while front.poll(2000):  # the refusals still on their way
            front.recv_multipart()
            answers += 1
        front.close(linger=0)
        back.close(linger=0)
    finally:
        context.term()
    assert broker.poll() is None
    with Client(stack.frontend, ClientConfig(timeout=10, retries=0)) as client:
        assert frame_bytes(client.request("echo", [b"still here"])[0]) == b"still here"
    samples = scrape(port)
    held = samples[("ssnet_broker_services", ())]
    rejected = samples[("ssnet_broker_rejected_requests_total", (("bound", "max_services"),))]
    # replies dropped because this client's queue was full (it reads slower than it floods): logged and counted,
    # never blocking the broker; every refusal was answered or counted so, and some requests expire (10 s) too
    dropped = samples[("ssnet_broker_undeliverable_messages_total", (("reason", "full"), ("side", "client")))]
    assert dropped < rejected / 100
    assert held <= 1000 and rejected >= 90_000 and answers + dropped >= rejected
    assert samples[("ssnet_broker_malformed_messages_total", (("side", "client"),))] >= 2000
    growth = vm_rss_mib(broker.pid) - before
    assert growth <= 100, f"the broker grew by {growth:.0f} MB"
