"""The ssnet-server wire protocol: Majordomo (ZeroMQ RFC 18, MDP/0.2), MMI (RFC 8) and our message body.

Only this module turns frames into messages and back.  Every ``decode_*`` function takes the frames that follow
the ROUTER identity frame (the broker strips that itself) and raises :class:`ProtocolError` on anything that is
not a valid message; every message type's ``encode()`` returns the list of frames to send.

MDP frames, as RFC 18 defines them::

    client -> broker   MDPC02 0x01 service body...            (REQUEST)
    broker -> client   MDPC02 0x02|0x03 service body...       (PARTIAL | FINAL)
    worker -> broker   MDPW02 0x01 service                    (READY)
                       MDPW02 0x03|0x04 client "" body...     (PARTIAL | FINAL)
    broker -> worker   MDPW02 0x02 client "" body...          (REQUEST)
    both ways          MDPW02 0x05 | MDPW02 0x06              (HEARTBEAT | DISCONNECT)

A peer may put one empty delimiter frame before the protocol frame (REQ sockets do, and so do the ZeroMQ
guide's and majortomo's peers); it is accepted, remembered as ``delimited`` and used again when answering.

Our own additions travel in the MDP body, never in the envelope.  A body that starts with the 13-byte
:class:`Envelope` frame (magic ``SSN\\x01``, kind, 64-bit request id) is ours; anything else is passed on
untouched, so plain MDP peers still work through the broker.  The kinds are REQUEST (client to worker),
RESULT (worker to client) and ERROR (worker or broker to client: frames ``[envelope, code, message]``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from ssnet_common.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    import zmq

    Frame = Union[bytes, bytearray, memoryview, zmq.Frame]
else:
    Frame = object

_SIZED: frozenset[type] = frozenset({bytes, bytearray})
"""Frame types whose ``len()`` is their size in bytes (a memoryview's is not, unless its items are bytes)."""
try:
    import zmq as _zmq

    _SIZED |= {_zmq.Frame}
except ImportError:  # pragma: no cover - pyzmq is a dependency, but this module itself never needs it
    pass

CLIENT_PROTOCOL = b"MDPC02"
WORKER_PROTOCOL = b"MDPW02"


class ClientCommand(IntEnum):
    REQUEST = 0x01
    PARTIAL = 0x02
    FINAL = 0x03


class WorkerCommand(IntEnum):
    READY = 0x01
    REQUEST = 0x02
    PARTIAL = 0x03
    FINAL = 0x04
    HEARTBEAT = 0x05
    DISCONNECT = 0x06


_COMMANDS: dict[type[IntEnum], dict[bytes, IntEnum]] = {
    kind: {bytes([command]): command for command in kind} for kind in (ClientCommand, WorkerCommand)
}
_REQUEST, _PARTIAL, _FINAL = (bytes([c]) for c in (ClientCommand.REQUEST, ClientCommand.PARTIAL, ClientCommand.FINAL))
_W_READY, _W_REQUEST, _W_PARTIAL, _W_FINAL, _W_HEARTBEAT, _W_DISCONNECT = (bytes([c]) for c in WorkerCommand)

MMI_PREFIX = "mmi."
MMI_SERVICE = "mmi.service"
MMI_FOUND = b"200"
MMI_NOT_FOUND = b"404"
MMI_NOT_IMPLEMENTED = b"501"

MAX_SERVICE_NAME = 255
EMPTY = b""


def frame_bytes(frame: Frame) -> bytes:
    """The content of one frame as ``bytes`` (``bytes`` as they are, anything else copied: use for small control
    frames only)."""
    return frame if frame.__class__ is bytes else bytes(frame)  # type: ignore[arg-type]


def frame_view(frame: Frame) -> memoryview:
    """A zero-copy view of one frame's bytes."""
    return memoryview(frame)  # type: ignore[arg-type]


def frame_len(frame: Frame) -> int:
    """The size of one frame in bytes."""
    return len(frame) if frame.__class__ in _SIZED else frame_view(frame).nbytes


def frames_nbytes(frames: Sequence[Frame]) -> int:
    """Total payload size of a message, for byte counters."""
    total = 0
    for frame in frames:
        total += len(frame) if frame.__class__ in _SIZED else frame_view(frame).nbytes
    return total


_DELIMITED: tuple[Frame, ...] = (EMPTY,)
_BARE: tuple[Frame, ...] = ()


def _delimiter(delimited: bool) -> tuple[Frame, ...]:
    return _DELIMITED if delimited else _BARE


def _start(frames: Sequence[Frame]) -> int:
    """Where a message starts: 1 after an empty delimiter frame, else 0."""
    return 1 if frames and frame_len(frames[0]) == 0 else 0


_SERVICE_NAMES: dict[bytes, str] = {}
"""Service names already checked, by their frame (a message's service is checked once, not at every message)."""
SERVICE_NAMES_KEPT = 1024  # past it the cache starts again: a flood of distinct names cannot grow it


def _decode_service(frame: Frame) -> str:
    raw = frame_bytes(frame)
    name = _SERVICE_NAMES.get(raw)
    if name is not None:
        return name
    name = _check_service(raw)
    if len(_SERVICE_NAMES) >= SERVICE_NAMES_KEPT:
        _SERVICE_NAMES.clear()
    _SERVICE_NAMES[raw] = name
    return name


def _check_service(raw: bytes) -> str:
    if not 0 < len(raw) <= MAX_SERVICE_NAME:
        raise ProtocolError(f"service name must be 1..{MAX_SERVICE_NAME} bytes, got {len(raw)}")
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"service name is not ASCII: {raw[:40]!r}") from None
    if not name.isprintable() or " " in name:
        raise ProtocolError(f"service name is not printable ASCII without spaces: {name[:40]!r}")
    return name


