"""The container health checks against real processes: a broker's /readyz and MMI answer, a worker's /readyz."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO, Stack, free_port, scrape, wait_until


def health(what: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"ssnet_{what}.health", *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=30, check=False)


def test_broker_check_answers_only_while_the_broker_runs(stack: Stack) -> None:
    result = health("broker", "--frontend", stack.frontend, "--timeout", "0.5")
    assert result.returncode == 1, result.stdout
    assert "no MMI answer" in result.stdout
    broker = stack.broker()
    result = health("broker", "--frontend", stack.frontend)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("healthy: broker answers MMI")
    broker.terminate()
    broker.wait(10)
    assert health("broker", "--frontend", stack.frontend, "--timeout", "0.5").returncode == 1


def test_broker_check_asks_its_readyz_too(stack: Stack) -> None:
    port = free_port()
    check = ("broker", "--frontend", stack.frontend, "--metrics-port", str(port), "--timeout", "0.5")
    result = health(*check)
    assert result.returncode == 1 and f"127.0.0.1:{port}/readyz does not answer" in result.stdout, result.stdout
    stack.broker(metrics_port=port)
    result = health(*check)
    assert result.returncode == 0 and result.stdout.startswith("healthy: broker answers MMI"), result.stdout


def test_worker_check_follows_registration_and_broker_silence(stack: Stack) -> None:
    port = free_port()
    check = ("worker", "--metrics-port", str(port), "--timeout", "1")
    result = health(*check)
    assert result.returncode == 1 and "does not answer" in result.stdout, result.stdout
    stack.worker("dummy", "--heartbeat-liveness", "3", metrics_port=port, name="worker")  # no broker yet
    wait_until(lambda: _answers(port), 20, "the worker's metrics endpoint")
    result = health(*check)
    assert result.returncode == 1 and "not registered" in result.stdout, result.stdout
    broker = stack.broker()
    wait_until(lambda: health(*check).returncode == 0, 20, "the worker to become healthy")
    broker.kill()  # silence: the check fails once the liveness limit has passed
    broker.wait(10)
    wait_until(lambda: health(*check).returncode == 1, 20, "the worker to become unhealthy")
    assert "broker silent" in health(*check).stdout


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True
