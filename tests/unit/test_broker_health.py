"""``python3 -m ssnet_broker.health``: where the check connects, and its options (no sockets)."""

from __future__ import annotations

import pytest

from ssnet_broker import health


@pytest.mark.parametrize(("bound", "connect"), [
    ("tcp://*:5559", "tcp://127.0.0.1:5559"),
    ("tcp://0.0.0.0:7000", "tcp://127.0.0.1:7000"),
    ("tcp://[::]:7000", "tcp://127.0.0.1:7000"),
    ("tcp://broker:5559", "tcp://broker:5559"),
    ("ipc:///tmp/x/frontend", "ipc:///tmp/x/frontend"),
])
def test_local_endpoint(bound: str, connect: str) -> None:
    assert health.local_endpoint(bound) == connect


def test_options_default_to_the_brokers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSNET_BROKER_FRONTEND", "tcp://*:6000")
    monkeypatch.setenv("SSNET_BROKER_METRICS_PORT", "9100")
    monkeypatch.setenv("SSNET_HEALTH_TIMEOUT", "1.5")
    args = health.build_parser().parse_args([])
    assert (args.frontend, args.metrics_port, args.timeout) == ("tcp://*:6000", 9100, 1.5)
