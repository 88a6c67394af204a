"""ssnet-server client: requests to ssnet services through a Majordomo (MDP/0.2) broker.

``Client(endpoint, ClientConfig(...))`` keeps many requests in flight over one DEALER socket
(:meth:`Client.imap`) and hands the results back in submission order; :meth:`Client.request` is the blocking
one-request form and :meth:`Client.has_service` asks the broker (MMI) whether a service has workers.
"""

from __future__ import annotations

from ssnet_client.base import (
    Client,
    ClientConfig,
    ClientStats,
    Outcome,
    Reply,
    ReplyDisposition,
    Request,
    RequestTracker,
    Send,
)
from ssnet_common.errors import (
    BrokerBusy,
    NoSuchService,
    QueueTimeout,
    RequestError,
    RequestTimeout,
    ServiceUnavailable,
    TransportError,
    WorkerError,
    WorkerLost,
    error_for,
)

__version__ = "0.1.0"

__all__ = [
    "BrokerBusy", "Client", "ClientConfig", "ClientStats", "NoSuchService", "Outcome", "QueueTimeout", "Reply",
    "ReplyDisposition",
    "Request", "RequestError", "RequestTimeout", "RequestTracker", "Send", "ServiceUnavailable", "TransportError",
    "WorkerError", "WorkerLost", "error_for",
]
