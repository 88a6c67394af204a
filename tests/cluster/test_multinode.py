"""The Slurm job scripts on a multi-node cluster, as a site runs them: SIF images under Apptainer, a non-root user.

``scripts/slurm-cluster.sh`` makes the cluster of containers on one Docker network: a controller (the login node)
and four compute nodes, with the shared filesystem ``/cluster`` (a host directory here, so the test reads logs
and outputs directly).  The test does what ``singularity/README.md`` tells a site to do: the SIF images built by
``singularity/build.sh`` (Apptainer from a container where it is not installed), the job scripts, a site
configuration and the inputs are put on the shared filesystem, and the user ``physicist`` submits on the login
node.  Every service runs from its SIF with ``apptainer exec``, CURVE on, the keys made by the first job in
``~/.ssnet/keys``.  Placement, pinned with ``--nodelist`` through the per-kind ``SSNET_SLURM_*_EXTRA`` settings:
the broker on c1, two dummy workers on c2, three client tasks on c3; c4 is the node that dies.

One run: the client array first (it waits for the broker), then the broker, then the workers; worker task 0
is cancelled once requests flow.  Then a second list goes to c4, which is killed (``docker kill``) once the
client has written a checkpoint chunk; ``submit_clients`` run again (on c3) resumes from the chunks.  Checked:
every output equals ``ssnet-local``'s (``ssnet-larcv1 dump --json`` less the file name), nothing was lost to
the cancel or to the dead node, and the services ran where they were put, from the images, as the user.

Skipped, saying why, where no Docker engine answers, or (outside CI) where the project's Docker images are not
built; under ``CI=true`` the images are built (``make containers``) and a failure to build fails the test.  The
SIF images are rebuilt only when their Docker image changed (``singularity/build.sh --if-changed``).  Waits poll
predicates (log lines, files, metrics, ``scontrol``) with deadlines; the cluster is removed in the fixture's
finalizer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..container.conftest import dump, ssnet_local
from ..integration.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").lower() == "true"
IMAGES = ("ssnet-broker:latest", "ssnet-client:latest", "ssnet-worker:cpu")
SIF_CACHE = REPO / "singularity" / "images"  # singularity/build.sh's default: rebuilt only when changed
USER, UID = "physicist", 1000
HOME = f"/cluster/home/{USER}"
PROJECT = "/cluster/project/ssnet"
EVENTS = 4 + 10 + 2  # entries of the three inputs
# The SIF images take minutes to build when their Docker images changed (about 6 min for the three on 2 cores).
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1200)]
TERMINAL = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE")

# The site's settings (a site copy of ssnet.conf's choices; the project's file supplies the rest).
SITE_CONF = "\n".join([
    "# The simulated site: its settings, then the project's defaults (every setting there keeps one set here).",
    ': "${SSNET_RUNNER:=apptainer}"',
    ': "${SSNET_SLURM_WORKER_GPUS:=0}"   # no GPUs: the CPU worker image',
    ': "${SSNET_SLURM_BROKER_WAIT:=300}"',
    ': "${SSNET_SLURM_SERVICE_WAIT:=300}"',
    ': "${SSNET_BROKER_HEARTBEAT_INTERVAL:=0.5}"',
    ': "${SSNET_WORKER_HEARTBEAT_INTERVAL:=0.5}"',
    ': "${SSNET_WORKER_KIND:=dummy}"',
    ': "${SSNET_WORKER_DUMMY_DELAY:=0.7}"',
    ': "${SSNET_CLIENT_SERVICE:=dummy}"',
    ': "${SSNET_CLIENT_CHECKPOINT:=2}"',
    *(f"SSNET_SLURM_{kind}_TIME=00:20:00 SSNET_SLURM_{kind}_MEM=512M SSNET_SLURM_{kind}_CPUS=1"
      for kind in ("BROKER", "WORKER", "CLIENT")),
    f"source {PROJECT}/slurm/ssnet.conf",
    "",
])


def docker(*args: str, timeout: float = 120, check: bool = True,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
                            input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"the multi-node cluster test cannot run: {reason}")
    pytest.skip(f"the multi-node cluster test is skipped: {reason}")


def ensure_images() -> None:
    """The Docker engine, the project's images (built under CI) and their SIFs (built when they changed)."""
    if shutil.which("docker") is None:
        pytest.skip("the multi-node cluster test is skipped: no `docker` command (it simulates the cluster with "
                    "Docker containers)")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        info = subprocess.CompletedProcess([], 1, "", "`docker info` timed out")
    if info.returncode != 0:
        pytest.skip(f"the multi-node cluster test is skipped: no Docker engine answers ({info.stderr.strip()[:200]})")
    missing = [image for image in IMAGES if docker("image", "inspect", image, check=False).returncode != 0]
    if missing and CI:
        build = subprocess.run([str(REPO / "docker" / "build.sh"), "broker", "client", "worker"], capture_output=True,
                               text=True, timeout=1800, check=False,
                               env={**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")})
        if build.returncode != 0:
            unavailable(f"docker/build.sh failed: {build.stderr[-2000:]}")
    elif missing:
        unavailable(f"images not built: {', '.join(missing)} (docker/build.sh broker client worker)")
    try:
        build = subprocess.run([str(REPO / "singularity" / "build.sh"), "--cpu", "--if-changed", "--out",
                                str(SIF_CACHE)], capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        unavailable("singularity/build.sh timed out")
    if build.returncode != 0:
        unavailable(f"singularity/build.sh could not build the SIF images: {build.stderr[-2000:]}")


@dataclass
class Cluster:
    """The simulated cluster of one test module: its name, shared directory and the user's commands."""

    name: str
    shared: Path
    submitted: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SSNET_CLUSTER": self.name, "SSNET_CLUSTER_NODES": "4",
                "SSNET_CLUSTER_SHARED": str(self.shared), "SSNET_CLUSTER_LABEL": "ssnet-test=multinode"}

    def script(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "scripts" / "slurm-cluster.sh"), command], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def user(self, *argv: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``argv`` as the user on the login node (the controller), in the home directory."""
        settings = [f"--env={key}={value}"
                    for key, value in {"SSNET_CONF": f"{HOME}/ssnet.conf", **(env or {})}.items()]
        return docker("exec", "-u", USER, "-w", HOME, f"--env=HOME={HOME}", *settings, f"{self.name}-ctl", *argv,
                      timeout=timeout, check=False)

    def submit(self, script: str, *args: str, node: str, kind: str) -> list[str]:
        """``singularity/slurm/<script>`` (its copy on the shared filesystem) with the jobs pinned to ``node``."""
        result = self.user(f"{PROJECT}/slurm/{script}", *args,
                           env={f"SSNET_SLURM_{kind.upper()}_EXTRA": f"--nodelist={node}"})
        assert result.returncode == 0, f"{script} failed: {result.stderr}"
        ids = result.stdout.split()
        self.submitted += ids
        return ids

    def path(self, inside: str) -> Path:
        """The host path of a path under /cluster."""
        return self.shared / Path(inside).relative_to("/cluster")

    def log(self, name: str) -> str:
        path = self.path(f"{HOME}/ssnet-run/logs/{name}.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.path(f"{HOME}/ssnet-run/logs").glob("*.log")))

    def tasks(self, job: str) -> dict[str, tuple[str, str, str]]:
        """{"<array>_<task>" or "<job>": (state, exit code, node)} from scontrol."""
        result = docker("exec", f"{self.name}-ctl", "scontrol", "show", "job", "-o", job, check=False)
        out: dict[str, tuple[str, str, str]] = {}
        for line in result.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "ArrayTaskId" in fields and not fields["ArrayTaskId"].isdigit():
                continue
            key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields else fields["JobId"]
            out[key] = (fields.get("JobState", "?"), fields.get("ExitCode", "?"), fields.get("BatchHost", "?"))
        return out

    def wait_finished(self, job: str, count: int, timeout: float) -> dict[str, tuple[str, str, str]]:
        tasks: dict[str, tuple[str, str, str]] = {}

        def finished() -> bool:
            tasks.clear()
            tasks.update(self.tasks(job))
            return sum(state in TERMINAL for state, _, _ in tasks.values()) >= count

        wait_until(finished, timeout, f"the {count} task(s) of job {job} to finish ({tasks}); {self.logs()}",
                   pace=0.5)
        return tasks

    def metrics(self, node: str, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """A node's metrics endpoint, read from this machine through the cluster's network."""
        address = docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{self.name}").IPAddress}}}}',
                         f"{self.name}-{node}").stdout.strip()
        with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}


@dataclass
class Run:
    """What the module's one run left behind."""

    cluster: Cluster
    inputs: dict[str, Path]  # name -> the file on the host
    clients: str
    broker: str
    workers: str
    done_at_cancel: float
    client_tasks: dict[str, tuple[str, str, str]]
    worker_tasks: dict[str, tuple[str, str, str]]
    killed: str  # the client job of the killed node
    resumed: str  # its resubmission
    chunks_at_kill: int
    seconds: float


@pytest.fixture(scope="module")
def run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    began = time.monotonic()
    ensure_images()
    root = tmp_path_factory.mktemp("multinode")
    cluster = Cluster(f"ssnet-mn-{os.getpid()}", root / "cluster")
    try:
        up = cluster.script("up")
        if up.returncode != 0:
            unavailable(f"scripts/slurm-cluster.sh up failed: {up.stderr[-2000:]}")
        # What a site puts on the shared filesystem: the job scripts, the SIF images, the inputs; the user's
        # configuration and lists in the home directory.
        project = cluster.path(PROJECT)
        shutil.copytree(REPO / "singularity" / "slurm", project / "slurm")
        (project / "images").mkdir()
        for sif in ("ssnet-broker.sif", "ssnet-client.sif", "ssnet-worker-cpu.sif"):
            shutil.copy(SIF_CACHE / sif, project / "images" / sif)
        sources = {"demo": REPO / "data" / "demo" / "ssnet_demo.root",
                   "sample512": shared / "data" / "larcv1" / "ssnet_sample_512.root",
                   "fullevent": shared / "data" / "larcv1" / "ssnet_sample_fullevent.root"}
        (project / "data").mkdir()
        inputs = {name: project / "data" / f"{name}.root" for name in sources}
        for name, source in sources.items():
            shutil.copy(source, inputs[name])
        home = cluster.path(HOME)
        (home / "ssnet.conf").write_text(SITE_CONF)
        (home / "list.txt").write_text(f"# one client job per line\n{PROJECT}/data/demo.root\n"
                                       f"{PROJECT}/data/sample512.root\n{PROJECT}/data/fullevent.root\n")
        (home / "list2.txt").write_text(f"{PROJECT}/data/sample512.root\n")  # 10 entries: 5 chunks
        for path in (home, *home.iterdir()):
            os.chown(path, UID, UID)

        # The clients first: they wait for the broker (the first of them makes the user's CURVE keys).
        (clients,) = cluster.submit("submit_clients", f"{HOME}/list.txt", f"{HOME}/out", node="c3", kind="client")
        wait_until(lambda: all("for a broker in endpoint file" in cluster.log(f"client-{clients}_{i}")
                               for i in range(3)), 240, f"the 3 client jobs to wait for the broker; {cluster.logs()}",
                   pace=0.5)
        (broker,) = cluster.submit("submit_broker", node="c1", kind="broker")
        (workers,) = cluster.submit("submit_workers", "2", node="c2", kind="worker")
        done: list[float] = [0.0]

        def requests_done() -> bool:
            try:
                samples = cluster.metrics("c1", 9560)
            except OSError:
                return False
            done[0] = sum(v for (name, _), v in samples.items() if name == "ssnet_broker_requests_total")
            return done[0] >= 2

        wait_until(requests_done, 240, f"requests to flow; {cluster.logs()}", pace=0.2)
        cancelled = cluster.user("scancel", f"{workers}_0")
        assert cancelled.returncode == 0, cancelled.stderr
        client_tasks = cluster.wait_finished(clients, 3, 240)
        worker_tasks = cluster.wait_finished(workers, 1, 60)

        # A node dies under a client: c4 is killed once the client has kept a checkpoint chunk, then the same
        # list is submitted again (to c3) and resumes from the chunks.
        (killed,) = cluster.submit("submit_clients", f"{HOME}/list2.txt", f"{HOME}/out2", node="c4", kind="client")
        chunks = cluster.path(f"{HOME}/out2/sample512_dummy.root.chunks")
        wait_until(lambda: any(chunks.glob("entries-*.root")), 240, f"a checkpoint chunk in {chunks}; {cluster.logs()}",
                   pace=0.1)
        docker("kill", f"{cluster.name}-c4")
        chunks_at_kill = len(list(chunks.glob("entries-*.root")))
        assert not cluster.path(f"{HOME}/out2/sample512_dummy.root").exists(), "the client finished before the kill"
        (resumed,) = cluster.submit("submit_clients", f"{HOME}/list2.txt", f"{HOME}/out2", node="c3", kind="client")
        cluster.wait_finished(resumed, 1, 240)
        yield Run(cluster, inputs, clients, broker, workers, done[0], client_tasks, worker_tasks, killed, resumed,
                  chunks_at_kill, time.monotonic() - began)
    finally:
        cluster.script("down", timeout=120)


@pytest.fixture(scope="module")
def local(run: Run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``ssnet-local --kind dummy`` of each input, on this machine without containers or Slurm."""
    out = tmp_path_factory.mktemp("local")
    for name, source in run.inputs.items():
        ssnet_local("--kind", "dummy", "--input", str(source), "--output", str(out / f"{name}.root"))
    return {name: out / f"{name}.root" for name in run.inputs}


# ------------------------------------------------------------------------------------------------ tests
def test_every_output_is_complete_and_identical_to_ssnet_local(run: Run, local: dict[str, Path]) -> None:
    assert {task: state[:2] for task, state in run.client_tasks.items()} == {
        f"{run.clients}_{i}": ("COMPLETED", "0:0") for i in range(3)}, run.cluster.logs()
    out = run.cluster.path(f"{HOME}/out")
    assert sorted(p.name for p in out.iterdir()) == [
        "demo_dummy.root", "fullevent_dummy.root", "sample512_dummy.root"]  # no chunks or temporary files left
    for name in run.inputs:
        assert dump(out / f"{name}_dummy.root") == dump(local[name]), name
        assert os.stat(out / f"{name}_dummy.root").st_uid == UID  # written by the user
    summaries = [re.search(r"wrote \S+: (\d+) events", run.cluster.log(f"client-{run.clients}_{i}")) for i in range(3)]
    assert sorted(int(m.group(1)) for m in summaries if m) == [2, 4, 10]


def test_services_ran_on_their_nodes_from_the_sif_images(run: Run) -> None:
    assert {node for _, _, node in run.client_tasks.values()} == {"c3"}
    assert {node for _, _, node in run.worker_tasks.values()} == {"c2"}
    assert run.cluster.tasks(run.broker)[run.broker][2] == "c1"
    endpoint = run.cluster.path(f"{HOME}/ssnet-run/broker.json").read_text()
    assert '"host": "c1"' in endpoint and "tcp://c1:5559" in endpoint  # advertised by its node's name
    broker_log = run.cluster.log(f"broker-{run.broker}")
    assert "runner apptainer" in broker_log and "broker up (CURVE)" in broker_log, broker_log
    for i in range(3):  # the clients found the broker on another node, through the file on the shared filesystem
        assert "found broker run" in run.cluster.log(f"client-{run.clients}_{i}")
    # On the broker's node: Apptainer's process for the image, and the service inside it, both the user's.
    ps = docker("exec", f"{run.cluster.name}-c1", "ps", "-eo", "uid=,args=").stdout
    assert re.search(rf"^\s*{UID}\s+Apptainer runtime parent", ps, re.MULTILINE), ps
    assert re.search(rf"^\s*{UID}\s+\S*python3 \S*/ssnet-broker ", ps, re.MULTILINE), ps


def test_clients_submitted_before_the_broker_waited_then_succeeded(run: Run) -> None:
    for i in range(3):
        log = run.cluster.log(f"client-{run.clients}_{i}")
        assert log.index("the file does not exist yet") < log.index("found broker run"), log


def test_the_users_keys_were_made_in_the_home_directory(run: Run) -> None:
    keys = run.cluster.path(f"{HOME}/.ssnet/keys")
    assert (os.stat(keys).st_mode & 0o777, os.stat(keys).st_uid) == (0o700, UID)
    for name in ("broker", "client", "worker"):
        secret = keys / "private" / f"{name}.key_secret"
        assert (os.stat(secret).st_mode & 0o777, os.stat(secret).st_uid) == (0o600, UID)


def test_cancelled_worker_lost_nothing(run: Run) -> None:
    assert run.done_at_cancel < EVENTS, "the worker was cancelled with work left"
    assert run.worker_tasks[f"{run.workers}_0"][0] == "CANCELLED"
    assert run.worker_tasks[f"{run.workers}_1"][0] == "RUNNING"
    cancelled = run.cluster.log(f"worker-{run.workers}_0")
    assert re.search(r"SIGTERM: (finishing the current request, then )?disconnecting", cancelled), cancelled
    # (the outputs are complete: test_every_output_is_complete_and_identical_to_ssnet_local)


def test_a_killed_node_lost_nothing_and_the_resubmission_resumed(run: Run, local: dict[str, Path]) -> None:
    assert run.chunks_at_kill >= 1
    assert run.cluster.tasks(run.resumed)[f"{run.resumed}_0"][:2] == ("COMPLETED", "0:0"), run.cluster.logs()
    out2 = run.cluster.path(f"{HOME}/out2")
    assert sorted(p.name for p in out2.iterdir() if not p.name.startswith(".")) == ["sample512_dummy.root"]
    # (no chunks left; the killed client's hidden temporary file stays: nothing runs on a node that dies)
    assert all(p.name.endswith(".tmp.root") for p in out2.iterdir() if p.name.startswith("."))
    assert dump(out2 / "sample512_dummy.root") == dump(local["sample512"])
    resumed = run.cluster.log(f"client-{run.resumed}_0")
    match = re.search(r"wrote \S+: (\d+) events.* after (\d+) from checkpoints", resumed)
    assert match is not None, resumed
    sent, kept = int(match.group(1)), int(match.group(2))
    assert kept >= 2 * run.chunks_at_kill and sent > 0 and sent + kept == 10, resumed  # only what was missing
    assert "on c3" in resumed and "on c4" in run.cluster.log(f"client-{run.killed}_0")


def test_status_on_the_login_node_reads_the_brokers_metrics(run: Run) -> None:
    result = run.cluster.user(f"{PROJECT}/slurm/status", "list.txt", "out")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "broker: tcp://c1:5559" in text and "broker metrics (http://c1:9560/metrics):" in text, text
    assert re.search(r'ssnet_broker_requests_total\{outcome="ok",service="dummy"\} \d', text), text
    assert re.search(rf"^\s*{run.broker}\s.*RUNNING.*c1$", text, re.MULTILINE), text
    assert "clients: 3 of 3 output(s) done" in text


def test_the_whole_run_is_quick(run: Run) -> None:
    assert run.seconds < 360, f"the multi-node run took {run.seconds:.0f} s"
