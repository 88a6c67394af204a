"""Profile ``monitoring``: Prometheus scrapes the live stack and every query of the shipped dashboards has data.

The stack runs the demo through SSNet workers (inference and model-load metrics), then makes the things the
dashboard watches for happen once each: a worker killed with a request in hand (expiration, requeue), a request
a worker fails (an error reply), a malformed message to the broker, and a client job slow enough for Prometheus
to scrape its progress.  The GPU row has no data here (no GPU): its queries are left out.  Grafana itself is not
started (its image is on Docker Hub, which CI cannot reach); its provisioning is checked against the compose file
and Prometheus.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from ssnet_client import Client, ClientConfig, WorkerError

from .conftest import REPO, Compose, docker, metric, scrape_container, wait_until

pytestmark = pytest.mark.container

GRAFANA = REPO / "docker" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
NEEDS_A_GPU = "ssnet_worker_gpu_"  # the GPU row's metrics: workers on cuda:N only


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)  # rows may hold their panels


def queries() -> list[str]:
    return [target["expr"] for path in DASHBOARDS for panel in panels(json.loads(path.read_text()))
            for target in panel.get("targets", []) if target.get("expr")]


def provisioned(name: str, key: str) -> str:
    """The value of ``key:`` in a Grafana provisioning file (flat YAML: one value per key)."""
    match = re.search(rf"^\s*{key}:\s*(\S+)\s*$", (GRAFANA / "provisioning" / name).read_text(), re.MULTILINE)
    assert match, (name, key)
    return match.group(1)


def test_dashboards_are_provisioned_from_the_files_compose_mounts(engine: None) -> None:
    compose = json.loads(docker("compose", "--profile", "monitoring", "config", "--format", "json", cwd=REPO).stdout)
    grafana = compose["services"]["grafana"]
    mounts = {Path(volume["source"]): volume["target"] for volume in grafana["volumes"]}
    assert mounts[GRAFANA / "provisioning"] == "/etc/grafana/provisioning"
    assert mounts[GRAFANA / "dashboards"] == provisioned("dashboards/ssnet.yml", "path")
    assert provisioned("datasources/prometheus.yml", "url") == "http://prometheus:9090"
    uid = provisioned("datasources/prometheus.yml", "uid")
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"] == grafana["profiles"]
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
    text = " ".join(queries())
    for metric_name in re.findall(r"\bssnet_[a-z_]+", text):  # conventions: base units, counters end in _total
        assert metric_name.endswith(("_total", "_seconds", "_seconds_bucket", "_workers", "_requests", "_busy",
                                     "_bytes", "_ratio", "_per_second", "_events")), metric_name
    for wanted in ("ssnet_broker_workers", "heartbeat_age_seconds", "expirations_total", "queued_requests",
                   "queue_wait_seconds_bucket", "requests_total", "request_duration_seconds_bucket",
                   "ssnet_worker_errors_total", "requeues_total", "bytes_total", "ssnet_worker_inference_seconds",
                   "histogram_quantile(0.95", "ssnet_client_events_done_total", "ssnet_client_job_events",
                   "ssnet_client_events_skipped_total",
                   "ssnet_client_events_per_second", "ssnet_worker_gpu_utilization_ratio",
                   "ssnet_worker_gpu_memory_used_bytes"):
        assert wanted in text, f"the dashboard shows no {wanted}"


def prometheus_api(port: int, path: str, **params: object) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def has_data(port: int, expr: str) -> bool:
    """The query returns a series with a number now."""
    return any(math.isfinite(float(series["value"][1])) for series in prometheus_api(port, "query", query=expr))


def has_data_since(port: int, expr: str, start: float) -> bool:
    """The query, over the time since ``start`` as a Grafana time-series panel asks for it (a range query), has a
    series with at least one number."""
    result = prometheus_api(port, "query_range", query=expr, start=f"{start:.3f}", end=f"{time.time():.3f}", step=5)
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def test_prometheus_scrapes_the_stack_and_every_dashboard_query_has_data(
        compose_factory: Callable[..., Compose]) -> None:
    project = compose_factory(SSNET_HEARTBEAT_INTERVAL="0.5", SSNET_WORKERS="2")
    start = time.time()
    project("--profile", "monitoring", "up", "--detach", "--wait", "broker", "worker", "prometheus", timeout=300)
    port = project.port("prometheus", 9090)
    frontend = f"tcp://127.0.0.1:{project.port('broker', 5559)}"
    wait_until(lambda: has_data(port, 'count(up{job="worker"} == 1) == 2') and has_data(port, 'up{job="broker"} == 1'),
               60, "Prometheus to find the broker and both worker replicas")

    # The demo through the two SSNet workers, twice: the broker creates a service's series at its first finished
    # request, and rate() needs an increase after Prometheus has seen a series, so the second run is what gives
    # the request rate and latency panels their data.
    assert project("run", "--rm", "client", timeout=300, check=False).returncode == 0
    wait_until(lambda: has_data(port, 'ssnet_broker_request_duration_seconds_count{service="ssnet"} == 4'), 60,
               "Prometheus to scrape the first run")
    assert project("run", "--rm", "-e", "SSNET_CLIENT_FORCE=1", "client", timeout=300, check=False).returncode == 0

    # A worker lost with a request in hand: a `sleep` worker takes a 3 s request and is killed; the broker drops
    # it (unreachable at its next send, or expired), re-queues the request (requeue), and a second sleep worker
    # answers it.
    sleeper = f"{project.project}-sleep-1"
    project("run", "--detach", "--name", sleeper, "-e", "SSNET_WORKER_KIND=sleep", "worker", timeout=120)
    replies: list[object] = []
    with Client(frontend, ClientConfig(timeout=60, retries=0, curve=project.client_keys())) as client:
        wait_until(lambda: client.has_service("sleep"), 60, "the sleep worker to register")
        asker = threading.Thread(target=lambda: replies.append(client.request("sleep", [b"3"])))
        asker.start()
        wait_until(lambda: metric(scrape_container(sleeper, 9101), "ssnet_worker_busy") == 1, 30,
                   "the sleep worker to take the request")
        docker("kill", sleeper)
        project("run", "--detach", "--name", f"{project.project}-sleep-2", "-e", "SSNET_WORKER_KIND=sleep", "worker",
                timeout=120)
        asker.join(60)
        assert replies, "the re-queued request was answered"
        with pytest.raises(WorkerError):  # a request the worker fails: an error reply
            client.request("sleep", [b"not a number"])
    # A client job Prometheus can see (--use-aliases: the name `client` it looks up) and long enough for a few
    # scrapes: the demo's 4 events through one dummy worker taking 4 s each (--no-deps: the killed sleep worker
    # would count as a failed dependency).
    project("run", "--detach", "--name", f"{project.project}-dummy", "-e", "SSNET_WORKER_KIND=dummy", "-e",
            "SSNET_WORKER_DUMMY_DELAY=4", "worker", timeout=120)
    job = project("run", "--rm", "--no-deps", "--use-aliases", "-e", "SSNET_CLIENT_SERVICE=dummy", "-e",
                  "SSNET_CLIENT_OUTPUT=/out/progress.root", "client", timeout=300, check=False)
    assert job.returncode == 0, job.stdout[-3000:]
    docker("rm", "-f", f"{project.project}-dummy", check=False)
    malformed = zmq.Context.instance().socket(zmq.DEALER)  # a malformed message, dropped and counted
    try:
        project.client_keys().client_side(malformed)  # an authorized client (a stranger is refused before that)
        malformed.connect(frontend)
        malformed.send_multipart([b"", b"not MDP"])
    finally:
        malformed.close(linger=1000)

    missing: list[str] = []

    def every_query_has_data() -> bool:
        missing[:] = [expr for expr in queries()
                      if NEEDS_A_GPU not in expr and not has_data_since(port, expr, start)]
        return not missing

    try:
        wait_until(every_query_has_data, 90, "every dashboard query to return data", pace=2)
    except AssertionError:
        raise AssertionError(f"dashboard queries without data: {missing}") from None
    assert has_data(port, 'sum(ssnet_broker_requeues_total{service="sleep"}) == 1')
    assert has_data(port, 'sum(ssnet_broker_worker_expirations_total{service="sleep"}) '
                          '+ sum(ssnet_broker_worker_unreachable_total{service="sleep"}) == 1')  # dropped once
    assert has_data(port, 'sum(ssnet_broker_requests_total{service="sleep",outcome="worker_error"}) == 1')
    assert has_data(port, 'count(ssnet_worker_inference_seconds_count{job="worker"}) == 6')  # 2 workers x 3 planes
    docker("rm", "-f", f"{project.project}-sleep-2", check=False)


def test_prometheus_config_is_valid(engine: None) -> None:
    config = REPO / "docker" / "prometheus" / "prometheus.yml"
    result = docker("run", "--rm", "--network", "none", "-v", f"{config}:/tmp/prometheus.yml:ro", "--entrypoint",
                    "promtool", "ssnet-prometheus:latest", "check", "config", "/tmp/prometheus.yml", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
