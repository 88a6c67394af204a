"""RequestTracker (the client's bookkeeping) and ClientConfig, without sockets: time is passed in."""

from __future__ import annotations

import itertools
import logging

import pytest

from ssnet_client.base import ClientConfig, Reply, ReplyDisposition, RequestTracker, Send, error_for
from ssnet_common.errors import (
    BrokerBusy,
    ConfigError,
    ErrorCode,
    NoSuchService,
    ProtocolError,
    QueueTimeout,
    RequestError,
    RequestTimeout,
    ServiceUnavailable,
    WorkerError,
    WorkerLost,
)
from ssnet_common.protocol import (
    Body,
    decode_body,
    decode_client_request,
    error_body,
    frame_bytes,
    request_body,
    result_body,
)

CONFIG = ClientConfig(timeout=10.0, retries=2, window=3, busy_backoff=1.0, busy_backoff_max=3.0, jitter=0.0)


def make(config: ClientConfig = CONFIG, **kwargs: object) -> RequestTracker:
    return RequestTracker(config, itertools.count(1).__next__, **kwargs)  # type: ignore[arg-type]


def result(request_id: int, *payload: bytes) -> Body:
    return result_body(request_id, list(payload))


def error(request_id: int, code: str, message: str = "it failed") -> Body:
    return error_body(request_id, code, message)


def drain(tracker: RequestTracker) -> list[object]:
    out: list[object] = []
    while (outcome := tracker.pop_next()) is not None:
        out.append(outcome)
    return out


# --------------------------------------------------------------------------------------------- submission
def test_submit_assigns_increasing_ids_and_encodes_the_request() -> None:
    tracker = make()
    sends = [tracker.submit("echo", [b"a", b"bc"], now=0.0), tracker.submit("sleep", [], now=0.5)]
    assert [s.request_id for s in sends] == [1, 2]
    assert all(s.attempt == 1 for s in sends)
    request = decode_client_request(sends[0].frames)
    assert request.service == "echo"
    body = decode_body(request.body)
    assert body == request_body(1, [b"a", b"bc"])
    assert decode_body(decode_client_request(sends[1].frames).body).request_id == 2
    assert tracker.in_flight == tracker.outstanding == 2


def test_ids_come_from_the_shared_counter() -> None:
    ids = itertools.count(41)
    first, second = RequestTracker(CONFIG, ids.__next__), RequestTracker(CONFIG, ids.__next__)
    assert first.submit("a", [], 0.0).request_id == 41
    assert second.submit("a", [], 0.0).request_id == 42
    assert first.on_reply("a", result(42), 1.0) is ReplyDisposition.NOT_PENDING
    assert second.on_reply("a", result(42), 1.0) is ReplyDisposition.FINISHED


def test_bad_service_name_is_refused_before_anything_is_pending() -> None:
    tracker = make()
    for name in ("", "has space", "x" * 256, "caf\u00e9"):
        with pytest.raises(ProtocolError):
            tracker.submit(name, [], 0.0)
    assert tracker.outstanding == 0
    assert tracker.submit("ok", [], 0.0).request_id == 1


def test_window_bounds_submitted_and_not_taken() -> None:
    tracker = make()
    for _ in range(3):
        tracker.submit("echo", [], 0.0)
    assert not tracker.has_room()
    with pytest.raises(RuntimeError, match="window full"):
        tracker.submit("echo", [], 0.0)
    # Answered but not yet taken still counts: results are held in order, so memory stays bounded.
    tracker.on_reply("echo", result(2), 1.0)
    assert tracker.in_flight == 2 and tracker.outstanding == 3 and not tracker.has_room()
    assert tracker.pop_next() is None  # request 1 is still pending
    tracker.on_reply("echo", result(1), 1.0)
    assert isinstance(tracker.pop_next(), Reply)
    assert tracker.has_room() and tracker.outstanding == 2


