"""CURVE: the broker admits only authorized keys, per side, and everything else is refused and counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ssnet_common import protocol as mdp
from ssnet_common.curve import CurveKeys, create_keys, load_public, load_secret
from ssnet_common.transport import mmi_service

from .conftest import REPO, Stack, free_port, scrape, wait_until
from .test_larcv1_job import SAMPLE_512, dump, run_client


@dataclass
class Keys:
    root: Path

    def secret(self, name: str) -> Path:
        return self.root / "private" / f"{name}.key_secret"

    def public(self, name: str) -> Path:
        return self.root / "private" / f"{name}.key"

    def pair(self, name: str) -> CurveKeys:
        public, secret = load_secret(self.secret(name))
        return CurveKeys(public, secret, load_public(self.public("broker")))

    @property
    def broker_args(self) -> list[str]:
        return ["--curve-secret", str(self.secret("broker")), "--curve-clients", str(self.root / "clients"),
                "--curve-workers", str(self.root / "workers")]

    def peer_args(self, name: str) -> list[str]:
        return ["--curve-secret", str(self.secret(name)), "--curve-server", str(self.public("broker"))]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """Key pairs for the broker, a client, a worker and a stranger; the client's and the worker's public keys
    authorized on their side only."""
    root = tmp_path / "keys"
    for name in ("broker", "client", "worker", "stranger"):
        create_keys(root / "private", name)
    for side, name in (("clients", "client"), ("workers", "worker")):
        (root / side).mkdir(mode=0o755)
        (root / side / f"{name}.key").write_bytes((root / "private" / f"{name}.key").read_bytes())
    return Keys(root)


def failures(port: int, side: str) -> float:
    return scrape(port).get(("ssnet_broker_auth_failures_total", (("side", side),)), 0.0)


def test_authorized_client_and_worker_give_the_same_output_as_in_the_clear(
        stack: Stack, keys: Keys, samples: Path, tmp_path: Path) -> None:
    stack.broker(*keys.broker_args, curve=keys.pair("client"))
    stack.worker("dummy", *keys.peer_args("worker"))
    wait_until(lambda: mmi_service(stack.frontend, "dummy", 1.0, keys.pair("client")) == mdp.MMI_FOUND, 20,
               "the worker to register over CURVE")
    secured = tmp_path / "curve.root"
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(secured),
                            *keys.peer_args("client"))
    assert code == 0, text
    clear = tmp_path / "clear.root"
    result = subprocess.run([sys.executable, "-m", "ssnet_client.local", "--kind", "dummy", "--input",
                             str(samples / SAMPLE_512), "--output", str(clear)], capture_output=True, text=True,
                            timeout=300, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert dump(secured) == dump(clear)


def test_strangers_are_refused_and_counted_on_each_side(stack: Stack, keys: Keys) -> None:
    port = free_port()
    stack.broker(*keys.broker_args, metrics_port=port, curve=keys.pair("client"))
    stack.worker("echo", *keys.peer_args("worker"))
    client = keys.pair("client")
    wait_until(lambda: mmi_service(stack.frontend, "echo", 1.0, client) == mdp.MMI_FOUND, 20, "the echo worker")

    assert mmi_service(stack.frontend, "echo", 1.0) is None  # in the clear: no reply
    wait_until(lambda: failures(port, "client") >= 1, 10, "the plaintext client to be counted")
    assert mmi_service(stack.frontend, "echo", 1.0, keys.pair("stranger")) is None  # an unknown key
    wait_until(lambda: failures(port, "client") >= 2, 10, "the unknown key to be counted")
    assert mmi_service(stack.frontend, "echo", 1.0, keys.pair("worker")) is None  # a worker's key as a client
    wait_until(lambda: failures(port, "client") >= 3, 10, "the worker key on the client side to be counted")

    # A client's key on the worker side never registers: the service it offers never appears.
    stack.worker("echo", *keys.peer_args("client"), service="intruder")
    wait_until(lambda: failures(port, "worker") >= 1, 20, "the client key on the worker side to be refused")
    assert mmi_service(stack.frontend, "intruder", 1.0, client) == mdp.MMI_NOT_FOUND
    samples = scrape(port)
    assert samples[("ssnet_broker_requests_total", (("outcome", "ok"), ("service", "echo")))] == 0  # nothing dispatched
    assert "is not authorized" in stack.logs()


def test_a_wrong_server_key_is_a_clear_error_within_the_connect_timeout(
        stack: Stack, keys: Keys, samples: Path, tmp_path: Path) -> None:
    stack.broker(*keys.broker_args, curve=keys.pair("client"))
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(tmp_path / "o.root"),
                            "--curve-secret", str(keys.secret("client")),
                            "--curve-server", str(keys.public("stranger")), "--connect-timeout", "2")
    assert code == 1, text
    assert "does not answer (no reply within 2 s); with CURVE, check that --curve-server" in text


def test_a_secret_key_others_can_read_is_refused_at_start(keys: Keys, tmp_path: Path) -> None:
    os.chmod(keys.secret("broker"), 0o644)
    result = subprocess.run([sys.executable, "-m", "ssnet_broker", "--frontend", f"ipc://{tmp_path}/f",
                             "--backend", f"ipc://{tmp_path}/b", *keys.broker_args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert f"CURVE secret key file '{keys.secret('broker')}' can be read by others (mode 0644)" in result.stderr
    os.chmod(keys.secret("broker"), 0o600)
    os.chmod(keys.root / "workers", 0o777)
    result = subprocess.run([sys.executable, "-m", "ssnet_broker", "--frontend", f"ipc://{tmp_path}/f",
                             "--backend", f"ipc://{tmp_path}/b", *keys.broker_args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "can be written by others (mode 0777)" in result.stderr


def test_ssnet_keys_creates_and_shows(tmp_path: Path) -> None:
    def keys_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ssnet_common.curve", *args], capture_output=True, text=True,
                              timeout=60, check=False)

    made = keys_command("create", str(tmp_path / "k"), "alice")
    assert made.returncode == 0, made.stderr
    assert (os.stat(tmp_path / "k" / "alice.key_secret").st_mode & 0o777) == 0o600
    shown = keys_command("show", str(tmp_path / "k" / "alice.key"))
    assert shown.stdout.strip() == load_public(tmp_path / "k" / "alice.key").decode()
    again = keys_command("create", str(tmp_path / "k"), "alice")
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_the_endpoint_file_carries_the_broker_key(stack: Stack, keys: Keys, samples: Path, tmp_path: Path) -> None:
    """Workers and clients that find the broker through its endpoint file take its public key from there: they
    need only their own key pair."""
    endpoint_file = tmp_path / "broker.json"
    stack.broker(*keys.broker_args, "--endpoint-file", str(endpoint_file), curve=keys.pair("client"))
    wait_until(endpoint_file.exists, 20, "the endpoint file")
    assert json.loads(endpoint_file.read_text())["curve_public"] == load_public(keys.public("broker")).decode()
    worker = ["-m", "ssnet_worker", "--broker-file", str(endpoint_file), "--kind", "dummy",
              "--curve-secret", str(keys.secret("worker")), "--heartbeat-interval", str(stack.heartbeat)]
    stack.spawn("worker-from-file", worker)
    wait_until(lambda: mmi_service(stack.frontend, "dummy", 1.0, keys.pair("client")) == mdp.MMI_FOUND, 30,
               "the worker found through the file")
    output = tmp_path / "out.root"
    result = subprocess.run(
        [sys.executable, "-m", "ssnet_client.cli", "--broker-file", str(endpoint_file), "--input",
         str(samples / SAMPLE_512), "--output", str(output), "--curve-secret", str(keys.secret("client"))],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.is_file()
