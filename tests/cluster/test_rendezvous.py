"""Rendezvous through an endpoint file (``ssnet_common.rendezvous``), without Slurm.

The file's format and validation, atomic writes, the wait (a stale file is not trusted; a new broker's file is
picked up; a clear timeout), the watcher a worker keeps, and the three commands: the broker writes the file once it
answers and removes it when it stops, a client and a worker started before it find it.  Waits are predicates with
deadlines (the wait function itself is driven by a fake clock in the unit tests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssnet_common import rendezvous as rv
from ssnet_common.backoff import JITTER
from ssnet_common.errors import ConfigError
from ssnet_data.larcv1 import LArCV1Reader, list_image2d_producers

from ..integration.conftest import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo" / "ssnet_demo.root"


def endpoint(**changes: object) -> rv.BrokerEndpoint:
    fields: dict[str, object] = {
        "run_id": "run-1", "host": "node1", "frontend": "tcp://node1:5559", "backend": "tcp://node1:5560",
        "metrics_port": 9560, "pid": 42, "started": 1_700_000_000.5,
    }
    fields.update(changes)
    return rv.BrokerEndpoint(**fields)  # type: ignore[arg-type]


class FakeClock:
    """A clock that only the fake sleep moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# ------------------------------------------------------------------------------------------------ the file
