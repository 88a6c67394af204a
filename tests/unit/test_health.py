"""``python3 -m ssnet_worker.health``: the worker's container health check, judged without sockets."""

from __future__ import annotations

import pytest

from ssnet_common.health import UNHEALTHY
from ssnet_worker import health
from ssnet_worker.metrics import BROKER_HEARTBEAT_AGE

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

WORKER_PAGE = """\
# HELP ssnet_worker_heartbeats_total Heartbeats exchanged with the broker, by direction (sent or received)
# TYPE ssnet_worker_heartbeats_total counter
ssnet_worker_heartbeats_total{direction="sent"} 4.0
ssnet_worker_heartbeats_total{direction="received"} %(received)s
ssnet_worker_heartbeats_created{direction="received"} 1.7e+09
# TYPE ssnet_worker_broker_heartbeat_age_seconds gauge
ssnet_worker_broker_heartbeat_age_seconds{service="dummy"} %(age)s
"""


def test_garbage_pages_are_unhealthy_not_errors() -> None:
    healthy, why = health.check_worker_metrics("garbage{\nssnet_x NaN-ish\n", 7.5)
    assert not healthy and ("does not parse" in why or BROKER_HEARTBEAT_AGE in why)


def test_registered_worker_hearing_its_broker_is_healthy() -> None:
    healthy, why = health.check_worker_metrics(WORKER_PAGE % {"received": "3.0", "age": "1.25"}, 7.5)
    assert healthy, why
    assert "1.2 s ago" in why


@pytest.mark.parametrize(("received", "age", "reason"), [
    ("0.0", "0.1", "not registered"),
    ("12.0", "7.5", "broker silent for 7.5 s"),
    ("12.0", "100.0", "limit 7.5 s"),
])
def test_unregistered_or_deaf_worker_is_unhealthy(received: str, age: str, reason: str) -> None:
    healthy, why = health.check_worker_metrics(WORKER_PAGE % {"received": received, "age": age}, 7.5)
    assert not healthy
    assert reason in why


def test_metrics_of_something_else_are_unhealthy() -> None:
    healthy, why = health.check_worker_metrics("# nothing\nprocess_cpu_seconds_total 1.0\n", 7.5)
    assert not healthy
    assert BROKER_HEARTBEAT_AGE in why


def test_options_default_to_the_workers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSNET_WORKER_METRICS_PORT", "9101")
    monkeypatch.setenv("SSNET_WORKER_HEARTBEAT_INTERVAL", "0.5")
    monkeypatch.setenv("SSNET_WORKER_HEARTBEAT_LIVENESS", "4")
    monkeypatch.setenv("SSNET_HEALTH_TIMEOUT", "1.5")
    worker = health.build_parser().parse_args([])
    assert (worker.metrics_port, worker.heartbeat_interval, worker.heartbeat_liveness, worker.timeout) == \
        (9101, 0.5, 4, 1.5)


def test_worker_with_metrics_off_is_unhealthy_and_says_why(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSNET_WORKER_METRICS_PORT", raising=False)
    assert health.main([]) == UNHEALTHY
    assert "metrics are off" in capsys.readouterr().out