def validate_service_name(name: str) -> str:
    """Check a service name as the broker would; return it, or raise :class:`ProtocolError`."""
    return _decode_service(name.encode("utf-8"))


def _command(frame: Frame, kind: type[IntEnum], what: str) -> int:
    raw = frame_bytes(frame)
    found = _COMMANDS[kind].get(raw)  # a dict look-up: an enum call costs ten times more
    if found is not None:
        return found
    if len(raw) != 1:
        raise ProtocolError(f"{what} command frame must be 1 byte, got {len(raw)}")
    try:
        return kind(raw[0])
    except ValueError:
        raise ProtocolError(f"unknown {what} command 0x{raw[0]:02x}") from None


# ------------------------------------------------------------------------------- settings every side shares
HEARTBEAT_INTERVAL = 2.5  # seconds between heartbeats, broker and workers
HEARTBEAT_LIVENESS = 3  # heartbeat intervals of silence after which a peer is taken for gone
FRONTEND_BIND = "tcp://*:5559"  # where the broker takes clients
BACKEND_BIND = "tcp://*:5560"  # where the broker takes workers
CLIENT_CONNECT = "tcp://localhost:5559"  # a client's default broker
WORKER_CONNECT = "tcp://localhost:5560"  # a worker's default broker
METRICS_ADDR = "127.0.0.1"  # where metrics endpoints listen unless told otherwise (compose opens them to its network)


# --------------------------------------------------------------------------------------------- MDP/Client
@dataclass(frozen=True)
class ClientRequest:
    """MDP/Client REQUEST: a client asks ``service`` for something."""

    service: str
    body: Sequence[Frame]
    delimited: bool = False

    def encode(self) -> list[Frame]:
        return [*_delimiter(self.delimited), CLIENT_PROTOCOL, _REQUEST, self.service.encode("ascii"), *self.body]


@dataclass(frozen=True)
class ClientReply:
    """MDP/Client PARTIAL (``final=False``) or FINAL: the broker answers a client."""

    service: str
    body: Sequence[Frame]
    final: bool = True
    delimited: bool = False

    def encode(self) -> list[Frame]:
        return client_reply_frames(self.service, self.body, final=self.final, delimited=self.delimited)


def client_reply_frames(service: str, body: Sequence[Frame], *, final: bool = True, delimited: bool = False
                        ) -> list[Frame]:
    """``ClientReply(service, body, final, delimited).encode()`` without making the message object."""
    return [*_delimiter(delimited), CLIENT_PROTOCOL, _FINAL if final else _PARTIAL, service.encode("ascii"), *body]


