"""The protocol side of ssnet-server, shared by the broker, workers and clients (pyzmq only): the wire protocol
(``protocol``), errors and their codes (``errors``), socket helpers (``transport``), the broker endpoint file
(``rendezvous``), options (``config``), metrics and health-check helpers, atomic files (``files``)."""

__version__ = "0.1.0"
