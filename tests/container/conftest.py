"""The container tier: the images ``docker/build.sh`` builds and ``compose.yaml``, run for real by a Docker engine.

Skipped, saying why, where no Docker engine answers or the images are not built (``docker/build.sh``).  Under
``CI=true`` ``make test`` installs and starts the engine and builds the images first, so there a missing engine
or image is a failure, not a skip.

Each test runs its own compose project (``docker compose -p ssnet-test-<pid>-<name>``) from the repository's
``compose.yaml`` and ``.env``, with host ports chosen by Docker and its own output directory, and always ends
with ``docker compose down -v``.  SSNET_* and COMPOSE_* variables of the calling environment are not passed on,
so the ``.env`` defaults are what runs unless a test says otherwise.  Waits poll predicates (container state,
metrics scrapes through ``docker exec``) with deadlines, never bare sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ssnet_common.curve import CurveKeys, peer_keys

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
IMAGES = ("ssnet-broker:latest", "ssnet-client:latest", "ssnet-worker:cpu")
PROMETHEUS_IMAGE = "ssnet-prometheus:latest"
CI = os.environ.get("CI", "").lower() == "true"
BIN = Path(sys.executable).parent  # the host's ssnet-local, ssnet-larcv1
DEFAULT_UID = 1000  # .env's SSNET_UID/SSNET_GID

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"container tests cannot run: {reason} (CI=true: `make test` sets Docker up and builds the "
                    "images before the tests)")
    pytest.skip(f"container tests skipped: {reason}")


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def engine() -> None:
    """A Docker engine with Compose v2 and the three images; skips (fails under CI=true) without them."""
    if shutil.which("docker") is None:
        unavailable("no `docker` command (install Docker, then docker/build.sh)")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        unavailable("`docker info` timed out")
    if info.returncode != 0:
        unavailable(f"no Docker engine answers ({info.stderr.strip()[:200]})")
    if docker("compose", "version", timeout=30, check=False).returncode != 0:
        unavailable("Docker Compose v2 (`docker compose`) is not installed")
    missing = [image for image in (*IMAGES, PROMETHEUS_IMAGE)
               if docker("image", "inspect", image, timeout=30, check=False).returncode != 0]
    if missing:
        unavailable(f"images not built: {', '.join(missing)} "
                    "(docker/build.sh broker client worker prometheus, or `make containers`)")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, pace: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pace)


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def scrape_container(container: str, port: int) -> Samples:
    """A container's metrics endpoint, read from inside it (no published port needed)."""
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/metrics', timeout=5).read().decode())")
    return parse_metrics(docker("exec", container, "python3", "-c", code, timeout=30).stdout)


class Compose:
    """One compose project of the repository's compose.yaml, with its own settings and output directory."""

    def __init__(self, name: str, out_dir: Path, **settings: str) -> None:
        self.project = f"ssnet-test-{os.getpid()}-{name}"
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SSNET_", "COMPOSE_"))}
        self.key_dir = out_dir.parent / f"{out_dir.name}-keys"  # made by the project's `keys` service
        env.update(SSNET_OUT_DIR=str(out_dir), SSNET_BROKER_PORT="127.0.0.1:0", SSNET_PROMETHEUS_PORT="127.0.0.1:0",
                   SSNET_GRAFANA_PORT="127.0.0.1:0", SSNET_KEY_DIR=str(self.key_dir))
        if os.getuid() == 0:  # the .env user (1000) writes the output: give it the directory
            os.chown(out_dir, DEFAULT_UID, DEFAULT_UID)
            self.uid = DEFAULT_UID
        else:  # as a user would: run the client as ourselves
            env.update(SSNET_UID=str(os.getuid()), SSNET_GID=str(os.getgid()))
            self.uid = os.getuid()
        env.update(settings)
        self.env = env

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("compose", "-p", self.project, *args, timeout=timeout, check=check, cwd=REPO, env=self.env)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["docker", "compose", "-p", self.project, *args], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def containers(self, service: str, *, all_states: bool = False) -> list[str]:
        """Names of the service's containers (running ones unless ``all_states``), by replica number."""
        args = ["ps", "--format", "json", *(["--all"] if all_states else []), service]
        text = self(*args, timeout=60).stdout.strip()
        rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]
        return sorted((row["Name"] for row in rows), key=lambda name: (len(name), name))

    def client_keys(self) -> CurveKeys:
        """The project's client key pair and broker key, as a client on this machine uses them."""
        keys = peer_keys(self.key_dir / "private" / "client.key_secret", self.key_dir / "private" / "broker.key")
        assert keys is not None
        return keys

    def port(self, service: str, port: int) -> int:
        return int(self("port", service, str(port), timeout=60).stdout.strip().rsplit(":", 1)[1])

    def logs(self, *services: str) -> str:
        return self("logs", "--no-color", "--timestamps", *services, timeout=120, check=False).stdout

    def down(self) -> None:
        self("--profile", "monitoring", "down", "-v", "--remove-orphans", "-t", "5", timeout=180, check=False)


@pytest.fixture
def compose_factory(engine: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Compose]]:
    """``compose_factory(**settings)`` → a :class:`Compose`; every project is taken down after the test, and its
    logs are printed when the test failed."""
    made: list[Compose] = []

    def make(**settings: str) -> Compose:
        project = Compose(f"{request.node.name[:30].lower().replace('_', '-')}-{len(made)}".replace("[", "-")
                          .replace("]", ""), tmp_path / f"out{len(made)}", **settings)
        made.append(project)
        return project

    try:
        yield make
    finally:
        for project in made:
            if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
                sys.stderr.write(f"----- logs of {project.project}\n{project.logs()[-20000:]}\n")
            project.down()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def dump(path: Path) -> dict[str, Any]:
    """``ssnet-larcv1 dump PATH --json`` (the host's command) as a document, less the file name."""
    result = subprocess.run([str(BIN / "ssnet-larcv1"), "dump", str(path), "--json"], capture_output=True,
                            text=True, timeout=120, check=True)
    report: dict[str, Any] = json.loads(result.stdout)
    del report["file"]
    return report


def ssnet_local(*args: str, timeout: float = 300) -> None:
    """The host's ``ssnet-local`` (no containers), which must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSNET_")}
    result = subprocess.run([str(BIN / "ssnet-local"), "--log-level", "WARNING", *args], capture_output=True,
                            text=True, timeout=timeout, cwd=REPO, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def exit_codes(project: Compose, service: str) -> list[int]:
    codes = []
    for name in project.containers(service, all_states=True):
        codes.append(int(docker("inspect", "-f", "{{.State.ExitCode}}", name, timeout=30).stdout))
    return codes


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared material not found: {path}")
    return path


__all__: Sequence[str] = [
    "CI", "IMAGES", "PROMETHEUS_IMAGE", "REPO", "SHARED", "Compose", "docker", "dump", "exit_codes", "metric",
    "parse_metrics", "scrape_container", "shared_or_skip", "ssnet_local", "unavailable", "wait_until",
]