def _decode_client(frames: Sequence[Frame], allowed: tuple[ClientCommand, ...]) -> tuple[bool, int, str, list[Frame]]:
    start = _start(frames)
    if len(frames) - start < 3:
        raise ProtocolError(f"MDP client message needs at least 3 frames, got {len(frames) - start}")
    protocol = frame_bytes(frames[start])
    if protocol != CLIENT_PROTOCOL:
        raise ProtocolError(f"expected protocol {CLIENT_PROTOCOL!r}, got {protocol[:16]!r}")
    command = _command(frames[start + 1], ClientCommand, "MDP client")
    if command not in allowed:
        raise ProtocolError(f"unexpected MDP client command {ClientCommand(command).name}")
    return start == 1, command, _decode_service(frames[start + 2]), list(frames[start + 3:])


def decode_client_request(frames: Sequence[Frame]) -> ClientRequest:
    """Decode what a client sent to the broker (frames after the ROUTER identity)."""
    delimited, _, service, body = _decode_client(frames, (ClientCommand.REQUEST,))
    return ClientRequest(service=service, body=body, delimited=delimited)


def decode_client_reply(frames: Sequence[Frame]) -> ClientReply:
    """Decode what the broker sent to a client."""
    delimited, command, service, body = _decode_client(frames, (ClientCommand.PARTIAL, ClientCommand.FINAL))
    return ClientReply(service=service, body=body, final=command == ClientCommand.FINAL, delimited=delimited)


# --------------------------------------------------------------------------------------------- MDP/Worker
@dataclass(frozen=True)
class Ready:
    """Worker registers for ``service``."""

    service: str
    delimited: bool = False

    def encode(self) -> list[Frame]:
        return [*_delimiter(self.delimited), WORKER_PROTOCOL, _W_READY, self.service.encode("ascii")]


@dataclass(frozen=True)
class WorkerRequest:
    """Broker hands a worker the request of client ``client`` (its ROUTER identity)."""

    client: bytes
    body: Sequence[Frame]
    delimited: bool = False

    def encode(self) -> list[Frame]:
        return worker_request_frames(self.client, self.body, delimited=self.delimited)


def worker_request_frames(client: bytes, body: Sequence[Frame], *, delimited: bool = False) -> list[Frame]:
    """``WorkerRequest(client, body, delimited).encode()`` without making the message object."""
    return [*_delimiter(delimited), WORKER_PROTOCOL, _W_REQUEST, client, EMPTY, *body]


@dataclass(frozen=True)
class WorkerReply:
    """Worker answers client ``client``: PARTIAL (``final=False``) or FINAL."""

    client: bytes
    body: Sequence[Frame]
    final: bool = True
    delimited: bool = False

    def encode(self) -> list[Frame]:
        command = _W_FINAL if self.final else _W_PARTIAL
        return [*_delimiter(self.delimited), WORKER_PROTOCOL, command, self.client, EMPTY, *self.body]


@dataclass(frozen=True)
class Heartbeat:
    delimited: bool = False

    def encode(self) -> list[Frame]:
        return [*_delimiter(self.delimited), WORKER_PROTOCOL, _W_HEARTBEAT]


@dataclass(frozen=True)
class Disconnect:
    delimited: bool = False

    def encode(self) -> list[Frame]:
        return [*_delimiter(self.delimited), WORKER_PROTOCOL, _W_DISCONNECT]


FromWorker = Union[Ready, WorkerReply, Heartbeat, Disconnect]
ToWorker = Union[WorkerRequest, Heartbeat, Disconnect]


_HEARTBEATS = {False: Heartbeat(False), True: Heartbeat(True)}  # immutable: one of each serves every message
_DISCONNECTS = {False: Disconnect(False), True: Disconnect(True)}


