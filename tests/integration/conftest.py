"""Real processes on real sockets: a broker, workers and clients started as subprocesses.

Endpoints are ``ipc://`` paths in a private temporary directory; readiness is checked by round trips
(an MMI ping to the broker, a metrics scrape), never by sleeping.  Every process is stopped in ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ssnet_common import protocol as mdp
from ssnet_common.curve import CurveKeys
from ssnet_common.transport import mmi_service

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a metrics endpoint: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, pace: float = 0.05) -> None:
    """Poll ``predicate`` (a round trip such as an MMI ping or a scrape) until it holds; fail after ``timeout``.

    ``pace`` only spaces the round trips out; readiness is always decided by the predicate's answer.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pace)


@dataclass
class Stack:
    """Processes of one test, with their logs in a private directory."""

    root: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    heartbeat: float = 0.25

    @property
    def frontend(self) -> str:
        return f"ipc://{self.root}/frontend"

    @property
    def backend(self) -> str:
        return f"ipc://{self.root}/backend"

    def spawn(self, name: str, argv: Sequence[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process record
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def broker(self, *extra: str, metrics_port: int = 0, curve: CurveKeys | None = None) -> subprocess.Popen[bytes]:
        """A broker, up once it answers an MMI round trip (``curve``: the keys to ask with, for a CURVE broker)."""
        proc = self.spawn("broker", [
            "-m", "ssnet_broker", "--frontend", self.frontend, "--backend", self.backend,
            "--heartbeat-interval", str(self.heartbeat), "--metrics-port", str(metrics_port), *extra,
        ])
        wait_until(lambda: mmi_service(self.frontend, "ping", 0.5, curve) is not None, 20, "the broker")
        return proc

    def worker(self, kind: str, *extra: str, service: str | None = None, name: str | None = None,
               metrics_port: int = 0) -> subprocess.Popen[bytes]:
        argv = ["-m", "ssnet_worker", "--broker", self.backend, "--kind", kind,
                "--heartbeat-interval", str(self.heartbeat), "--metrics-port", str(metrics_port), *extra]
        if service:
            argv += ["--service", service]
        return self.spawn(name or f"worker-{kind}-{len(self.procs)}", argv)

    def wait_for_service(self, service: str, timeout: float = 20) -> None:
        wait_until(lambda: mmi_service(self.frontend, service, 1.0) == mdp.MMI_FOUND, timeout, f"service {service}")

    def logs(self) -> str:
        return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.root.glob("*.log")))

    def stop_all(self) -> None:
        """Workers and clients first (so they can say goodbye to the broker), then the broker."""
        others = [proc for name, proc in self.procs if name != "broker"]
        brokers = [proc for name, proc in self.procs if name == "broker"]
        from ssnet_client.local import stop  # here: the Python 3.9 run (test_worker_protocol) has no client package

        for group in (others, brokers):
            stop(group, timeout=10)


@pytest.fixture(scope="module")
def manifest(shared: Path) -> dict[str, list[dict[str, Any]]]:
    """Per sample file of ``../shared/data/larcv1``, the manifest's entries of producer ``wire``."""
    document = json.loads((shared / "data" / "larcv1" / "manifest.json").read_text())
    return {name: item["producers"]["wire"]["entries"] for name, item in document["files"].items()}


@pytest.fixture(scope="module")
def samples(shared: Path) -> Path:
    """The shared LArCV1 sample files' directory."""
    return shared / "data" / "larcv1"


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="ssnet-", dir="/tmp"))  # short: ipc paths are limited to ~100 bytes
    result = Stack(root)
    try:
        yield result
    finally:
        result.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write(result.logs())
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