def test_window_override() -> None:
    tracker = make(window=1)
    tracker.submit("echo", [], 0.0)
    assert not tracker.has_room()
    with pytest.raises(ConfigError):
        make(window=0)


# ----------------------------------------------------------------------------------------------- ordering
def test_outcomes_come_out_in_submission_order() -> None:
    tracker = make(window=5)
    for i in range(5):
        tracker.submit("echo", [b"%d" % i], now=float(i))
    for request_id in (5, 3, 4, 2):
        assert tracker.on_reply("echo", result(request_id, b"r%d" % request_id), 10.0) is ReplyDisposition.FINISHED
        assert tracker.pop_next() is None
    tracker.on_reply("echo", result(1, b"r1"), 10.0)
    outcomes = drain(tracker)
    assert [o.request_id for o in outcomes] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]
    assert [o.payload for o in outcomes] == [[b"r%d" % i] for i in range(1, 6)]  # type: ignore[attr-defined]
    assert [o.rtt for o in outcomes] == [10.0, 9.0, 8.0, 7.0, 6.0]  # type: ignore[attr-defined]
    assert tracker.outstanding == 0 and tracker.next_deadline() is None


def test_errors_take_their_turn_in_order() -> None:
    tracker = make()
    for _ in range(3):
        tracker.submit("echo", [], 0.0)
    tracker.on_reply("echo", result(3), 1.0)
    tracker.on_reply("echo", error(2, ErrorCode.WORKER_ERROR, "bad input"), 1.0)
    tracker.on_reply("echo", result(1), 1.0)
    first, second, third = drain(tracker)
    assert isinstance(first, Reply) and isinstance(third, Reply)
    assert isinstance(second, WorkerError) and second.request_id == 2


# ------------------------------------------------------------------------------------------- id matching
def test_unknown_late_and_duplicate_replies_are_not_pending() -> None:
    tracker = make()
    tracker.submit("echo", [], 0.0)
    assert tracker.on_reply("echo", result(99), 1.0) is ReplyDisposition.NOT_PENDING
    assert tracker.on_reply("echo", result(1, b"first"), 1.0) is ReplyDisposition.FINISHED
    assert tracker.on_reply("echo", result(1, b"again"), 1.1) is ReplyDisposition.NOT_PENDING  # not taken yet
    (outcome,) = drain(tracker)
    assert outcome.payload == [b"first"]  # type: ignore[attr-defined]
    assert tracker.on_reply("echo", result(1, b"late"), 2.0) is ReplyDisposition.NOT_PENDING  # after taken
    assert tracker.on_reply("echo", error(1, ErrorCode.WORKER_ERROR), 2.0) is ReplyDisposition.NOT_PENDING


def test_request_body_from_the_broker_is_invalid_and_leaves_the_request_pending() -> None:
    tracker = make()
    tracker.submit("echo", [], 0.0)
    assert tracker.on_reply("echo", request_body(1, []), 1.0) is ReplyDisposition.INVALID
    assert tracker.is_pending(1)
    assert tracker.on_reply("echo", result(1), 1.0) is ReplyDisposition.FINISHED


def test_reply_naming_another_service_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    tracker = make()
    tracker.submit("echo", [], 0.0)
    with caplog.at_level(logging.WARNING, logger="ssnet_client.base"):
        assert tracker.on_reply("other", result(1), 1.0) is ReplyDisposition.FINISHED
    assert "names service 'other'" in caplog.text
    assert tracker.pop_next().service == "echo"  # type: ignore[union-attr]


