"""Prometheus helpers shared by the services (needs the ``metrics`` extra: prometheus-client).

:func:`serve_metrics` is every service's one HTTP endpoint: ``/metrics`` (the registry), ``/livez`` and
``/readyz``.  The routing is written here, around ``prometheus_client.make_wsgi_app``: prometheus_client's own
servers answer every path with the metrics and take no other routes, and a small WSGI dispatcher keeps its
``/metrics`` (content negotiation, gzip, ``name[]`` filters) with no further dependency.
"""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ssnet_common.errors import ConfigError
from ssnet_common.protocol import METRICS_ADDR

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

# Request latencies range from milliseconds (echo) to minutes (a full event on a busy CPU worker).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)

Readiness = Callable[[], tuple[bool, str]]
"""Whether a service is ready, and why (or why not): read by ``/readyz`` at each request, from the server's
threads, so it only reads facts the service keeps."""

LIVEZ, READYZ, METRICS = "/livez", "/readyz", "/metrics"
_TEXT = ("Content-Type", "text/plain; charset=utf-8")  # a new header list per answer: wsgiref appends to it
_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def always_ready() -> tuple[bool, str]:
    return True, "ready"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the process up


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: " + format, *args)


class MetricsServer:
    """The running endpoint (its daemon thread serves until the process ends or :meth:`close`)."""

    def __init__(self, server: _Server, addr: str) -> None:
        self._server = server
        self.addr = addr
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="ssnet-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def metrics_app(registry: CollectorRegistry, ready: Optional[Readiness] = None) -> _WsgiApp:
    """The WSGI application behind :func:`serve_metrics`: ``/metrics``, ``/livez``, ``/readyz``, else 404."""
    from prometheus_client import make_wsgi_app

    metrics = make_wsgi_app(registry)
    judge = always_ready if ready is None else ready

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == METRICS:
            answer: Iterable[bytes] = metrics(environ, start_response)
            return answer
        if path == LIVEZ:
            start_response("200 OK", [_TEXT])
            return [b"ok\n"]
        if path == READYZ:
            try:
                healthy, why = judge()
            except Exception as exc:  # a broken check says so; it never takes the endpoint down
                log.exception("readiness check failed")
                healthy, why = False, f"readiness check failed: {type(exc).__name__}: {exc}"
            start_response("200 OK" if healthy else "503 Service Unavailable", [_TEXT])
            return [f"{why}\n".encode()]
        start_response("404 Not Found", [_TEXT])
        return [f"not found: {path} (try {METRICS}, {LIVEZ} or {READYZ})\n".encode()]

    return app


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = METRICS_ADDR,
                  ready: Optional[Readiness] = None) -> Optional[MetricsServer]:
    """Serve ``http://addr:port``: ``/metrics`` (``registry``), ``/livez`` (200 while the process runs) and
    ``/readyz`` (200 with ``ready()``'s reason when it says ready, else 503 with it; ``ready`` None: always
    ready), 404 on any other path; from daemon threads.  ``port`` 0 means off (None).  A port that cannot be
    bound (taken, not allowed) is a :class:`ConfigError`."""
    if not port:
        return None
    app = metrics_app(registry, ready)
    try:
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        httpd = make_server(addr, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s:%d%s (health: %s, %s)", addr, port, METRICS, LIVEZ, READYZ)
    return MetricsServer(httpd, addr)
