"""Campaigns under churn: workers SIGKILLed every second, the broker SIGKILLed and restarted mid-run.

Whatever dies, the output holds every input event once, in input order (dummy workers: one ``dummy`` image per
event with the event's ids and meta).  The kill period is the scenario's own clock, not a wait for readiness.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

from .conftest import Stack, free_port, scrape, wait_until
from .test_larcv1_job import SAMPLE_512, check_dummy, dump, start_client

DELAY = "0.4"  # seconds per request: 200 events on 4 workers take about 20 s, so the storm lasts that long


def test_every_event_once_while_a_worker_is_killed_every_second(
        stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    stack.broker()
    workers = [stack.worker("dummy", "--dummy-delay", DELAY) for _ in range(4)]
    stack.wait_for_service("dummy")
    output = tmp_path / "storm.root"
    run = start_client(stack, "--input", *[str(samples / SAMPLE_512)] * 20, "--output", str(output),
                       "--window", "8", "--timeout", "10")
    rng = random.Random(7)
    kills, began = 0, time.monotonic()
    while run.proc.poll() is None:
        time.sleep(1.0)
        live = [w for w in workers if w.poll() is None]
        if live and run.proc.poll() is None:
            victim = rng.choice(live)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            kills += 1
            workers.append(stack.worker("dummy", "--dummy-delay", DELAY))
    storm = time.monotonic() - began
    assert run.wait() == 0, run.text
    assert kills >= 15, f"only {kills} kills in {storm:.1f} s: the storm was too short to mean anything"
    check_dummy(dump(output), manifest[SAMPLE_512] * 20)


def test_every_event_once_when_the_broker_is_killed_and_restarted(
        stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    port = free_port()
    broker = stack.broker(metrics_port=port)
    for _ in range(3):
        stack.worker("dummy", "--dummy-delay", "0.1")
    stack.wait_for_service("dummy")
    output = tmp_path / "restart.root"
    run = start_client(stack, "--input", *[str(samples / SAMPLE_512)] * 10, "--output", str(output),
                       "--window", "6", "--timeout", "3", "--retries", "10")

    def answered() -> float:
        assert run.proc.poll() is None, f"the client ended before the broker was killed:\n{run.text}"
        return scrape(port).get(("ssnet_broker_requests_total", (("outcome", "ok"), ("service", "dummy"))), 0.0)

    wait_until(lambda: answered() >= 20, 60, "20 events answered")
    broker.send_signal(signal.SIGKILL)
    broker.wait(10)
    stack.broker()  # the same endpoints: workers reconnect, the client re-sends what the old broker held
    assert run.wait(timeout=240) == 0, run.text
    check_dummy(dump(output), manifest[SAMPLE_512] * 10)
