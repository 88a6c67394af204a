"""The container health checks' options and what they say without a service to ask (no sockets); their answers
from live services are in tests/integration/test_health.py."""

from __future__ import annotations

import pytest

from ssnet_common import health as common
from ssnet_common.health import UNHEALTHY
from ssnet_worker import health

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)


def test_options_default_to_the_workers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSNET_WORKER_METRICS_PORT", "9101")
    monkeypatch.setenv("SSNET_HEALTH_TIMEOUT", "1.5")
    worker = health.build_parser().parse_args([])
    assert (worker.metrics_port, worker.timeout) == (9101, 1.5)


def test_worker_with_metrics_off_is_unhealthy_and_says_why(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSNET_WORKER_METRICS_PORT", raising=False)
    assert health.main([]) == UNHEALTHY
    assert "metrics are off" in capsys.readouterr().out


def test_any_service_check_needs_a_port(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSNET_HEALTH_PORT", raising=False)
    assert common.main([]) == UNHEALTHY
    assert capsys.readouterr().out == "unhealthy: no metrics port to ask (--port, SSNET_HEALTH_PORT)\n"
    monkeypatch.setenv("SSNET_HEALTH_PORT", "9102")
    assert common.build_parser().parse_args([]).port == 9102
