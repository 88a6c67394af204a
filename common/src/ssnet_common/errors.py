"""The one error hierarchy of ssnet-server.

Every exception our code raises on purpose derives from :class:`SSNetError`.  ``zmq`` errors are translated
into :class:`TransportError` where they enter our code, so callers never need to import ``zmq`` to handle them.
"""

from __future__ import annotations


class SSNetError(Exception):
    """Base class of every ssnet-server error."""


class ConfigError(SSNetError):
    """A command-line option, environment variable or config file is invalid."""


class ProtocolError(SSNetError):
    """A message does not follow the wire protocol (bad frames, bad header, bad array)."""


class TransportError(SSNetError):
    """A ZeroMQ socket operation failed (translated from ``zmq.ZMQError``)."""


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

    code = "unknown_service"


class ServiceUnavailable(RequestError):
    """The service exists but no worker took the request in time (queue timeout), or the queue is full."""

    code = "unavailable"


class BrokerBusy(ServiceUnavailable):
    """The broker's queue for the service is full."""

    code = "queue_full"


class WorkerLost(RequestError):
    """Every worker given the request died before answering (retries exhausted in the broker)."""

    code = "worker_lost"


class WorkerError(RequestError):
    """The worker answered with an error instead of a result."""

    code = "worker_error"


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