# -------------------------------------------------------------------------------------- timeout and retry
def test_timeout_resends_the_same_message_then_fails() -> None:
    tracker = make()  # timeout 10, retries 2
    first = tracker.submit("echo", [b"x"], now=100.0)
    assert tracker.next_deadline() == 110.0
    assert tracker.poll(109.999) == []
    (resend,) = tracker.poll(110.0)
    assert resend == Send(1, "echo", first.frames, attempt=2, reason="timeout")
    assert resend.frames is first.frames
    assert tracker.next_deadline() == 120.0
    (resend,) = tracker.poll(121.0)
    assert resend.attempt == 3
    assert tracker.next_deadline() == 131.0
    assert tracker.poll(130.0) == []
    assert tracker.poll(131.0) == []  # retries exhausted: fails instead of resending
    assert not tracker.is_pending(1) and tracker.next_deadline() is None
    (outcome,) = drain(tracker)
    assert isinstance(outcome, RequestTimeout)
    assert outcome.service == "echo" and outcome.request_id == 1 and outcome.code == "timeout"
    assert "3 attempt(s)" in str(outcome)
    assert tracker.on_reply("echo", result(1), 140.0) is ReplyDisposition.NOT_PENDING


def test_no_retries_fails_at_the_first_timeout() -> None:
    tracker = make(ClientConfig(timeout=1.0, retries=0))
    tracker.submit("echo", [], 0.0)
    assert tracker.poll(1.0) == []
    assert isinstance(tracker.pop_next(), RequestTimeout)


def test_answer_to_an_earlier_attempt_completes_the_request() -> None:
    tracker = make()
    tracker.submit("echo", [], now=0.0)
    tracker.poll(10.0)
    assert tracker.on_reply("echo", result(1, b"ok"), 12.5) is ReplyDisposition.FINISHED
    (outcome,) = drain(tracker)
    assert isinstance(outcome, Reply)
    assert outcome.attempts == 2 and outcome.rtt == 12.5  # rtt counts from the first sending
    assert tracker.on_reply("echo", result(1, b"dup"), 13.0) is ReplyDisposition.NOT_PENDING


def test_timeouts_only_touch_expired_requests_in_submission_order() -> None:
    tracker = make()
    tracker.submit("a", [], now=0.0)
    tracker.submit("b", [], now=5.0)
    tracker.submit("c", [], now=1.0)
    assert [s.request_id for s in tracker.poll(10.0)] == [1]
    assert [s.request_id for s in tracker.poll(11.0)] == [3]
    assert [s.request_id for s in tracker.poll(16.0)] == [2]


def test_timeout_override() -> None:
    tracker = make(timeout=0.25)
    tracker.submit("echo", [], 0.0)
    assert tracker.next_deadline() == 0.25
    with pytest.raises(ConfigError):
        make(timeout=0.0)


# ---------------------------------------------------------------------------------------------- busy
def test_queue_full_backs_off_then_resends_counting_a_retry() -> None:
    tracker = make()  # retries 2, backoff 1.0 doubling, max 3.0
    first = tracker.submit("echo", [], now=0.0)
    assert tracker.on_reply("echo", error(1, ErrorCode.QUEUE_FULL), 0.5) is ReplyDisposition.BACKOFF
    assert tracker.is_pending(1) and tracker.next_deadline() == 1.5
    assert tracker.pop_next() is None
    assert tracker.poll(1.4) == []
    (resend,) = tracker.poll(1.5)
    assert resend == Send(1, "echo", first.frames, attempt=2, reason="busy")
    assert tracker.next_deadline() == 11.5  # back to the reply timeout
    assert tracker.on_reply("echo", error(1, ErrorCode.QUEUE_FULL), 2.0) is ReplyDisposition.BACKOFF
    assert tracker.next_deadline() == 4.0  # second back-off doubled
    (resend,) = tracker.poll(4.0)
    assert resend.attempt == 3
    # Retries spent: the next queue_full is final.
    final = tracker.on_reply("echo", error(1, ErrorCode.QUEUE_FULL, "queue of 'echo' full"), 5.0)
    assert final is ReplyDisposition.FINISHED
    (outcome,) = drain(tracker)
    assert isinstance(outcome, BrokerBusy) and isinstance(outcome, ServiceUnavailable)
    assert outcome.request_id == 1 and "queue of 'echo' full" in str(outcome)