def _decode_worker(frames: Sequence[Frame], allowed: tuple[WorkerCommand, ...]) -> FromWorker | ToWorker:
    start = _start(frames)
    delimited = start == 1
    size = len(frames) - start
    if size < 2:
        raise ProtocolError(f"MDP worker message needs at least 2 frames, got {size}")
    protocol = frame_bytes(frames[start])
    if protocol != WORKER_PROTOCOL:
        raise ProtocolError(f"expected protocol {WORKER_PROTOCOL!r}, got {protocol[:16]!r}")
    command = _command(frames[start + 1], WorkerCommand, "MDP worker")
    if command not in allowed:
        raise ProtocolError(f"unexpected MDP worker command {WorkerCommand(command).name}")
    if command in (WorkerCommand.HEARTBEAT, WorkerCommand.DISCONNECT):
        if size != 2:
            raise ProtocolError(f"{WorkerCommand(command).name} takes no frames after the command")
        return _HEARTBEATS[delimited] if command == WorkerCommand.HEARTBEAT else _DISCONNECTS[delimited]
    if command == WorkerCommand.READY:
        if size != 3:
            raise ProtocolError(f"READY takes exactly one service frame, got {size - 2} frames")
        return Ready(_decode_service(frames[start + 2]), delimited)
    if size < 4 or frame_len(frames[start + 3]) != 0:
        raise ProtocolError(f"{WorkerCommand(command).name} needs a client address and an empty delimiter")
    client = frame_bytes(frames[start + 2])
    if not client:
        raise ProtocolError(f"{WorkerCommand(command).name} has an empty client address")
    body = list(frames[start + 4:])
    if command == WorkerCommand.REQUEST:
        return WorkerRequest(client, body, delimited)
    return WorkerReply(client, body, command == WorkerCommand.FINAL, delimited)


def decode_from_worker(frames: Sequence[Frame]) -> FromWorker:
    """Decode what a worker sent to the broker (frames after the ROUTER identity)."""
    message = _decode_worker(
        frames,
        (WorkerCommand.READY, WorkerCommand.PARTIAL, WorkerCommand.FINAL,
         WorkerCommand.HEARTBEAT, WorkerCommand.DISCONNECT),
    )
    assert not isinstance(message, WorkerRequest)
    return message


def decode_to_worker(frames: Sequence[Frame]) -> ToWorker:
    """Decode what the broker sent to a worker."""
    message = _decode_worker(frames, (WorkerCommand.REQUEST, WorkerCommand.HEARTBEAT, WorkerCommand.DISCONNECT))
    assert not isinstance(message, (Ready, WorkerReply))
    return message


# ------------------------------------------------------------------------------------- our message body
ENVELOPE_MAGIC = b"SSN\x01"
_ENVELOPE = struct.Struct(">4sBQ")
ENVELOPE_SIZE = _ENVELOPE.size
MAX_REQUEST_ID = 2**64 - 1


class BodyKind(IntEnum):
    REQUEST = 1
    RESULT = 2
    ERROR = 3


# The codes carried in ERROR bodies: ssnet_common.errors.ErrorCode.
ERROR_CODES = frozenset(code.value for code in ErrorCode)
MAX_ERROR_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Body:
    """An MDP body in our format: envelope (kind, request id) then payload frames.

    For ``BodyKind.ERROR`` the payload is ``[code, message]``: see :attr:`error`.
    """

    kind: BodyKind
    request_id: int
    payload: Sequence[Frame] = field(default_factory=list)

    def encode(self) -> list[Frame]:
        if not 0 <= self.request_id <= MAX_REQUEST_ID:
            raise ValueError(f"request id out of range: {self.request_id}")
        return [_ENVELOPE.pack(ENVELOPE_MAGIC, self.kind, self.request_id), *self.payload]

    @property
    def error(self) -> tuple[str, str]:
        """``(code, message)`` of an ERROR body."""
        if self.kind != BodyKind.ERROR:
            raise ValueError("not an error body")
        code, message = self.payload
        return frame_bytes(code).decode("ascii"), frame_bytes(message).decode("utf-8")


def request_body(request_id: int, payload: Sequence[Frame]) -> Body:
    return Body(BodyKind.REQUEST, request_id, list(payload))


def result_body(request_id: int, payload: Sequence[Frame]) -> Body:
    return Body(BodyKind.RESULT, request_id, list(payload))


