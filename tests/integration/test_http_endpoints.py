"""The metrics port's HTTP endpoints for real: ``/metrics``, ``/livez``, ``/readyz`` and 404s from
``serve_metrics``, and the readiness a real worker, broker and client job report there as they start."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from ssnet_common.errors import ConfigError
from ssnet_common.health import check_ready
from ssnet_common.metrics import serve_metrics

from .conftest import REPO, Stack, free_port, scrape, wait_until

DEMO = REPO / "data" / "demo" / "ssnet_demo.root"  # 4 events


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of ``GET http://127.0.0.1:port/path``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def answers(port: int) -> bool:
    try:
        get(port, "/livez")
    except OSError:
        return False
    return True


def test_serve_metrics_routes_and_port_in_use() -> None:
    registry = CollectorRegistry()
    Counter("ssnet_test_things", "Things counted", registry=registry).inc(2)
    state = {"ready": False}
    port = free_port()
    server = serve_metrics(registry, port, "127.0.0.1",
                           ready=lambda: (True, "bound") if state["ready"] else (False, "starting"))
    assert server is not None
    try:
        assert get(port, "/livez") == (200, "text/plain; charset=utf-8", "ok\n")
        assert get(port, "/readyz")[::2] == (503, "starting\n")
        assert check_ready(port, 5) == (False, "starting")
        state["ready"] = True
        assert get(port, "/readyz")[::2] == (200, "bound\n")
        assert check_ready(port, 5) == (True, "bound")
        status, content_type, body = get(port, "/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=")
        assert body == generate_latest(registry).decode()
        for path in ("/", "/anything", "/metrics/more"):
            status, _, body = get(port, path)
            assert status == 404 and "ssnet_test_things" not in body
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}: .*in use"):
            serve_metrics(CollectorRegistry(), port, "127.0.0.1")
    finally:
        server.close()
    assert not answers(port)
    again = serve_metrics(registry, port, "127.0.0.1")  # closing freed the port
    assert again is not None
    again.close()


def test_nothing_served_on_port_zero() -> None:
    assert serve_metrics(CollectorRegistry(), 0) is None


def test_worker_and_broker_readiness_as_they_start(stack: Stack) -> None:
    worker_port, broker_port = free_port(), free_port()
    stack.worker("dummy", metrics_port=worker_port)  # no broker yet
    wait_until(lambda: answers(worker_port), 20, "the worker's /livez")
    assert get(worker_port, "/livez")[0] == 200
    status, _, why = get(worker_port, "/readyz")
    assert status == 503 and why.startswith("not registered: no word yet from the broker"), why
    stack.broker(metrics_port=broker_port)
    status, _, why = get(broker_port, "/readyz")
    assert status == 200 and why.startswith("bound: clients on ipc://"), why
    wait_until(lambda: get(worker_port, "/readyz")[0] == 200, 20, "the worker to register")
    assert "registered as 'dummy'" in get(worker_port, "/readyz")[2]


def test_client_job_is_ready_once_connected_and_exports_its_progress(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    stack.broker()
    client = stack.spawn("client", ["-m", "ssnet_client.cli", "--broker", stack.frontend, "--progress", "log",
                                    "--input", str(DEMO), "--output", str(tmp_path / "out.root"),
                                    "--metrics-port", str(port)])
    wait_until(lambda: answers(port), 30, "the client's /livez")
    status, _, why = get(port, "/readyz")
    assert status == 503 and why.startswith("connecting"), why  # no worker of the service yet
    progress = scrape(port)
    assert progress[("ssnet_client_job_events", ())] == 4
    assert progress[("ssnet_client_events_done_total", ())] == 0
    stack.worker("dummy", "--dummy-delay", "1.0")
    wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "the client to connect")
    wait_until(lambda: scrape(port)[("ssnet_client_events_done_total", ())] >= 1, 30, "a first event done")
    assert scrape(port)[("ssnet_client_events_per_second", ())] > 0
    assert client.wait(60) == 0