def test_queue_full_then_result() -> None:
    tracker = make()
    tracker.submit("echo", [], now=0.0)
    tracker.on_reply("echo", error(1, ErrorCode.QUEUE_FULL), 0.1)
    tracker.poll(1.1)
    tracker.on_reply("echo", result(1, b"done"), 1.2)
    (outcome,) = drain(tracker)
    assert isinstance(outcome, Reply) and outcome.attempts == 2
    assert [frame_bytes(f) for f in outcome.payload] == [b"done"]


def test_result_during_back_off_completes_the_request() -> None:
    tracker = make()
    tracker.submit("echo", [], now=0.0)
    tracker.poll(10.0)  # attempt 2 sent
    tracker.on_reply("echo", error(1, ErrorCode.QUEUE_FULL), 10.1)  # answer to attempt 2
    assert tracker.on_reply("echo", result(1), 10.2) is ReplyDisposition.FINISHED  # late answer to attempt 1
    assert tracker.poll(100.0) == []
    assert isinstance(tracker.pop_next(), Reply)


def test_backoff_schedule() -> None:
    config = ClientConfig(busy_backoff=0.5, busy_backoff_max=3.0, jitter=0.0)
    assert [config.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = ClientConfig(busy_backoff=0.5, busy_backoff_max=3.0)
    assert all(0.8 * want <= jittered.backoff(n) <= want for n, want in zip(range(1, 6), [0.5, 1, 2, 3, 3]))


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
def test_error_codes_map_to_exceptions(code: str, kind: type[RequestError]) -> None:
    tracker = make()
    tracker.submit("svc", [], 0.0)
    assert tracker.on_reply("svc", error(1, code, "the server's words"), 1.0) is ReplyDisposition.FINISHED
    (outcome,) = drain(tracker)
    assert type(outcome) is kind and isinstance(outcome, RequestError)
    assert outcome.service == "svc" and outcome.request_id == 1
    assert outcome.code == code  # the wire code is the exception's label (metrics, logs): one list of codes
    assert "the server's words" in str(outcome) and code in str(outcome)
    assert not tracker.poll(1e9)  # final: never resent


def test_queue_full_without_retries_is_broker_busy() -> None:
    tracker = make(ClientConfig(retries=0))
    tracker.submit("svc", [], 0.0)
    assert tracker.on_reply("svc", error(1, ErrorCode.QUEUE_FULL), 1.0) is ReplyDisposition.FINISHED
    assert type(tracker.pop_next()) is BrokerBusy


def test_unknown_error_code_is_a_plain_request_error() -> None:
    exc = error_for("out_of_cheese", "redo from start", service="svc", request_id=7)
    assert type(exc) is RequestError
    assert "out_of_cheese" in str(exc) and "redo from start" in str(exc) and exc.request_id == 7


# -------------------------------------------------------------------------------------------- cancel
def test_cancel_forgets_everything_outstanding() -> None:
    tracker = make()
    tracker.submit("a", [], 0.0)
    tracker.submit("b", [], 0.0)
    tracker.on_reply("b", result(2), 1.0)
    assert tracker.cancel() == ["a", "b"]
    assert tracker.outstanding == tracker.in_flight == 0
    assert tracker.next_deadline() is None and tracker.poll(1e9) == [] and tracker.pop_next() is None
    assert tracker.on_reply("a", result(1), 2.0) is ReplyDisposition.NOT_PENDING


# -------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0}, {"timeout": -1.0}, {"timeout": float("inf")}, {"timeout": float("nan")},
        {"retries": -1}, {"window": 0}, {"busy_backoff": 0}, {"busy_backoff_max": -1}, {"jitter": 1.0},
        {"linger": -0.5},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ClientConfig(**kwargs)  # type: ignore[arg-type]


def test_config_defaults_and_frozen() -> None:
    config = ClientConfig()
    assert (config.timeout, config.retries, config.window) == (120.0, 3, 8)
    with pytest.raises(AttributeError):
        config.timeout = 1.0  # type: ignore[misc]
