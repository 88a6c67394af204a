"""ssnet-server worker: the Majordomo (MDP/0.2) :class:`Worker` base class and the simple workers.

A worker kind subclasses :class:`Worker` and implements only ``handle(payload) -> reply payload``; the base
class owns the broker connection, heartbeats, reconnects, shutdown and metrics.  ``ssnet-worker`` (or
``python -m ssnet_worker``) runs one from the command line.
"""

from __future__ import annotations

from ssnet_worker.base import Liveness, Worker, WorkerConfig
from ssnet_worker.dummy import DummyLArCV1Worker, EchoWorker, SleepWorker

__version__ = "0.1.0"

__all__ = [
    "DummyLArCV1Worker", "EchoWorker", "Liveness", "SleepWorker", "Worker", "WorkerConfig",
]
