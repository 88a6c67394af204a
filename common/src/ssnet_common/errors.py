"""The one error hierarchy of ssnet-server.

Every exception our code raises on purpose derives from :class:`SSNetError`.  ``zmq`` errors are translated
into :class:`TransportError` where they enter our code, so callers never need to import ``zmq`` to handle them.
"""

from __future__ import annotations

import enum
import re


class ErrorCode(str, enum.Enum):
    """The reason carried by an ERROR body on the wire: the broker sends the first four, workers WORKER_ERROR.

    The one list of codes: the protocol validates ERROR bodies against it, the broker's outcomes and the client's
    exceptions (:data:`ERROR_TYPES`) and metrics take their labels from it.
    """

    QUEUE_FULL = "queue_full"
    QUEUE_TIMEOUT = "queue_timeout"
    UNKNOWN_SERVICE = "unknown_service"
    WORKER_LOST = "worker_lost"
    WORKER_ERROR = "worker_error"


class SSNetError(Exception):
    """Base class of every ssnet-server error."""


class ConfigError(SSNetError):
    """A command-line option, environment variable or config file is invalid."""


class ProtocolError(SSNetError):
    """A message does not follow the wire protocol (bad frames, bad header, bad array)."""


class TransportError(SSNetError):
    """A ZeroMQ socket operation failed (translated from ``zmq.ZMQError``)."""


class BrokerUnreachable(TransportError):
    """No broker answers at the endpoint (nothing listens there, or it does not speak MDP)."""


class RequestError(SSNetError):
    """A request did not produce a result.  ``code`` is the machine-readable reason."""

    code = "request_failed"

    def __init__(self, message: str, *, service: str = "", request_id: int | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.request_id = request_id


class RequestTimeout(RequestError):
    """No reply arrived within the timeout, after every retry."""

    code = "timeout"


class NoSuchService(RequestError):
    """The broker has no worker for the service, and never had one."""

    code = ErrorCode.UNKNOWN_SERVICE.value


class ServiceUnavailable(RequestError):
    """The service exists but cannot take the request now: :class:`QueueTimeout` or :class:`BrokerBusy`."""

    code = "unavailable"


class QueueTimeout(ServiceUnavailable):
    """No worker took the request before the broker's queue timeout."""

    code = ErrorCode.QUEUE_TIMEOUT.value


class BrokerBusy(ServiceUnavailable):
    """The broker's queue for the service is full."""

    code = ErrorCode.QUEUE_FULL.value


def worker_lost_message(workers: int, service: str) -> str:
    """The text of the broker's ``worker_lost`` error (its count is read back by :attr:`WorkerLost.workers`)."""
    return f"{workers} workers of service {service!r} died while processing the request"


_WORKERS_LOST = re.compile(r": (\d+) workers of service .* died while processing the request")


class WorkerLost(RequestError):
    """Every worker given the request died before answering (retries exhausted in the broker)."""

    code = ErrorCode.WORKER_LOST.value

    @property
    def workers(self) -> int:
        """How many workers the broker gave the request to (1 when its message does not say)."""
        match = _WORKERS_LOST.search(str(self))
        return int(match.group(1)) if match else 1


class WorkerError(RequestError):
    """The worker answered with an error instead of a result."""

    code = ErrorCode.WORKER_ERROR.value


#: The exception a client raises for each code of an ERROR body.
ERROR_TYPES: dict[ErrorCode, type[RequestError]] = {
    ErrorCode.QUEUE_FULL: BrokerBusy,
    ErrorCode.QUEUE_TIMEOUT: QueueTimeout,
    ErrorCode.UNKNOWN_SERVICE: NoSuchService,
    ErrorCode.WORKER_LOST: WorkerLost,
    ErrorCode.WORKER_ERROR: WorkerError,
}


def error_for(code: str, message: str, *, service: str, request_id: int) -> RequestError:
    """The exception for an ERROR body (``code``, ``message``); an unknown code gives a plain RequestError."""
    try:
        kind = ERROR_TYPES[ErrorCode(code)]
    except ValueError:
        kind = RequestError
    return kind(f"service {service!r}, request {request_id}: {code}: {message}", service=service,
                request_id=request_id)


class EventFailed(SSNetError):
    """An event's request failed for good (its workers died, or one answered with an error); the message names
    the event: file, entry and run/subrun/event."""


class DataError(SSNetError):
    """Input data is invalid (a file, an entry, an image); the message names what and where."""


class LArCV1Error(DataError):
    """A LArCV1 file cannot be read or written as asked.  The message names the file, entry and producer."""

    def __init__(
        self, message: str, *, path: str = "", entry: int | None = None, producer: str | None = None
    ) -> None:
        where = [f"file {path!r}"] if path else []
        if producer is not None:
            where.append(f"producer {producer!r}")
        if entry is not None:
            where.append(f"entry {entry}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.path = path
        self.entry = entry
        self.producer = producer