def test_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "broker.json"
    info = endpoint()
    rv.write_endpoint_file(path, info)
    assert rv.read_endpoint_file(path) == info
    data = json.loads(path.read_text())
    assert data["format"] == rv.FORMAT and data["started_utc"] == "2023-11-14T22:13:20Z"
    assert [p.name for p in path.parent.iterdir()] == ["broker.json"]  # no temporary file left
    rv.write_endpoint_file(path, endpoint(run_id="run-2"))  # replaces, never appends or truncates in place
    assert rv.read_endpoint_file(path).run_id == "run-2"


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ("[]", "not a JSON object"),
    (json.dumps({"format": "other/1"}), "format is 'other/1'"),
    (json.dumps({"format": rv.FORMAT, "run_id": "r"}), "field 'host' is missing"),
])
def test_invalid_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broker.json"
    path.write_text(text)
    with pytest.raises(rv.RendezvousError, match=message) as info:
        rv.read_endpoint_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("field, value", [
    ("frontend", "tcp://*:5559"), ("backend", "tcp://0.0.0.0:5560"), ("frontend", "http://node1:5559"),
    ("backend", "tcp://node1:port"), ("metrics_port", 70000), ("pid", "42"), ("started", True),
])
def test_unusable_values_are_refused(tmp_path: Path, field: str, value: object) -> None:
    data = json.loads(endpoint().to_json())
    data[field] = value
    path = tmp_path / "broker.json"
    path.write_text(json.dumps(data))
    with pytest.raises(rv.RendezvousError, match=field):
        rv.read_endpoint_file(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rv.read_endpoint_file(tmp_path / "nothing.json")


@pytest.mark.parametrize("bound, expected", [
    ("tcp://*:5559", "tcp://node7:5559"),
    ("tcp://0.0.0.0:5560", "tcp://node7:5560"),
    ("tcp://10.1.2.3:5559", "tcp://10.1.2.3:5559"),
    ("ipc:///tmp/frontend", "ipc:///tmp/frontend"),
])
def test_advertised_endpoints(bound: str, expected: str) -> None:
    assert rv.advertised(bound, "node7") == expected


@pytest.mark.parametrize("bound", ["tcp://*:*", "tcp://*:0"])
def test_ephemeral_ports_cannot_be_advertised(bound: str) -> None:
    with pytest.raises(ConfigError, match="fixed port"):
        rv.advertised(bound, "node7")


def test_create_fills_in_this_process() -> None:
    info = rv.BrokerEndpoint.create("tcp://*:5559", "tcp://*:5560", host="nodeX", metrics_port=9560)
    assert (info.frontend, info.backend, info.pid, info.metrics_url) == (
        "tcp://nodeX:5559", "tcp://nodeX:5560", os.getpid(), "http://nodeX:9560/metrics")
    assert abs(info.started - time.time()) < 60 and len(info.run_id) == 32


def test_remove_only_our_own_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    rv.write_endpoint_file(path, endpoint(run_id="theirs"))
    assert not rv.remove_endpoint_file(path, "ours") and path.exists()
    assert rv.remove_endpoint_file(path, "theirs") and not path.exists()
    assert not rv.remove_endpoint_file(path, "theirs")


# ------------------------------------------------------------------------------------------------ waiting
def test_wait_times_out_with_the_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(rv.BrokerNotFound, match="within 10 s: the file does not exist yet"):
        rv.wait_for_broker(tmp_path / "broker.json", 10, clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(10)
    assert (1 - JITTER) * rv.POLL_MIN <= clock.sleeps[0] <= rv.POLL_MIN and max(clock.sleeps) <= rv.POLL_MAX
    assert max(clock.sleeps) > rv.POLL_MIN  # backs off, bounded, with jitter


def test_a_stale_file_is_not_trusted_and_its_replacement_is_used(tmp_path: Path) -> None:
    """A file left by a dead broker: re-read until a live broker's file replaces it."""
    path = tmp_path / "broker.json"
    rv.write_endpoint_file(path, endpoint(run_id="dead", frontend="tcp://node1:5559"))
    clock = FakeClock()
    probed: list[str] = []

    def probe(frontend: str, timeout: float) -> bool:
        probed.append(frontend)
        if len(probed) == 3:  # the new broker writes its file meanwhile
            rv.write_endpoint_file(path, endpoint(run_id="alive", frontend="tcp://node2:5559"))
        return frontend == "tcp://node2:5559"

    found = rv.wait_for_broker(path, 60, probe=probe, clock=clock, sleep=clock.sleep)
    assert found.run_id == "alive"
    assert probed == ["tcp://node1:5559"] * 3 + ["tcp://node2:5559"]


def test_not_before_ignores_older_brokers_without_asking_them(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    rv.write_endpoint_file(path, endpoint(started=1000.0))
    clock = FakeClock()
    with pytest.raises(rv.BrokerNotFound, match="older than the --broker-not-before time"):
        rv.wait_for_broker(path, 3, not_before=2000.0, probe=lambda f, t: pytest.fail("probed"),
                           clock=clock, sleep=clock.sleep)


def test_an_invalid_file_is_waited_past(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    path.write_text("{")
    clock = FakeClock()
    with pytest.raises(rv.BrokerNotFound, match="not JSON"):
        rv.wait_for_broker(path, 2, clock=clock, sleep=clock.sleep)


def test_probe_of_nothing_is_false() -> None:
    assert not rv.probe_broker(f"tcp://127.0.0.1:{free_port()}", 0.2)


def test_watcher_reports_a_new_broker_or_a_file_gone_for_good(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    rv.write_endpoint_file(path, endpoint(run_id="mine"))
    watcher = rv.EndpointWatcher(path, endpoint(run_id="mine"), lambda reason: None, missing_checks=2)
    assert watcher.check(0) == (None, 0)
    path.write_text("{")  # unreadable for a moment (a busy server): not taken as gone
    assert watcher.check(0) == (None, 0)
    path.unlink()
    assert watcher.check(0) == (None, 1)
    reason, _ = watcher.check(1)
    assert reason is not None and "is gone" in reason
    rv.write_endpoint_file(path, endpoint(run_id="next"))
    reason, _ = watcher.check(0)
    assert reason is not None and "names another broker" in reason


def test_watcher_thread_calls_back_once(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    rv.write_endpoint_file(path, endpoint(run_id="mine"))
    calls: list[str] = []
    watcher = rv.EndpointWatcher(path, endpoint(run_id="mine"), calls.append, interval=0.01).start()
    try:
        rv.write_endpoint_file(path, endpoint(run_id="next"))
        wait_until(lambda: bool(calls), 10, "the watcher's callback")
    finally:
        watcher.close()
    assert len(calls) == 1


def test_publisher_writes_once_the_broker_answers_and_removes_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    answers = iter([False, False, True])
    failures: list[str] = []
    publisher = rv.EndpointPublisher(path, endpoint(run_id="mine"), failures.append,
                                     probe=lambda frontend, timeout: next(answers)).start()
    try:
        assert publisher.written.wait(30)
        assert rv.read_endpoint_file(path).run_id == "mine" and not failures
    finally:
        publisher.close()
    assert not path.exists()


def test_publisher_gives_up_when_the_broker_never_answers(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    failures: list[str] = []
    publisher = rv.EndpointPublisher(path, endpoint(), failures.append, timeout=0.2,
                                     probe=lambda frontend, timeout: False).start()
    wait_until(lambda: bool(failures), 30, "the publisher to give up")
    publisher.close()
    assert publisher.failed and "did not answer on its advertised frontend tcp://node1:5559" in failures[0]
    assert not path.exists()


# ------------------------------------------------------------------------------------------------ commands
def run(command: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSNET_")}
    return subprocess.run([sys.executable, "-m", command, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, check=False)


@pytest.mark.parametrize("command", ["ssnet_client.cli", "ssnet_worker"])
def test_broker_and_broker_file_exclude_each_other(tmp_path: Path, command: str) -> None:
    args = ["--input", str(DEMO), "--output", str(tmp_path / "o.root")] if command == "ssnet_client.cli" else []
    result = run(command, "--broker", "tcp://node1:5559", "--broker-file", str(tmp_path / "b.json"), *args)
    assert result.returncode == 2, result.stderr
    assert "argument --broker-file: not allowed with argument --broker" in result.stderr


def test_client_gives_up_after_broker_wait(tmp_path: Path) -> None:
    result = run("ssnet_client.cli", "--broker-file", str(tmp_path / "b.json"), "--broker-wait", "0.5",
                 "--input", str(DEMO), "--output", str(tmp_path / "o.root"))
    assert result.returncode == 1, result.stderr
    assert f"no broker found through endpoint file {tmp_path / 'b.json'} within 0.5 s" in result.stderr
    assert not (tmp_path / "o.root").exists()


def test_broker_publishes_and_early_client_and_worker_find_it(tmp_path: Path) -> None:
    """Client and worker start first, with a stale file from a dead broker in place; the broker comes, writes
    its file once it answers; the job succeeds; the broker removes its file when it stops."""
    path = tmp_path / "run" / "broker.json"
    rv.write_endpoint_file(path, endpoint(run_id="stale", frontend=f"tcp://127.0.0.1:{free_port()}"))
    front, back = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SSNET_")}, "PYTHONUNBUFFERED": "1"}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("client", "worker", "broker")}  # noqa: SIM115
    common = ["--broker-file", str(path), "--broker-wait", "60"]
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        procs["client"] = subprocess.Popen(
            [sys.executable, "-m", "ssnet_client.cli", *common, "--input", str(DEMO), "--output",
             str(tmp_path / "out.root"), "--service", "dummy"], stdout=logs["client"], stderr=subprocess.STDOUT,
            env=env, text=True)
        procs["worker"] = subprocess.Popen(
            [sys.executable, "-m", "ssnet_worker", *common, "--kind", "dummy", "--heartbeat-interval", "0.25"],
            stdout=logs["worker"], stderr=subprocess.STDOUT, env=env, text=True)
        wait_until(lambda: "does not answer" in (tmp_path / "client.log").read_text(), 30,
                   "the client to see the stale file")
        procs["broker"] = subprocess.Popen(
            [sys.executable, "-m", "ssnet_broker", "--frontend", f"tcp://127.0.0.1:{front}", "--backend",
             f"tcp://127.0.0.1:{back}", "--heartbeat-interval", "0.25", "--endpoint-file", str(path)],
            stdout=logs["broker"], stderr=subprocess.STDOUT, env=env, text=True)
        assert procs["client"].wait(60) == 0, (tmp_path / "client.log").read_text()
        info = rv.read_endpoint_file(path)
        assert (info.run_id != "stale", info.frontend, info.backend, info.pid) == (
            True, f"tcp://127.0.0.1:{front}", f"tcp://127.0.0.1:{back}", procs["broker"].pid)
        procs["broker"].send_signal(signal.SIGTERM)
        assert procs["broker"].wait(30) == 0
        assert not path.exists()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()
    client_log = (tmp_path / "client.log").read_text()
    assert "it names broker run stale" in client_log and f"found broker run {info.run_id[:12]}" in client_log
    assert list_image2d_producers(tmp_path / "out.root") == ["dummy"]
    assert len(LArCV1Reader(tmp_path / "out.root", "dummy")) == len(LArCV1Reader(DEMO, "wire"))
