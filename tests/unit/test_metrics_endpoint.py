"""The metrics port's routes (``ssnet_common.metrics.metrics_app``, called as WSGI: no sockets) and the readiness
each service reports there; the real HTTP server is in tests/integration/test_http_endpoints.py."""

from __future__ import annotations

import io
from typing import Any, Callable, Optional
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from ssnet_common.metrics import Readiness, metrics_app
from ssnet_worker.base import Worker, WorkerConfig

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)


def get(app: Callable[..., Any], path: str) -> tuple[int, str, str]:
    """(status code, content type, body) of a GET of ``path``."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Optional[Any] = None) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return int(answer["status"].split()[0]), answer["headers"]["Content-Type"], body.decode()


def registry_with_a_counter() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("ssnet_test_things", "Things counted", registry=registry).inc(3)
    return registry


def test_metrics_is_the_registry_as_prometheus_client_serves_it() -> None:
    registry = registry_with_a_counter()
    code, content_type, body = get(metrics_app(registry), "/metrics")
    assert (code, content_type, body) == get(make_wsgi_app(registry), "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=")
    assert "ssnet_test_things_total 3.0" in body


def test_livez_answers_while_the_process_runs() -> None:
    assert get(metrics_app(CollectorRegistry(), lambda: (False, "not yet")), "/livez")[::2] == (200, "ok\n")


def test_readyz_follows_the_ready_callable() -> None:
    state = {"ready": False}

    def ready() -> tuple[bool, str]:
        return (True, "bound") if state["ready"] else (False, "starting")

    app = metrics_app(CollectorRegistry(), ready)
    assert get(app, "/readyz")[::2] == (503, "starting\n")
    state["ready"] = True
    assert get(app, "/readyz")[::2] == (200, "bound\n")


def test_readyz_without_a_callable_is_always_ready() -> None:
    assert get(metrics_app(CollectorRegistry()), "/readyz")[0] == 200


def test_a_failing_ready_callable_is_not_ready_and_says_why() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    code, _, body = get(metrics_app(CollectorRegistry(), broken), "/readyz")
    assert code == 503 and "RuntimeError: boom" in body


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/x", "/readyz/", "/favicon.ico"])
def test_other_paths_are_not_found(path: str) -> None:
    code, _, body = get(metrics_app(registry_with_a_counter()), path)
    assert code == 404 and "ssnet_test_things" not in body


def test_worker_is_ready_once_loaded_and_hearing_its_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker(WorkerConfig("dummy", broker="tcp://broker:5560", heartbeat_interval=1.0, heartbeat_liveness=3))
    readiness: Readiness = worker.readiness
    clock = [100.0]
    monkeypatch.setattr("ssnet_worker.base.time.monotonic", lambda: clock[0])
    ready, why = readiness()
    assert not ready and why.startswith("loading")
    worker.status.loaded = True
    ready, why = readiness()
    assert not ready and why == "not registered: no word yet from the broker at tcp://broker:5560"
    worker.status.heard = 99.0
    ready, why = readiness()
    assert ready and "broker heard 1.0 s ago" in why
    clock[0] = 102.5
    ready, why = readiness()
    assert not ready and why == "broker silent for 3.5 s (limit 3 s)"
    worker.status.heard, worker.status.lost = None, "broker sent DISCONNECT"
    assert readiness() == (False, "not registered: broker sent DISCONNECT")
