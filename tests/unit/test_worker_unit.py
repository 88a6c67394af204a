"""Unit tests of ssnet_worker without sockets: timers, config, the request path, the command line."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ssnet_common.errors import ConfigError, ErrorCode
from ssnet_common.protocol import (
    BodyKind,
    Frame,
    decode_body,
    frame_bytes,
    request_body,
    result_body,
)
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images
from ssnet_worker.base import Liveness, Worker, WorkerConfig, _Job, _Runner
from ssnet_worker.cli import KINDS, build_parser, config_from_args, main
from ssnet_worker.dummy import DummyLArCV1Worker, EchoWorker, SleepWorker

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)


class FailingWorker(Worker):
    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        raise KeyError("no such thing")


class BadReplyWorker(Worker):
    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        return ["text is not a frame"]  # type: ignore[list-item]


def config(service: str = "test", **kwargs: object) -> WorkerConfig:
    return WorkerConfig(service, **kwargs)  # type: ignore[arg-type]


def product(name: str, shape: tuple[int, int, int], dtype: str, first_event: int) -> ImageProduct:
    k, rows, cols = shape
    items = tuple(
        (ImageMeta(width=cols * 2.0, height=rows * 6.0, rows=rows, cols=cols, origin_x=10.0, origin_y=8448.0,
                   plane=i % 3), EventId(5007, 101, first_event + i))
        for i in range(k)
    )
    array = np.arange(k * rows * cols).reshape(shape).astype(dtype)
    return ImageProduct(name, items, array)


# ------------------------------------------------------------------------------------------- timers
def test_liveness_schedule() -> None:
    live = Liveness(interval=2.5, liveness=3, now=100.0)
    assert not live.heartbeat_due(102.4)
    assert live.heartbeat_due(102.5)
    assert live.next_deadline() == 102.5
    live.heartbeat_sent(102.6)  # a fixed rhythm: the next one is due an interval after the last was due
    assert live.next_heartbeat == pytest.approx(105.0)
    assert not live.heartbeat_due(104.9)
    # Broker silent: expires after liveness * interval since the last message.
    assert not live.expired(107.4)
    assert live.expired(107.5)
    assert live.age(107.5) == pytest.approx(7.5)
    live.received(107.0)
    assert not live.expired(109.0)
    assert live.age(109.0) == pytest.approx(2.0)
    assert live.next_deadline() == pytest.approx(105.0)
    live.heartbeat_sent(111.0)  # far behind (the loop was blocked): no burst of catch-up heartbeats
    assert live.next_heartbeat == pytest.approx(113.5)


def test_liveness_deadline_is_expiry_when_heartbeats_are_ahead() -> None:
    live = Liveness(interval=1.0, liveness=1, now=0.0)
    live.heartbeat_sent(0.9)  # next heartbeat at 2.0, but the broker expires at 1.0
    assert live.next_deadline() == 1.0
    assert live.age(-1.0) == 0.0


# ------------------------------------------------------------------------------------------- config
def test_config_defaults() -> None:
    cfg = config("dummy")
    assert (cfg.broker, cfg.heartbeat_interval, cfg.heartbeat_liveness) == ("tcp://localhost:5560", 2.5, 3)
    assert (cfg.reconnect_min, cfg.reconnect_max, cfg.metrics_port) == (1.0, 32.0, 0)
    assert cfg.broker_timeout == 7.5
    with pytest.raises(AttributeError):
        cfg.service = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"service": ""}, {"service": "has space"}, {"service": "x" * 256},
        {"broker": "localhost:5560"}, {"broker": "udp://x:1"},
        {"heartbeat_interval": 0}, {"heartbeat_interval": float("inf")}, {"heartbeat_interval": True},
        {"heartbeat_liveness": 0}, {"heartbeat_liveness": 1.5},
        {"reconnect_min": 0}, {"reconnect_min": 4.0, "reconnect_max": 2.0},
        {"metrics_port": 70000}, {"metrics_port": -1}, {"shutdown_linger": -1},
        {"slots": 0}, {"slots": 257}, {"slots": True}, {"batch_wait": -0.001}, {"batch_wait": 61},
    ],
)
def test_config_rejects(kwargs: dict[str, object]) -> None:
    service = kwargs.pop("service", "test")
    with pytest.raises(ConfigError):
        config(str(service), **kwargs)


# ------------------------------------------------------------------------------------- request path
def test_echo_returns_the_same_frame_objects() -> None:
    payload: list[Frame] = [b"a", bytearray(b"b"), memoryview(b"c")]
    assert EchoWorker(config()).handle(payload) is payload


def test_answer_wraps_result_in_our_envelope() -> None:
    reply, ok = EchoWorker(config()).answer(request_body(42, [b"x", b"yz"]).encode())
    body = decode_body(reply)
    assert ok
    assert (body.kind, body.request_id, [frame_bytes(f) for f in body.payload]) == (BodyKind.RESULT, 42, [b"x", b"yz"])


def test_answer_turns_exceptions_into_worker_error() -> None:
    worker = FailingWorker(config())
    reply, ok = worker.answer(request_body(7, [b"x"]).encode())
    body = decode_body(reply)
    assert not ok
    assert body.kind == BodyKind.ERROR and body.request_id == 7
    assert body.error == (ErrorCode.WORKER_ERROR, "KeyError: 'no such thing'")


def test_answer_rejects_bad_reply_frames() -> None:
    reply, ok = BadReplyWorker(config()).answer(request_body(8, []).encode())
    code, message = decode_body(reply).error
    assert not ok and code == ErrorCode.WORKER_ERROR and message.startswith("TypeError: handle() must return")


def test_answer_rejects_non_request_bodies() -> None:
    reply, ok = EchoWorker(config()).answer(result_body(9, [b"x"]).encode())
    body = decode_body(reply)
    assert not ok and body.request_id == 9 and body.error[0] == ErrorCode.WORKER_ERROR


def test_plain_bodies_are_answered_raw() -> None:
    reply, ok = EchoWorker(config()).answer([b"hello", b"world"])
    assert ok and [frame_bytes(f) for f in reply] == [b"hello", b"world"]
    reply, ok = FailingWorker(config()).answer([b"hello"])
    assert not ok and [frame_bytes(f) for f in reply] == [b"error", b"worker_error", b"KeyError: 'no such thing'"]


class PickyWorker(Worker):
    """Batches: records the requests handed over together; payload b"bad" fails that request alone."""

    def __init__(self) -> None:
        super().__init__(config())
        self.batches: list[int] = []

    def handle_many(self, payloads: list[list[Frame]]) -> list[Sequence[Frame] | BaseException]:
        self.batches.append(len(payloads))
        return [ValueError("bad one") if frame_bytes(p[0]) == b"bad" else [b"ok", p[0]] for p in payloads]


def test_answer_many_hands_every_request_over_at_once_and_fails_only_the_bad_one() -> None:
    worker = PickyWorker()
    bodies = [request_body(1, [b"a"]).encode(), request_body(2, [b"bad"]).encode(), [b"plain"],
              result_body(3, [b"x"]).encode()]
    (one, ok1), (two, ok2), (plain, ok3), (wrong, ok4) = worker.answer_many(bodies)
    assert worker.batches == [3]  # the RESULT body is refused before handle_many
    assert ok1 and [frame_bytes(f) for f in decode_body(one).payload] == [b"ok", b"a"]
    assert not ok2 and decode_body(two).request_id == 2 and decode_body(two).error[1] == "ValueError: bad one"
    assert ok3 and [frame_bytes(f) for f in plain] == [b"ok", b"plain"]
    assert not ok4 and decode_body(wrong).request_id == 3


class MiscountingWorker(Worker):
    def handle_many(self, payloads: list[list[Frame]]) -> list[Sequence[Frame] | BaseException]:
        return []


def test_a_wrong_number_of_replies_fails_every_request() -> None:
    replies = MiscountingWorker(config()).answer_many([request_body(1, []).encode(), request_body(2, []).encode()])
    assert [ok for _, ok in replies] == [False, False]
    assert decode_body(replies[0][0]).error[1] == "RuntimeError: handle_many() gave 0 replies for 2 requests"


class _FakeWaker:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


def test_the_runner_takes_the_jobs_in_hand_together_up_to_the_slots() -> None:
    seen: list[list[int]] = []

    def answer(jobs: Sequence[_Job]) -> list:  # type: ignore[type-arg]
        seen.append([job.slot for job in jobs])
        return []

    runner = _Runner(answer, _FakeWaker(), slots=3, batch_wait=5.0)  # type: ignore[arg-type]
    try:
        for slot in range(5):  # the first three fill the slots at once; the last two wait out batch_wait (5 s)...
            runner.submit(_Job(slot, 1, b"client", [b"x"], True))
    finally:
        runner.close(wait=True)  # ...unless the queue closes first: they go at once
    assert seen == [[0, 1, 2], [3, 4]]


def test_sleep_worker_validates_its_argument() -> None:
    worker = SleepWorker(config())
    assert [frame_bytes(f) for f in worker.handle([b"0", b"data"])] == [b"0", b"data"]
    for bad in ([], [b"soon"], [b"-1"], [b"nan"], [b"1e9"]):
        with pytest.raises(ValueError):
            worker.handle(bad)  # type: ignore[arg-type]


def test_dummy_worker_replies_zeros_of_the_first_product() -> None:
    products = [product("wire", (2, 6, 4), "float32", 1), product("other", (1, 3, 5), "uint8", 9)]
    frames = encode_images(products)
    reply = decode_images(DummyLArCV1Worker(config()).handle(frames))
    assert len(reply) == 1
    (out,) = reply
    assert out.name == "dummy" and out.items == products[0].items
    assert out.array.shape == (2, 6, 4) and out.array.dtype == np.float32 and not out.array.any()


def test_metrics_count_answers() -> None:
    registry = CollectorRegistry()
    worker = FailingWorker(config("svc"), registry=registry)
    worker.metrics.request_done(False, 0.25)
    assert registry.get_sample_value(
        "ssnet_worker_requests_total", {"service": "svc", "outcome": "error"}) == 1
    assert registry.get_sample_value("ssnet_worker_errors_total", {"service": "svc"}) == 1
    assert registry.get_sample_value("ssnet_worker_processing_seconds_count", {"service": "svc"}) == 1
    # A second worker in the same process with its own registry does not clash.
    EchoWorker(config("svc"))


# ----------------------------------------------------------------------------------------- command line
def test_service_defaults_to_the_kind() -> None:
    assert config_from_args(build_parser({}).parse_args(["--kind", "echo"])).service == "echo"
    assert config_from_args(build_parser({}).parse_args([])).service == "dummy"
    args = build_parser({}).parse_args(["--kind", "sleep", "--service", "slow"])
    assert (args.kind, config_from_args(args).service) == ("sleep", "slow")
    assert {"dummy", "echo", "sleep"} <= set(KINDS)


def test_options_come_from_the_environment() -> None:
    environ = {
        "SSNET_WORKER_BROKER": "ipc:///tmp/b", "SSNET_WORKER_KIND": "echo", "SSNET_WORKER_SERVICE": "e2",
        "SSNET_WORKER_HEARTBEAT_INTERVAL": "0.5", "SSNET_WORKER_HEARTBEAT_LIVENESS": "4",
        "SSNET_WORKER_RECONNECT_MAX": "8", "SSNET_WORKER_METRICS_PORT": "9101",
    }
    cfg = config_from_args(build_parser(environ).parse_args([]))
    assert cfg == WorkerConfig(
        service="e2", broker="ipc:///tmp/b", heartbeat_interval=0.5, heartbeat_liveness=4, reconnect_max=8.0,
        metrics_port=9101,
    )
    # The command line wins over the environment.
    assert config_from_args(build_parser(environ).parse_args(["--service", "cli"])).service == "cli"


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--kind", "nope"], {}),
        (["--broker", "localhost:5560"], {}),
        (["--heartbeat-interval", "0"], {}),
        (["--heartbeat-liveness", "x"], {}),
        ([], {"SSNET_WORKER_HEARTBEAT_LIVENESS": "x"}),
        ([], {"SSNET_WORKER_KIND": "nope"}),
        (["--reconnect-min", "4", "--reconnect-max", "2"], {}),
        (["--service", "bad name"], {}),
    ],
)
def test_bad_options_exit_2(argv: list[str], environ: dict[str, str]) -> None:
    assert main(argv, environ) == 2


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == 0
    out = capsys.readouterr().out
    assert "SSNET_WORKER_HEARTBEAT_INTERVAL" in out and "--kind" in out
