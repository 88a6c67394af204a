"""The wire protocol: MDP/0.2 client and worker messages, our body envelope, MMI and the broker's own replies."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import pytest
import zmq

from ssnet_common import protocol as mdp
from ssnet_common.errors import ErrorCode, ProtocolError

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

C = mdp.CLIENT_PROTOCOL
W = mdp.WORKER_PROTOCOL
BODY = [b"first", b"", b"\x00\xff binary"]


def cmd(value: int) -> bytes:
    return bytes([value])


def with_delimiter(frames: list[Any], delimited: bool) -> list[Any]:
    return [b"", *frames] if delimited else list(frames)


# ------------------------------------------------------------------------------------------------ round trips
CLIENT_TO_BROKER = [
    mdp.ClientRequest("echo", BODY),
    mdp.ClientRequest("echo", []),
    mdp.ClientRequest("a" * mdp.MAX_SERVICE_NAME, [b"x"]),
    mdp.ClientRequest("mmi.service", [b"echo"]),
]
BROKER_TO_CLIENT = [
    mdp.ClientReply("echo", BODY, final=True),
    mdp.ClientReply("echo", BODY, final=False),
    mdp.ClientReply("echo", []),
]
WORKER_TO_BROKER = [
    mdp.Ready("echo"),
    mdp.Ready("ssnet.larcv1~v2"),
    mdp.WorkerReply(b"\x00k\x8bEg", BODY, final=True),
    mdp.WorkerReply(b"client-1", BODY, final=False),
    mdp.WorkerReply(b"client-1", []),
    mdp.Heartbeat(),
    mdp.Disconnect(),
]
BROKER_TO_WORKER = [
    mdp.WorkerRequest(b"\x00k\x8bEg", BODY),
    mdp.WorkerRequest(b"c", []),
    mdp.Heartbeat(),
    mdp.Disconnect(),
]
ROUND_TRIPS: list[tuple[Any, Callable[[list[Any]], Any]]] = [
    *((m, mdp.decode_client_request) for m in CLIENT_TO_BROKER),
    *((m, mdp.decode_client_reply) for m in BROKER_TO_CLIENT),
    *((m, mdp.decode_from_worker) for m in WORKER_TO_BROKER),
    *((m, mdp.decode_to_worker) for m in BROKER_TO_WORKER),
]


def _replace_delimited(message: Any, delimited: bool) -> Any:
    return dataclasses.replace(message, delimited=delimited)


@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize(("message", "decode"), ROUND_TRIPS, ids=lambda v: getattr(v, "__name__", repr(v)[:50]))
def test_round_trip(message: Any, decode: Callable[[list[Any]], Any], delimited: bool) -> None:
    message = _replace_delimited(message, delimited)
    frames = message.encode()
    assert (frames[0] == b"") is delimited
    decoded = decode(frames)
    assert decoded == message
    assert decoded.delimited is delimited
    assert decoded.encode() == frames


@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize(("message", "decode"), ROUND_TRIPS, ids=lambda v: getattr(v, "__name__", repr(v)[:50]))
def test_decoders_accept_zmq_frames(message: Any, decode: Callable[[list[Any]], Any], delimited: bool) -> None:
    message = _replace_delimited(message, delimited)
    decoded = decode([zmq.Frame(bytes(f)) for f in message.encode()])
    assert type(decoded) is type(message)
    assert decoded.delimited is delimited
    assert [bytes(f) for f in decoded.encode()] == message.encode()


def test_encode_layout() -> None:
    assert mdp.ClientRequest("echo", [b"b"]).encode() == [C, b"\x01", b"echo", b"b"]
    assert mdp.ClientReply("echo", [b"b"], final=False).encode() == [C, b"\x02", b"echo", b"b"]
    assert mdp.ClientReply("echo", [b"b"], delimited=True).encode() == [b"", C, b"\x03", b"echo", b"b"]
    assert mdp.Ready("echo").encode() == [W, b"\x01", b"echo"]
    assert mdp.WorkerRequest(b"id", [b"b"]).encode() == [W, b"\x02", b"id", b"", b"b"]
    assert mdp.WorkerReply(b"id", [b"b"], final=False).encode() == [W, b"\x03", b"id", b"", b"b"]
    assert mdp.WorkerReply(b"id", [b"b"]).encode() == [W, b"\x04", b"id", b"", b"b"]
    assert mdp.Heartbeat().encode() == [W, b"\x05"]
    assert mdp.Disconnect(delimited=True).encode() == [b"", W, b"\x06"]


def test_body_frames_are_passed_through_untouched() -> None:
    frames = [zmq.Frame(b"payload"), memoryview(b"view")]
    decoded = mdp.decode_client_request([C, b"\x01", b"echo", *frames])
    assert decoded.body[0] is frames[0]
    assert decoded.body[1] is frames[1]


# ------------------------------------------------------------------------------------------------- malformed
BAD_SERVICES = [b"", b"caf\xc3\xa9", b"a b", b"a\x00b", b"tab\t", b"\x7f", b"x" * (mdp.MAX_SERVICE_NAME + 1)]
WRONG_PROTOCOLS = [b"MDPC01", b"MDPW01", b"GET / HTTP/1.1", b"\x00", b"mdpc02"]

MALFORMED_CLIENT_REQUEST = {
    "empty": [],
    "protocol only": [C],
    "missing service": [C, b"\x01"],
    "double delimiter": [b"", b"", C, b"\x01", b"echo"],
    **{f"protocol {p!r}": [p, b"\x01", b"echo", b"x"] for p in WRONG_PROTOCOLS},
    "worker frames": [W, b"\x01", b"echo"],
    "unknown command 0x00": [C, b"\x00", b"echo", b"x"],
    "unknown command 0x04": [C, b"\x04", b"echo", b"x"],
    "empty command": [C, b"", b"echo", b"x"],
    "multi-byte command": [C, b"\x01\x01", b"echo", b"x"],
    "PARTIAL from client": [C, b"\x02", b"echo", b"x"],
    "FINAL from client": [C, b"\x03", b"echo", b"x"],
    **{f"service {s[:12]!r}": [C, b"\x01", s, b"x"] for s in BAD_SERVICES},
}
MALFORMED_CLIENT_REPLY = {
    "empty": [],
    "missing service": [C, b"\x03"],
    **{f"protocol {p!r}": [p, b"\x03", b"echo", b"x"] for p in WRONG_PROTOCOLS},
    "worker frames": [W, b"\x04", b"id", b"", b"x"],
    "unknown command": [C, b"\x09", b"echo", b"x"],
    "multi-byte command": [C, b"\x03\x00", b"echo", b"x"],
    "REQUEST to client": [C, b"\x01", b"echo", b"x"],
    **{f"service {s[:12]!r}": [C, b"\x03", s, b"x"] for s in BAD_SERVICES},
}
_WORKER_COMMON = {
    "empty": [],
    "protocol only": [W],
    "double delimiter": [b"", b"", W, b"\x05"],
    **{f"protocol {p!r}": [p, b"\x05"] for p in WRONG_PROTOCOLS},
    "client frames": [C, b"\x01", b"echo", b"x"],
    "unknown command 0x00": [W, b"\x00"],
    "unknown command 0x07": [W, b"\x07"],
    "empty command": [W, b""],
    "multi-byte command": [W, b"\x05\x05"],
    "HEARTBEAT with a frame": [W, b"\x05", b"x"],
    "HEARTBEAT with an empty frame": [W, b"\x05", b""],
    "DISCONNECT with a frame": [W, b"\x06", b"x"],
}
MALFORMED_FROM_WORKER = {
    **_WORKER_COMMON,
    "REQUEST from worker": [W, b"\x02", b"id", b"", b"x"],
    "READY without service": [W, b"\x01"],
    "READY with extra frame": [W, b"\x01", b"echo", b"x"],
    "READY with extra empty frame": [W, b"\x01", b"echo", b""],
    **{f"READY service {s[:12]!r}": [W, b"\x01", s] for s in BAD_SERVICES},
    **{
        f"{name} {case}": [W, command, *rest]
        for name, command in (("PARTIAL", b"\x03"), ("FINAL", b"\x04"))
        for case, rest in (
            ("without client", []),
            ("without delimiter", [b"id"]),
            ("with non-empty delimiter", [b"id", b"x", b"body"]),
            ("with empty client", [b"", b"", b"body"]),
        )
    },
}
MALFORMED_TO_WORKER = {
    **_WORKER_COMMON,
    "READY to worker": [W, b"\x01", b"echo"],
    "PARTIAL to worker": [W, b"\x03", b"id", b"", b"x"],
    "FINAL to worker": [W, b"\x04", b"id", b"", b"x"],
    "REQUEST without client": [W, b"\x02"],
    "REQUEST without delimiter": [W, b"\x02", b"id"],
    "REQUEST without delimiter, with body": [W, b"\x02", b"id", b"body"],
    "REQUEST with empty client": [W, b"\x02", b"", b"", b"body"],
}
MALFORMED = [
    *((mdp.decode_client_request, n, f) for n, f in MALFORMED_CLIENT_REQUEST.items()),
    *((mdp.decode_client_reply, n, f) for n, f in MALFORMED_CLIENT_REPLY.items()),
    *((mdp.decode_from_worker, n, f) for n, f in MALFORMED_FROM_WORKER.items()),
    *((mdp.decode_to_worker, n, f) for n, f in MALFORMED_TO_WORKER.items()),
]


@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize(
    ("decode", "case", "frames"), MALFORMED, ids=[f"{d.__name__}-{n}" for d, n, _ in MALFORMED]
)
def test_malformed_rejected(
    decode: Callable[[list[Any]], Any], case: str, frames: list[bytes], delimited: bool
) -> None:
    with pytest.raises(ProtocolError):
        decode(with_delimiter(frames, delimited))


@pytest.mark.parametrize(("decode", "case", "frames"), MALFORMED[:12], ids=[n for _, n, _ in MALFORMED[:12]])
def test_malformed_rejected_as_zmq_frames(decode: Callable[[list[Any]], Any], case: str, frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode([zmq.Frame(f) for f in frames])


def test_service_name_limits() -> None:
    longest = "x" * mdp.MAX_SERVICE_NAME
    assert mdp.decode_client_request([C, b"\x01", longest.encode()]).service == longest
    assert mdp.validate_service_name("ssnet.larcv1") == "ssnet.larcv1"
    for bad in ("", "a b", "café", "x" * 256, "a\nb"):
        with pytest.raises(ProtocolError):
            mdp.validate_service_name(bad)


# ------------------------------------------------------------------------------------------------ our body
MAX_ID = mdp.MAX_REQUEST_ID


def envelope(kind: int, request_id: int = 1, magic: bytes = mdp.ENVELOPE_MAGIC) -> bytes:
    return magic + bytes([kind]) + request_id.to_bytes(8, "big")


@pytest.mark.parametrize("request_id", [0, 1, 2**32, MAX_ID])
@pytest.mark.parametrize(
    "make",
    [
        lambda rid: mdp.request_body(rid, [b"a", b""]),
        lambda rid: mdp.request_body(rid, []),
        lambda rid: mdp.result_body(rid, [b"r" * 100]),
        lambda rid: mdp.error_body(rid, ErrorCode.WORKER_ERROR, "boom: ünïcode"),
        lambda rid: mdp.error_body(rid, ErrorCode.QUEUE_FULL, ""),
    ],
    ids=["request", "request-empty", "result", "error", "error-empty-message"],
)
def test_body_round_trip(make: Callable[[int], mdp.Body], request_id: int) -> None:
    body = make(request_id)
    frames = body.encode()
    assert len(frames[0]) == mdp.ENVELOPE_SIZE == 13
    assert frames[0] == envelope(body.kind, request_id)
    decoded = mdp.decode_body(frames)
    assert decoded == body
    assert mdp.decode_body([zmq.Frame(bytes(f)) for f in frames]).request_id == request_id


def test_error_body_fields() -> None:
    body = mdp.decode_body(mdp.error_body(7, ErrorCode.WORKER_LOST, "gone - twice").encode())
    assert body.kind is mdp.BodyKind.ERROR
    assert body.error == ("worker_lost", "gone - twice")
    with pytest.raises(ValueError, match="not an error body"):
        _ = mdp.result_body(7, []).error


def test_error_body_message_is_capped() -> None:
    body = mdp.error_body(1, ErrorCode.WORKER_ERROR, "x" * (mdp.MAX_ERROR_MESSAGE + 100))
    assert len(body.payload[1]) == mdp.MAX_ERROR_MESSAGE
    assert mdp.decode_body(body.encode()).error[1] == "x" * mdp.MAX_ERROR_MESSAGE


def test_error_body_cap_keeps_utf8_valid() -> None:
    message = "a" + "é" * mdp.MAX_ERROR_MESSAGE  # the cut falls in the middle of a 2-byte character
    code, text = mdp.decode_body(mdp.error_body(1, ErrorCode.WORKER_ERROR, message).encode()).error
    assert code == ErrorCode.WORKER_ERROR
    assert message.startswith(text)


@pytest.mark.parametrize("request_id", [-1, MAX_ID + 1, 2**70])
def test_request_id_out_of_range(request_id: int) -> None:
    for make in (mdp.request_body, mdp.result_body):
        with pytest.raises(ValueError, match="request id"):
            make(request_id, []).encode()
    with pytest.raises(ValueError, match="request id"):
        mdp.error_body(request_id, ErrorCode.WORKER_ERROR, "x").encode()


MALFORMED_BODIES = {
    "empty": [],
    "empty first frame": [b""],
    "plain": [b"hello"],
    "wrong magic": [envelope(1, magic=b"SSN\x02")],
    "lower-case magic": [envelope(2, magic=b"ssn\x01")],
    "short envelope": [envelope(1)[:-1]],
    "long envelope": [envelope(1) + b"\x00"],
    "kind 0": [envelope(0)],
    "kind 4": [envelope(4)],
    "kind 255": [envelope(255)],
    "error without payload": [envelope(3)],
    "error with code only": [envelope(3), b"worker_error"],
    "error with three frames": [envelope(3), b"worker_error", b"msg", b"extra"],
    "error with empty code": [envelope(3), b"", b"msg"],
    "error with numeric code": [envelope(3), b"1abc", b"msg"],
    "error code with space": [envelope(3), b"queue full", b"msg"],
    "error code with dash": [envelope(3), b"queue-full", b"msg"],
    "error code not ASCII": [envelope(3), b"caf\xc3\xa9", b"msg"],
    "error code binary": [envelope(3), b"\xff", b"msg"],
    "error message not UTF-8": [envelope(3), b"worker_error", b"\xff\xfe"],
    "error message truncated UTF-8": [envelope(3), b"worker_error", "é".encode()[:1]],
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_body_rejected(body: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        mdp.decode_body(body)


@pytest.mark.parametrize(
    ("body", "ours", "error"),
    [
        ([], False, False),
        ([b""], False, False),
        ([b"plain", b"frames"], False, False),
        ([envelope(1)[:-1]], False, False),
        ([envelope(1, magic=b"XXX\x01")], False, False),
        ([envelope(1)], True, False),
        ([envelope(2), b"x"], True, False),
        ([envelope(3), b"worker_error", b"m"], True, True),
        ([envelope(3)], True, True),  # looks at the envelope only
        ([envelope(9)], True, False),
        ([zmq.Frame(envelope(3)), b"c", b"m"], True, True),
        ([memoryview(envelope(2))], True, False),
    ],
)
def test_is_ours_and_is_error_body(body: list[Any], ours: bool, error: bool) -> None:
    assert mdp.is_ours(body) is ours
    assert mdp.is_error_body(body) is error


# ----------------------------------------------------------------------------------------- broker's replies
@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize("request_id", [0, 42, MAX_ID])
def test_broker_error_for_our_body(delimited: bool, request_id: int) -> None:
    request = mdp.ClientRequest("ssnet", mdp.request_body(request_id, [b"payload"]).encode(), delimited)
    reply = mdp.broker_error(request, ErrorCode.QUEUE_TIMEOUT, "no worker in 10 s")
    assert reply.service == "ssnet"
    assert reply.final is True
    assert reply.delimited is delimited
    body = mdp.decode_body(reply.body)
    assert body.kind is mdp.BodyKind.ERROR
    assert body.request_id == request_id
    assert body.error == ("queue_timeout", "no worker in 10 s")
    assert mdp.decode_client_reply(reply.encode()) == reply


@pytest.mark.parametrize("delimited", [False, True])
def test_broker_error_for_plain_body(delimited: bool) -> None:
    request = mdp.ClientRequest("echo", [b"hello"], delimited)
    reply = mdp.broker_error(request, ErrorCode.QUEUE_FULL, "queue full (3) - später")
    assert reply == mdp.ClientReply(
        "echo", [b"error", b"queue_full", "queue full (3) - später".encode()], final=True, delimited=delimited
    )
    assert not mdp.is_ours(reply.body)


def _has(*names: str) -> Callable[[str], bool]:
    asked: list[str] = []

    def has_service(name: str) -> bool:
        asked.append(name)
        return name in names

    has_service.asked = asked  # type: ignore[attr-defined]
    return has_service


@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize(("name", "status"), [(b"echo", b"200"), (b"other", b"404")])
def test_mmi_service_plain(name: bytes, status: bytes, delimited: bool) -> None:
    has_service = _has("echo")
    reply = mdp.mmi_reply(mdp.ClientRequest("mmi.service", [name], delimited), has_service)
    assert reply == mdp.ClientReply("mmi.service", [status], final=True, delimited=delimited)
    assert has_service.asked == [name.decode()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize(("name", "status"), [(b"echo", b"200"), (b"other", b"404")])
@pytest.mark.parametrize("request_id", [0, 99, MAX_ID])
def test_mmi_service_our_body(name: bytes, status: bytes, request_id: int, delimited: bool) -> None:
    request = mdp.ClientRequest("mmi.service", mdp.request_body(request_id, [name]).encode(), delimited)
    reply = mdp.mmi_reply(request, _has("echo"))
    assert (reply.service, reply.final, reply.delimited) == ("mmi.service", True, delimited)
    assert mdp.decode_body(reply.body) == mdp.result_body(request_id, [status])


@pytest.mark.parametrize("service", ["mmi.echo", "mmi.", "mmi.services"])
@pytest.mark.parametrize("ours", [False, True])
def test_mmi_other_is_not_implemented(service: str, ours: bool) -> None:
    payload = [b"echo", b"anything"]
    body = mdp.request_body(5, payload).encode() if ours else payload
    reply = mdp.mmi_reply(mdp.ClientRequest(service, body, delimited=True), _has("echo"))
    assert (reply.service, reply.final, reply.delimited) == (service, True, True)
    if ours:
        assert mdp.decode_body(reply.body) == mdp.result_body(5, [b"501"])
    else:
        assert reply.body == [b"501"]


@pytest.mark.parametrize("payload", [[], [b"echo", b"extra"]], ids=["no frame", "two frames"])
@pytest.mark.parametrize("ours", [False, True])
def test_mmi_service_wrong_frame_count(payload: list[bytes], ours: bool) -> None:
    body = mdp.request_body(5, payload).encode() if ours else payload
    with pytest.raises(ProtocolError):
        mdp.mmi_reply(mdp.ClientRequest("mmi.service", body), _has("echo"))


@pytest.mark.parametrize("name", [b"", b"a b", b"\xff"])
def test_mmi_service_bad_name(name: bytes) -> None:
    with pytest.raises(ProtocolError):
        mdp.mmi_reply(mdp.ClientRequest("mmi.service", [name]), _has("echo"))


# ------------------------------------------------------------------------------------------------- helpers
def test_frames_nbytes() -> None:
    assert mdp.frames_nbytes([]) == 0
    assert mdp.frames_nbytes([b""]) == 0
    floats = np.zeros(3, dtype=np.float32)
    frames = [b"abc", bytearray(b"de"), memoryview(b"fghi"), zmq.Frame(b"jklmn"), memoryview(floats)]
    assert mdp.frames_nbytes(frames) == 3 + 2 + 4 + 5 + 12


def test_frame_helpers() -> None:
    frame = zmq.Frame(b"hello")
    assert mdp.frame_bytes(frame) == b"hello"
    assert mdp.frame_len(frame) == 5
    assert bytes(mdp.frame_view(frame)) == b"hello"


def test_sub_service_names_have_one_rule() -> None:
    from ssnet_data.services import PLANE, SHARD, parse_sub_service, plane_service, sub_service

    assert plane_service("ssnet", 2) == "ssnet_plane2" and sub_service("batch", SHARD, 0) == "batch_shard0"
    assert parse_sub_service("ssnet_plane12", PLANE) == ("ssnet", 12)
    assert parse_sub_service("my_ssnet_plane0", PLANE) == ("my_ssnet", 0)
    assert parse_sub_service("ssnet", PLANE) is None and parse_sub_service("_plane1", PLANE) is None
    with pytest.raises(ValueError, match="expected ssnet_plane<number>"):
        parse_sub_service("ssnet_planeX", PLANE)
    with pytest.raises(ValueError, match="0 or more"):
        plane_service("ssnet", -1)


# ------------------------------------------------------------------------------------------------ the fast paths
def test_frame_sizes_for_every_frame_type() -> None:
    matrix = np.zeros((3, 5), dtype=np.float32)
    frames: list[Any] = [b"abc", bytearray(b"abcd"), memoryview(matrix), zmq.Frame(b"abcde"), memoryview(b"")]
    assert [mdp.frame_len(f) for f in frames] == [3, 4, 60, 5, 0]
    assert mdp.frames_nbytes(frames) == 72
    assert [mdp.frame_bytes(f) for f in (b"x", bytearray(b"y"), zmq.Frame(b"z"))] == [b"x", b"y", b"z"]


def test_encoders_without_message_objects_match_encode() -> None:
    for delimited in (False, True):
        for final in (False, True):
            assert (mdp.client_reply_frames("echo", BODY, final=final, delimited=delimited)
                    == mdp.ClientReply("echo", BODY, final=final, delimited=delimited).encode())
        assert (mdp.worker_request_frames(b"client", BODY, delimited=delimited)
                == mdp.WorkerRequest(b"client", BODY, delimited=delimited).encode())


def test_peek_envelope() -> None:
    assert mdp.peek_envelope(mdp.request_body(7, [b"x"]).encode()) == (mdp.BodyKind.REQUEST, 7)
    assert mdp.peek_envelope([zmq.Frame(f) for f in mdp.error_body(9, "queue_full", "m").encode()]) == (3, 9)
    assert mdp.peek_envelope([envelope(99, 5)]) == (99, 5)  # the kind is not checked here
    for plain in ([], [b""], [b"plain body"], [b"SSN\x02" + bytes(9)], [mdp.ENVELOPE_MAGIC + bytes(10)]):
        assert mdp.peek_envelope(plain) is None


def test_checked_service_names_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mdp, "SERVICE_NAMES_KEPT", 10)
    monkeypatch.setattr(mdp, "_SERVICE_NAMES", {})
    for i in range(25):
        assert mdp.decode_client_request([C, b"\x01", b"svc%d" % i]).service == f"svc{i}"
        assert len(mdp._SERVICE_NAMES) <= 10
    with pytest.raises(ProtocolError):  # a bad name is never remembered as good
        mdp.decode_client_request([C, b"\x01", b"bad name"])
    with pytest.raises(ProtocolError):
        mdp.decode_client_request([C, b"\x01", b"bad name"])
    assert b"bad name" not in mdp._SERVICE_NAMES