def _error_frames(code: str, message: str) -> list[Frame]:
    text = message.encode("utf-8")[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore")  # never cut a character
    return [code.encode("ascii"), text.encode("utf-8")]


def error_body(request_id: int, code: str, message: str) -> Body:
    return Body(BodyKind.ERROR, request_id, _error_frames(code, message))


def plain_error_body(code: str, message: str) -> list[Frame]:
    """The error body for a plain MDP request (one without our envelope): ``[b"error", code, message]``."""
    return [b"error", *_error_frames(code, message)]


def is_ours(body: Sequence[Frame]) -> bool:
    """Whether an MDP body starts with our envelope (cheap: looks at the first frame only)."""
    return peek_envelope(body) is not None


def peek_envelope(body: Sequence[Frame]) -> Optional[tuple[int, int]]:
    """``(kind, request id)`` from the envelope an MDP body in our format starts with, or None for any other body
    (looks at the first frame only; the kind is not checked, and never raises)."""
    if not body:
        return None
    first = body[0]
    if frame_len(first) != ENVELOPE_SIZE:
        return None
    raw = frame_bytes(first)
    if not raw.startswith(ENVELOPE_MAGIC):
        return None
    _, kind, request_id = _ENVELOPE.unpack(raw)
    return kind, request_id


def is_error_body(body: Sequence[Frame]) -> bool:
    """Whether an MDP body is one of our ERROR bodies (looks at the envelope only; never raises)."""
    envelope = peek_envelope(body)
    return envelope is not None and envelope[0] == BodyKind.ERROR


def decode_body(body: Sequence[Frame]) -> Body:
    """Decode an MDP body in our format; :class:`ProtocolError` if it is not one."""
    if not body:
        raise ProtocolError("empty message body")
    raw = frame_bytes(body[0]) if frame_len(body[0]) == ENVELOPE_SIZE else b""
    if not raw.startswith(ENVELOPE_MAGIC):
        raise ProtocolError(f"message body does not start with the ssnet envelope ({ENVELOPE_MAGIC!r})")
    _, kind_value, request_id = _ENVELOPE.unpack(raw)
    try:
        kind = BodyKind(kind_value)
    except ValueError:
        raise ProtocolError(f"unknown body kind {kind_value}") from None
    result = Body(kind, request_id, list(body[1:]))
    if kind == BodyKind.ERROR:
        if len(result.payload) != 2:
            raise ProtocolError(f"error body needs [code, message], got {len(result.payload)} frames")
        try:
            code, _ = result.error
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"error body is not text: {exc}") from None
        if not code or not code.isidentifier():
            raise ProtocolError(f"invalid error code {code[:40]!r}")
    return result


# ----------------------------------------------------------------------------------- broker's own replies
def broker_error(request: ClientRequest, code: str, message: str) -> ClientReply:
    """The FINAL reply the broker sends when it cannot serve ``request`` (queue full, timeout, lost worker).

    A request in our format gets an ERROR body with the same request id.  A plain MDP request (no envelope)
    gets the body ``[b"error", code, message]``.
    """
    if is_ours(request.body):
        body: list[Frame] = error_body(decode_body(request.body).request_id, code, message).encode()
    else:
        body = plain_error_body(code, message)
    return ClientReply(request.service, body, final=True, delimited=request.delimited)


def mmi_reply(request: ClientRequest, has_service: Callable[[str], bool]) -> ClientReply:
    """Answer an RFC 8 (MMI) request: ``mmi.service`` with body ``[name]`` gives ``200`` or ``404``; any
    other ``mmi.*`` service gives ``501``.  A request in our format (``[envelope, name]``) gets the status
    as a RESULT body with the same request id.
    """
    ours = is_ours(request.body)
    envelope: Optional[Body] = decode_body(request.body) if ours else None
    payload = list(envelope.payload) if envelope is not None else list(request.body)
    if request.service != MMI_SERVICE:
        status = MMI_NOT_IMPLEMENTED
    elif len(payload) != 1:
        raise ProtocolError(f"mmi.service takes one frame (the service name), got {len(payload)}")
    else:
        status = MMI_FOUND if has_service(_decode_service(payload[0])) else MMI_NOT_FOUND
    body: list[Frame] = (
        result_body(envelope.request_id, [status]).encode() if envelope is not None else [status]
    )
    return ClientReply(request.service, body, final=True, delimited=request.delimited)
