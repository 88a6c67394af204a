"""The broker's state machine and its metrics collector, driven with injected time and no sockets."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from ssnet_broker import state as state_module
from ssnet_broker.broker import Traffic
from ssnet_broker.metrics import BrokerCollector
from ssnet_broker.state import BrokerState, Dispatched, Finished, Limits, Outcome, Outgoing, Side
from ssnet_common import protocol as mdp
from ssnet_common.errors import ErrorCode, ProtocolError

LIMITS = Limits(heartbeat_interval=1.0, heartbeat_liveness=3, queue_timeout=10.0, max_queue=3, max_attempts=2)


def make(limits: Limits = LIMITS) -> BrokerState:
    return BrokerState(limits, now=0.0)


def ready(state: BrokerState, worker: bytes, service: str = "echo", now: float = 0.0) -> list[Outgoing]:
    return state.on_worker(worker, mdp.Ready(service).encode(), now)


def request(state: BrokerState, client: bytes, rid: int, service: str = "echo", now: float = 0.0,
            delimited: bool = False) -> list[Outgoing]:
    body = mdp.request_body(rid, [b"payload %d" % rid]).encode()
    return state.on_client(client, mdp.ClientRequest(service, body, delimited).encode(), now)


def final(state: BrokerState, worker: bytes, out: Outgoing, now: float = 0.0) -> list[Outgoing]:
    """The worker answers the request it was given in ``out``."""
    given = mdp.decode_to_worker(out.frames)
    assert isinstance(given, mdp.WorkerRequest)
    reply_body = mdp.result_body(mdp.decode_body(given.body).request_id, [b"done"]).encode()
    return state.on_worker(worker, mdp.WorkerReply(given.client, reply_body).encode(), now)


def request_id(out: Outgoing) -> int:
    if out.side is Side.WORKER:
        message = mdp.decode_to_worker(out.frames)
        assert isinstance(message, mdp.WorkerRequest)
        return mdp.decode_body(message.body).request_id
    return mdp.decode_body(mdp.decode_client_reply(out.frames).body).request_id


def client_error(out: Outgoing) -> str:
    assert out.side is Side.CLIENT
    body = mdp.decode_body(mdp.decode_client_reply(out.frames).body)
    assert body.kind is mdp.BodyKind.ERROR
    return body.error[0]


def test_request_goes_to_idle_worker_and_reply_back_to_client() -> None:
    state = make()
    assert ready(state, b"w1") == []
    [to_worker] = request(state, b"c1", 5)
    assert (to_worker.side, to_worker.identity, request_id(to_worker)) == (Side.WORKER, b"w1", 5)
    [to_client] = final(state, b"w1", to_worker)
    assert (to_client.side, to_client.identity) == (Side.CLIENT, b"c1")
    reply = mdp.decode_client_reply(to_client.frames)
    assert reply.final and reply.service == "echo"
    assert mdp.decode_body(reply.body).payload == [b"done"]


def test_requests_wait_for_a_worker_then_flow_in_order() -> None:
    state = make()
    assert request(state, b"c1", 1) == [] and request(state, b"c2", 2) == []
    [first] = ready(state, b"w1")
    assert request_id(first) == 1
    [reply, second] = final(state, b"w1", first)
    assert reply.identity == b"c1" and request_id(second) == 2 and second.identity == b"w1"


def test_least_recently_used_worker_first() -> None:
    state = make()
    for worker in (b"w1", b"w2", b"w3"):
        ready(state, worker)
    [a] = request(state, b"c", 1)
    [b] = request(state, b"c", 2)
    assert (a.identity, b.identity) == (b"w1", b"w2")
    final(state, b"w1", a)  # w1 is now the most recently used; w3 has waited longest
    [c] = request(state, b"c", 3)
    [d] = request(state, b"c", 4)
    assert (c.identity, d.identity) == (b"w3", b"w1")


def test_services_are_separate() -> None:
    state = make()
    ready(state, b"w-echo", "echo")
    ready(state, b"w-dummy", "dummy")
    [out] = request(state, b"c", 1, "dummy")
    assert out.identity == b"w-dummy"


def test_delimiters_are_answered_in_kind() -> None:
    state = make()
    state.on_worker(b"w1", mdp.Ready("echo", delimited=True).encode(), 0.0)
    [to_worker] = request(state, b"c1", 1, delimited=True)
    assert to_worker.frames[0] == b""
    assert mdp.decode_to_worker(to_worker.frames).delimited
    [to_client] = final(state, b"w1", to_worker)
    assert to_client.frames[0] == b"" and mdp.decode_client_reply(to_client.frames).delimited


def test_heartbeats_go_to_idle_and_busy_workers_once_per_interval() -> None:
    state = make()
    ready(state, b"idle")
    ready(state, b"busy")
    request(state, b"c", 1)
    assert state.heartbeat(0.5) == []
    beats = state.heartbeat(1.0)
    assert sorted(o.identity for o in beats) == [b"busy", b"idle"]
    assert all(isinstance(mdp.decode_to_worker(o.frames), mdp.Heartbeat) for o in beats)
    assert state.heartbeat(1.5) == []
    assert len(state.heartbeat(2.0)) == 2


def test_silent_worker_expires_and_its_request_goes_to_another() -> None:
    state = make()
    ready(state, b"w1")
    [given] = request(state, b"c", 7)
    ready(state, b"w2", now=2.0)
    state.on_worker(b"w2", mdp.Heartbeat().encode(), 2.9)
    assert state.purge(2.9) == []  # w1 heard at 0.0, ttl 3 s
    [requeued] = state.purge(3.1)
    assert requeued.identity == b"w2" and request_id(requeued) == 7 == request_id(given)
    assert b"w1" not in state.workers
    # the expired worker's late reply is refused with DISCONNECT and never reaches the client
    [out] = final(state, b"w1", given, now=3.2)
    assert out.side is Side.WORKER and isinstance(mdp.decode_to_worker(out.frames), mdp.Disconnect)


def test_busy_worker_heartbeating_is_not_expired() -> None:
    state = make()
    ready(state, b"w1")
    [given] = request(state, b"c", 1)
    for t in range(1, 60):
        state.on_worker(b"w1", mdp.Heartbeat().encode(), float(t))
        assert state.purge(t + 0.5) == []
    [reply] = final(state, b"w1", given, now=60.0)
    assert reply.side is Side.CLIENT


def test_disconnected_worker_request_goes_to_front_of_queue() -> None:
    state = make()
    ready(state, b"w1")
    request(state, b"c", 1)
    request(state, b"c", 2)
    assert state.on_worker(b"w1", mdp.Disconnect().encode(), 1.0) == []
    [first] = ready(state, b"w2", now=2.0)
    assert request_id(first) == 1  # the re-queued request is served before the one that waited behind it


def test_attempts_are_bounded_then_client_gets_worker_lost() -> None:
    state = make()  # max_attempts = 2
    ready(state, b"w1")
    request(state, b"c", 1)
    assert state.on_worker(b"w1", mdp.Disconnect().encode(), 1.0) == []
    [second] = ready(state, b"w2", now=1.0)
    assert request_id(second) == 1
    [lost] = state.on_worker(b"w2", mdp.Disconnect().encode(), 2.0)
    assert lost.identity == b"c" and client_error(lost) == ErrorCode.WORKER_LOST and request_id(lost) == 1


def test_full_queue_answers_at_once() -> None:
    state = make()  # max_queue = 3
    for rid in range(3):
        assert request(state, b"c", rid) == []
    [refused] = request(state, b"c", 99)
    assert client_error(refused) == ErrorCode.QUEUE_FULL and request_id(refused) == 99


def test_queue_timeout_unknown_service_vs_busy_service() -> None:
    state = make()  # queue_timeout = 10
    request(state, b"c", 1, "nobody")
    ready(state, b"w1")
    request(state, b"c", 2)  # taken by w1
    request(state, b"c", 3, now=1.0)  # waits behind it
    state.on_worker(b"w1", mdp.Heartbeat().encode(), 9.0)
    assert state.purge(9.9) == []
    [unknown] = state.purge(10.1)
    assert client_error(unknown) == ErrorCode.UNKNOWN_SERVICE and request_id(unknown) == 1
    assert "nobody" not in state.services  # nothing is left of a service no worker ever offered
    [late] = state.purge(11.1)
    assert client_error(late) == ErrorCode.QUEUE_TIMEOUT and request_id(late) == 3


def test_requeued_request_gets_a_fresh_queue_timeout() -> None:
    state = make()
    ready(state, b"w1")
    request(state, b"c", 1)
    state.on_worker(b"w1", mdp.Heartbeat().encode(), 9.0)
    state.on_worker(b"w1", mdp.Disconnect().encode(), 9.5)
    assert state.purge(15.0) == []  # re-queued at 9.5, times out at 19.5
    [late] = state.purge(19.6)
    assert client_error(late) == ErrorCode.QUEUE_TIMEOUT


def test_mmi_service() -> None:
    state = make()
    ready(state, b"w1")
    for name, expected in (("echo", mdp.MMI_FOUND), ("other", mdp.MMI_NOT_FOUND)):
        [out] = state.on_client(b"c", mdp.ClientRequest(mdp.MMI_SERVICE, [name.encode()]).encode(), 0.0)
        assert mdp.decode_client_reply(out.frames).body == [expected]
    [out] = state.on_client(b"c", mdp.ClientRequest("mmi.other", [b"x"]).encode(), 0.0)
    assert mdp.decode_client_reply(out.frames).body == [mdp.MMI_NOT_IMPLEMENTED]


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"MDPC02"],
        [b"MDPW02", b"\x05"],
        [b"MDPC02", b"\x09", b"echo", b"x"],
        [b"MDPC02", b"\x01", b"", b"x"],
        [b"MDPC01", b"\x01", b"echo", b"x"],
    ],
)
def test_malformed_client_messages_raise_protocol_error_and_change_nothing(frames: list[bytes]) -> None:
    state = make()
    with pytest.raises(ProtocolError):
        state.on_client(b"c", frames, 0.0)
    assert state.services == {} and state.workers == {}


def test_unexpected_worker_commands_get_disconnect() -> None:
    state = make()
    [out] = state.on_worker(b"stranger", mdp.Heartbeat().encode(), 0.0)
    assert isinstance(mdp.decode_to_worker(out.frames), mdp.Disconnect)
    ready(state, b"w1")
    [out] = ready(state, b"w1")  # a second READY
    assert isinstance(mdp.decode_to_worker(out.frames), mdp.Disconnect) and b"w1" not in state.workers
    ready(state, b"w2")
    reply = mdp.WorkerReply(b"nobody", [b"x"]).encode()  # a reply while holding no request
    [out] = state.on_worker(b"w2", reply, 0.0)
    assert isinstance(mdp.decode_to_worker(out.frames), mdp.Disconnect) and b"w2" not in state.workers
    [out] = ready(state, b"w3", "mmi.service")
    assert isinstance(mdp.decode_to_worker(out.frames), mdp.Disconnect) and b"w3" not in state.workers


def test_partial_replies_are_forwarded_and_worker_stays_busy() -> None:
    state = make()
    ready(state, b"w1")
    [given] = request(state, b"c", 1)
    request(state, b"c", 2)
    partial = mdp.WorkerReply(b"c", mdp.result_body(1, [b"half"]).encode(), final=False).encode()
    [out] = state.on_worker(b"w1", partial, 0.0)
    assert not mdp.decode_client_reply(out.frames).final
    [reply, next_request] = final(state, b"w1", given)
    assert mdp.decode_client_reply(reply.frames).final and request_id(next_request) == 2


def test_counters_and_events_follow_the_state() -> None:
    state = make()  # max_attempts = 2
    ready(state, b"w1")
    request(state, b"c", 1, now=1.0)  # taken at once by w1
    request(state, b"c", 2, "ghost", now=1.0)  # no worker offers "ghost"
    assert state.drain_events() == [Dispatched("echo", 0.0)]
    assert state.drain_events() == []  # drained
    state.on_worker(b"w1", mdp.Heartbeat().encode(), 1.5)
    state.on_worker(b"stranger", mdp.Heartbeat().encode(), 1.5)  # told to DISCONNECT, not counted
    assert len(state.heartbeat(2.0)) == 1
    state.on_worker(b"w1", mdp.Disconnect().encode(), 2.0)  # request 1 goes back to the queue
    [again] = ready(state, b"w2", now=2.5)
    final(state, b"w2", again, now=4.0)
    state.purge(20.0)  # w2 expires; the request for "ghost" times out
    counters = state.counters
    assert (counters.heartbeats_received, counters.heartbeats_sent) == (1, 1)
    assert counters.requeues == {"echo": 1} and counters.expirations == {"echo": 1}
    assert counters.finished == {("echo", Outcome.OK): 1, ("_unknown", Outcome.UNKNOWN_SERVICE): 1}
    assert state.drain_events() == [Dispatched("echo", 0.5), Finished("echo", Outcome.OK, 3.0),
                                    Finished("_unknown", Outcome.UNKNOWN_SERVICE, 19.0)]


def test_events_nobody_drains_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_EVENTS", 4)
    state = make()
    ready(state, b"w1")
    for rid in range(10):
        [given] = request(state, b"c", rid, now=float(rid))
        final(state, b"w1", given, now=rid + 0.5)
    assert state.drain_events() == [Dispatched("echo", 0.0), Finished("echo", Outcome.OK, 0.5)] * 2
    assert state.counters.finished == {("echo", Outcome.OK): 10}  # the totals are exact all the same


def test_collector_reads_the_state_at_scrape_time() -> None:
    state, traffic, clock = make(), Traffic(), [0.0]
    collector = BrokerCollector(state, traffic, clock=lambda: clock[0])
    registry = CollectorRegistry()
    registry.register(collector)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("ssnet_broker_workers", service="echo", state="idle") is None
    ready(state, b"w1")
    ready(state, b"w2")
    for name in ("ssnet_broker_requeues_total", "ssnet_broker_worker_expirations_total",
                 "ssnet_broker_request_duration_seconds_count", "ssnet_broker_queue_wait_seconds_count"):
        assert value(name, service="echo") == 0  # a registered service's series exist before anything happens
    assert value("ssnet_broker_requests_total", service="echo", outcome="ok") == 0
    assert value("ssnet_broker_requests_created", service="echo", outcome="ok") is not None
    [given] = request(state, b"c", 1)
    request(state, b"c", 2, "ghost")
    collector.observe(state.drain_events())  # as the loop does after each call
    clock[0] = 0.5
    assert value("ssnet_broker_workers", service="echo", state="busy") == 1
    assert value("ssnet_broker_workers", service="echo", state="idle") == 1
    assert value("ssnet_broker_queued_requests", service="_unknown") == 1  # unregistered names share one label
    assert value("ssnet_broker_worker_heartbeat_age_seconds", service="echo") == 0.5
    assert value("ssnet_broker_queue_wait_seconds_count", service="echo") == 1
    state.on_worker(b"w1", mdp.Heartbeat().encode(), 1.0)
    final(state, b"w1", given, now=2.0)
    state.heartbeat(2.0)
    collector.observe(state.drain_events())
    assert value("ssnet_broker_requests_total", service="echo", outcome="ok") == 1
    assert value("ssnet_broker_request_duration_seconds_sum", service="echo") == 2.0
    assert value("ssnet_broker_heartbeats_total", direction="received") == 1
    assert value("ssnet_broker_heartbeats_total", direction="sent") == 2
    assert value("ssnet_broker_bytes_total", direction="in") is None  # no traffic yet: no series, as ever
    traffic.bytes_in, traffic.bytes_out = 100, 50
    traffic.malformed["worker"] += 1
    assert value("ssnet_broker_bytes_total", direction="in") == 100
    assert value("ssnet_broker_bytes_total", direction="out") == 50
    assert value("ssnet_broker_malformed_messages_total", side="worker") == 1
    state.purge(20.0)
    collector.observe(state.drain_events())
    clock[0] = 20.0
    assert value("ssnet_broker_worker_expirations_total", service="echo") == 2
    assert value("ssnet_broker_requests_total", service="_unknown", outcome="unknown_service") == 1
    assert value("ssnet_broker_request_duration_seconds_count", service="_unknown") == 1
    assert value("ssnet_broker_workers", service="echo", state="idle") == 0  # gone: reads zero, not its last value
    assert value("ssnet_broker_worker_heartbeat_age_seconds", service="echo") == 0
    assert value("ssnet_broker_queued_requests", service="_unknown") == 0


def test_collector_describes_what_it_collects() -> None:
    state = make()
    ready(state, b"w1")
    registry = CollectorRegistry()
    registry.register(BrokerCollector(state, Traffic()))
    with pytest.raises(ValueError, match="Duplicated"):
        Gauge("ssnet_broker_queued_requests", "a clash", registry=registry)
    text = generate_latest(registry.restricted_registry(["ssnet_broker_workers"])).decode()  # /metrics?name[]=
    assert 'ssnet_broker_workers{service="echo",state="idle"} 1.0' in text and "requests_total" not in text


def test_collector_reads_under_the_loop_lock() -> None:
    lock = threading.Lock()
    registry = CollectorRegistry()
    registry.register(BrokerCollector(make(), Traffic(), lock))
    scraped = threading.Event()
    thread = threading.Thread(target=lambda: (generate_latest(registry), scraped.set()))
    with lock:  # the loop is changing the state
        thread.start()
        assert not scraped.wait(0.1)
    assert scraped.wait(10)
    thread.join()


def test_client_retry_of_a_request_in_hand_is_dropped() -> None:
    state = make()
    request(state, b"c", 1)
    assert request(state, b"c", 1) == []  # retry while queued
    [given] = ready(state, b"w1")
    assert request(state, b"c", 1) == []  # retry while a worker has it
    assert request(state, b"other-client", 1) == []  # same id from another client is another request
    [reply, other] = final(state, b"w1", given)
    assert reply.identity == b"c" and other.identity == b"w1" and request_id(other) == 1
    final(state, b"w1", other)
    [again] = request(state, b"c", 1)  # answered: the same id may be asked again
    assert again.side is Side.WORKER
    assert state.pending == {(b"c", 1)}


def test_a_service_no_worker_ever_offered_fails_after_its_own_short_timeout() -> None:
    state = make(Limits(queue_timeout=300.0, unknown_service_timeout=2.0))
    request(state, b"c", 1, "typo")
    ready(state, b"w1")
    request(state, b"c", 2)
    request(state, b"c", 3)  # behind request 2, for a service that has a worker
    assert state.purge(1.9) == []
    [unknown] = state.purge(2.1)
    assert client_error(unknown) == ErrorCode.UNKNOWN_SERVICE and request_id(unknown) == 1
    assert "waited 2 s" in mdp.decode_body(mdp.decode_client_reply(unknown.frames).body).error[1]
    assert state.purge(299.0) == []  # a known service keeps the long queue timeout


@pytest.mark.parametrize(("delivered", "fails"), [(False, False), (True, True)])
def test_an_unreachable_worker_goes_at_once_and_an_undelivered_request_keeps_its_attempt(
        delivered: bool, fails: bool) -> None:
    state = make(Limits(max_attempts=1))
    ready(state, b"w1")
    ready(state, b"w2")
    [given] = request(state, b"c", 7)
    assert given.identity == b"w1" and given.request
    out = state.on_unreachable(b"w1", 1.0, delivered=delivered)
    assert b"w1" not in state.workers and state.counters.unreachable == {"echo": 1}
    if fails:  # it may have reached w1 before w1 died: that was its one attempt
        [error] = out
        assert client_error(error) == ErrorCode.WORKER_LOST
    else:  # it never reached w1: w2 gets it, still on its first attempt
        [again] = out
        assert again.identity == b"w2" and request_id(again) == 7 and again.request
    assert state.on_unreachable(b"nobody", 1.0) == []
    heartbeats = state.heartbeat(5.0)
    assert [h.identity for h in heartbeats] == [b"w2"] and not any(h.request for h in heartbeats)


def test_the_whole_state_is_bounded() -> None:
    state = make(Limits(max_queue=5, max_queued=3, max_services=2))
    assert request(state, b"c", 1, "a") == [] and request(state, b"c", 2, "b") == []
    [refused] = request(state, b"c", 3, "c")  # a third service
    assert client_error(refused) == ErrorCode.QUEUE_FULL
    assert "holds 2 services" in mdp.decode_body(mdp.decode_client_reply(refused.frames).body).error[1]
    assert set(state.services) == {"a", "b"}
    assert request(state, b"c", 4, "a") == []
    [full] = request(state, b"c", 5, "b")  # 3 queued in all
    assert client_error(full) == ErrorCode.QUEUE_FULL
    assert dict(state.counters.rejected) == {"max_services": 1, "max_queued": 1}
    state.purge(100.0)  # no worker ever offered a or b: their requests fail, their services go
    assert state.services == {} and request(state, b"c", 6, "c") == []


def test_collector_shows_the_bounds_and_unreachable_workers() -> None:
    state, traffic = make(Limits(max_services=7)), Traffic()
    collector = BrokerCollector(state, traffic)
    registry = CollectorRegistry()
    registry.register(collector)
    ready(state, b"w1")
    ready(state, b"w2")
    state.on_unreachable(b"w1", 1.0)
    assert registry.get_sample_value("ssnet_broker_worker_unreachable_total", {"service": "echo"}) == 1
    assert registry.get_sample_value("ssnet_broker_limit", {"limit": "max_services"}) == 7
    assert registry.get_sample_value("ssnet_broker_limit", {"limit": "unknown_service_timeout"}) == 10
    assert registry.get_sample_value("ssnet_broker_rejected_requests_total", {"bound": "max_queued"}) == 0
    assert registry.get_sample_value("ssnet_broker_services", {}) == 1
    undeliverable = "ssnet_broker_undeliverable_messages_total"
    assert registry.get_sample_value(undeliverable, {"side": "client", "reason": "full"}) == 0
    traffic.undeliverable["client", "full"] += 3
    assert registry.get_sample_value(undeliverable, {"side": "client", "reason": "full"}) == 3
    assert registry.get_sample_value(undeliverable, {"side": "worker", "reason": "gone"}) == 0


def test_the_queued_total_follows_every_queue() -> None:
    """``queued()`` is a running total (the bound ``max_queued`` is checked at every request): it must agree with
    the queues through dispatch, requeue, timeout, refusal and shutdown."""
    state = make(Limits(heartbeat_interval=1.0, queue_timeout=10.0, max_queue=3, max_attempts=3))

    def agrees() -> bool:
        return state.queued() == sum(len(s.queue) for s in state.services.values())

    for rid in range(3):
        request(state, b"c", rid)
    request(state, b"c", 9, "ghost")
    [full] = request(state, b"c", 3)  # the queue of "echo" is full: refused, not queued
    assert client_error(full) == ErrorCode.QUEUE_FULL and state.queued() == 4 and agrees()
    [given] = ready(state, b"w1", now=1.0)
    assert state.queued() == 3 and agrees()
    state.on_worker(b"w1", mdp.Disconnect().encode(), 2.0)  # its request goes back to the front
    assert state.queued() == 4 and agrees()
    [again] = ready(state, b"w2", now=2.0)
    assert request_id(again) == request_id(given)
    final(state, b"w2", again, now=3.0)
    assert state.queued() == 2 and agrees()
    state.purge(11.5)  # "ghost" and request 2 waited too long; w2 expired, its request 1 goes back to the queue
    assert state.queued() == 1 and agrees()
    request(state, b"c", 20, now=12.0)
    request(state, b"c", 21, now=12.0)
    assert state.queued() == 3 and agrees()
    state.shutdown()
    assert state.queued() == 0


def test_latency_histogram_exposes_what_prometheus_client_would() -> None:
    from prometheus_client import Histogram

    from ssnet_broker.metrics import LatencyHistogram
    from ssnet_common.metrics import LATENCY_BUCKETS

    theirs = Histogram("x_seconds", "doc", ["service"], buckets=LATENCY_BUCKETS, registry=None)
    ours = LatencyHistogram("x_seconds", "doc", LATENCY_BUCKETS)
    for value in (0.0, 0.0005, 0.001, 0.0011, 0.3, 5.0, 600.0, 1e6):  # on a bound, between, beyond the last
        theirs.labels(service="a").observe(value)
        ours.observe("a", value)
    theirs.labels(service="b")
    ours.labels("b")

    def samples(family: Any) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for s in family.samples if not s.name.endswith("_created")]

    [expected] = theirs.collect()
    got = ours.collect()
    assert (got.name, got.type, got.documentation) == (expected.name, expected.type, expected.documentation)
    assert samples(got) == samples(expected)
    assert [s.labels for s in got.samples if s.name.endswith("_created")] == [{"service": "a"}, {"service": "b"}]
