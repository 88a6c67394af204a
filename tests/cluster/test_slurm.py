"""The Slurm job scripts under a real Slurm: a single-node cluster on this machine (scripts/slurm-local.sh).

One run, as on the cluster but with the services run natively (``SSNET_RUNNER=native``, the project's
``.venv/bin`` commands): three client jobs are submitted first, while a stale endpoint file from a dead broker is
in place; then the broker job; then an array of two dummy workers (one fake GPU each).  Once requests flow, one
worker job is cancelled (``scancel``).  The tests then check what happened: every output complete and exact,
the early clients waited without trusting the stale file, the cancelled worker stopped cleanly and lost
nothing, each worker had its own GPU, and a rerun of ``submit_clients`` resubmits exactly the missing output.

Skipped, saying why, where Slurm cannot start (not root, slurm-wlm not installed); under ``CI=true`` the
helper installs slurm-wlm and munge first.  Waits poll predicates (files, ``scontrol``, metrics) with deadlines.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ssnet_common import rendezvous as rv
from ssnet_data.larcv1 import LArCV1Reader, list_image2d_producers

from ..integration.conftest import free_port, scrape, wait_until

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "singularity" / "slurm"
EVENTS = 4 + 10 + 2  # entries of the three inputs
TERMINAL = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE")


# ------------------------------------------------------------------------------------------------ Slurm
@pytest.fixture(scope="module")
def slurm_conf() -> str:
    """Start (or find) the single-node Slurm; its SLURM_CONF.  Skips, with the reason, where it cannot start."""
    if os.geteuid() != 0:
        pytest.skip("Slurm cannot start here: slurmd must run as root, and this test is not root")
    ci = os.environ.get("CI", "").lower() == "true"
    if not ci and not (shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged")):
        pytest.skip("Slurm cannot start here: slurm-wlm is not installed "
                    "(apt-get install slurm-wlm munge; with CI=true the test installs it)")
    try:
        result = subprocess.run([str(REPO / "scripts" / "slurm-local.sh")], capture_output=True, text=True,
                                env={**os.environ, "SLURM_LOCAL_INSTALL": "1" if ci else "0"},
                                timeout=400 if ci else 120, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("Slurm cannot start here: scripts/slurm-local.sh timed out")
    match = re.search(r"^export SLURM_CONF=(\S+)$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        pytest.skip(f"Slurm cannot start here: scripts/slurm-local.sh failed: {result.stderr.strip()[-600:]}")
    return match.group(1)


@dataclass
class Cluster:
    """The job environment and the Slurm commands of one test module."""

    env: dict[str, str]
    run_dir: Path
    submitted: list[str] = field(default_factory=list)

    def command(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def submit(self, script: str, *args: str) -> list[str]:
        """Run a submit_* script; the job ids it printed."""
        result = self.command(str(SLURM_DIR / script), *args)
        assert result.returncode == 0, f"{script} failed: {result.stderr}"
        ids = result.stdout.split()
        self.submitted += ids
        return ids

    def tasks(self, job: str) -> dict[str, tuple[str, str]]:
        """{"<job>" or "<array>_<task>": (state, exit code)} from scontrol (finished jobs stay for MinJobAge);
        the record of an array's tasks not started yet ("ArrayTaskId=1-2%50") is left out."""
        result = self.command("scontrol", "show", "job", "-o", job)
        out: dict[str, tuple[str, str]] = {}
        for line in result.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "ArrayTaskId" in fields and not fields["ArrayTaskId"].isdigit():
                continue
            key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields else fields["JobId"]
            out[key] = (fields.get("JobState", "?"), fields.get("ExitCode", "?"))
        return out

    def wait_finished(self, job: str, count: int, timeout: float) -> dict[str, tuple[str, str]]:
        tasks: dict[str, tuple[str, str]] = {}

        def finished() -> bool:
            tasks.clear()
            tasks.update(self.tasks(job))
            return sum(state in TERMINAL for state, _ in tasks.values()) >= count

        wait_until(finished, timeout, f"the {count} task(s) of job {job} to finish ({tasks}); {self.logs()}",
                   pace=0.2)
        return tasks

    def log(self, name: str) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.run_dir / "logs").glob("*.log")))

    def cancel_all(self) -> None:
        if not self.submitted:
            return
        self.command("scancel", *self.submitted)

        def gone() -> bool:
            result = self.command("squeue", "-h", "-o", "%i", "-j", ",".join(self.submitted))
            return result.returncode == 0 and not result.stdout.strip()

        wait_until(gone, 60, "the test's jobs to leave the queue", pace=0.2)


@dataclass
class Run:
    """What the module's one run left behind."""

    cluster: Cluster
    inputs: dict[str, Path]
    outdir: Path
    clients: str
    broker: str
    workers: str
    stale: rv.BrokerEndpoint
    broker_endpoint: rv.BrokerEndpoint
    done_at_cancel: float
    client_tasks: dict[str, tuple[str, str]]
    worker_tasks: dict[str, tuple[str, str]]
    gpus: int
    seconds: float


@pytest.fixture(scope="module")
def run(slurm_conf: str, shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    began = time.monotonic()
    root = tmp_path_factory.mktemp("slurm")
    inputs_dir = root / "in"
    inputs_dir.mkdir()
    sources = {"demo": REPO / "data" / "demo" / "ssnet_demo.root",
               "sample512": shared / "data" / "larcv1" / "ssnet_sample_512.root",
               "fullevent": shared / "data" / "larcv1" / "ssnet_sample_fullevent.root"}
    inputs = {name: inputs_dir / f"{name}.root" for name in sources}
    for name, source in sources.items():
        inputs[name].symlink_to(source)
    (root / "list.txt").write_text("# one client job per line\nin/demo.root\n\nin/sample512.root\nin/fullevent.root\n")
    run_dir, outdir = root / "run", root / "out"
    metrics = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSNET_")}
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%G"], env={**env, "SLURM_CONF": slurm_conf}, capture_output=True,
                           text=True, check=False).stdout
    gpus = 1 if "gpu:" in sinfo else 0
    env.update({
        "SLURM_CONF": slurm_conf, "PYTHONUNBUFFERED": "1",
        "SSNET_RUNNER": "native", "SSNET_SLURM_NATIVE_PATH": str(Path(sys.executable).parent),
        "SSNET_SLURM_RUN_DIR": str(run_dir), "SSNET_SLURM_JOB_PREFIX": f"ssnet-test-{os.getpid()}",
        "SSNET_SLURM_BROKER_WAIT": "120", "SSNET_SLURM_SERVICE_WAIT": "120", "SSNET_SLURM_WORKER_GPUS": str(gpus),
        "SSNET_SLURM_KEY_DIR": str(run_dir / "keys"),  # CURVE on (the default): the keys are made on first use
        **{f"SSNET_SLURM_{kind}_{key}": value for kind in ("BROKER", "WORKER", "CLIENT")
           for key, value in (("PARTITION", ""), ("TIME", "00:10:00"), ("MEM", "1G"), ("CPUS", "1"))},
        "SSNET_BROKER_FRONTEND": f"tcp://*:{free_port()}", "SSNET_BROKER_BACKEND": f"tcp://*:{free_port()}",
        "SSNET_BROKER_METRICS_PORT": str(metrics),
        "SSNET_BROKER_HEARTBEAT_INTERVAL": "0.5", "SSNET_WORKER_HEARTBEAT_INTERVAL": "0.5",
        "SSNET_WORKER_KIND": "dummy", "SSNET_WORKER_DUMMY_DELAY": "0.3", "SSNET_CLIENT_SERVICE": "dummy",
    })
    cluster = Cluster(env, run_dir)
    try:
        # A stale endpoint file: a broker that died without cleaning up (nothing listens on its port).
        stale = rv.BrokerEndpoint(run_id="stale0000000", host="127.0.0.1", frontend=f"tcp://127.0.0.1:{free_port()}",
                                  backend=f"tcp://127.0.0.1:{free_port()}", metrics_port=0, pid=1,
                                  started=time.time() - 3600)
        rv.write_endpoint_file(run_dir / "broker.json", stale)

        (clients,) = cluster.submit("submit_clients", str(root / "list.txt"), str(outdir))
        wait_until(lambda: all("it names broker run stale" in cluster.log(f"client-{clients}_{i}") for i in range(3)),
                   60, f"the 3 client jobs to find the stale file; {cluster.logs()}", pace=0.2)

        (broker,) = cluster.submit("submit_broker")
        found: list[rv.BrokerEndpoint] = []

        def published() -> bool:
            try:
                info = rv.read_endpoint_file(run_dir / "broker.json")
            except (OSError, rv.RendezvousError):
                return False
            found[:] = [info]
            return info.run_id != stale.run_id

        wait_until(published, 60, f"the broker's endpoint file; {cluster.logs()}", pace=0.1)

        (workers,) = cluster.submit("submit_workers", "2")
        done: list[float] = [0.0]

        def requests_done() -> bool:
            try:
                samples = scrape(metrics)
            except OSError:
                return False
            done[0] = sum(v for (name, _), v in samples.items() if name == "ssnet_broker_requests_total")
            return done[0] >= 2

        wait_until(requests_done, 90, f"requests to flow; {cluster.logs()}", pace=0.05)
        cancelled = cluster.command("scancel", f"{workers}_0")
        assert cancelled.returncode == 0, cancelled.stderr

        client_tasks = cluster.wait_finished(clients, 3, 120)
        worker_tasks = cluster.wait_finished(workers, 1, 60)
        yield Run(cluster, inputs, outdir, clients, broker, workers, stale, found[0], done[0], client_tasks,
                  worker_tasks, gpus, time.monotonic() - began)
    finally:
        cluster.cancel_all()


def check_output(source: Path, output: Path) -> None:
    """Complete and exact: every input entry once, in order, with its ids; one ``dummy`` image each, zeros shaped
    and described (meta) as the entry's first input image."""
    assert list_image2d_producers(output) == ["dummy"]
    expected, got = LArCV1Reader(source, "wire"), LArCV1Reader(output, "dummy")
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        assert (have.entry, have.run, have.subrun, have.event) == (want.entry, want.run, want.subrun, want.event)
        (image,) = have.images
        first = want.images[0]
        assert image.meta == first.meta
        assert image.pixels.shape == first.pixels.shape and not image.pixels.any()


# ------------------------------------------------------------------------------------------------ tests
def test_every_output_is_complete_and_exact(run: Run) -> None:
    assert run.client_tasks == {f"{run.clients}_{i}": ("COMPLETED", "0:0") for i in range(3)}, run.cluster.logs()
    assert sorted(p.name for p in run.outdir.iterdir()) == [
        "demo_dummy.root", "fullevent_dummy.root", "sample512_dummy.root"]  # no chunks or temporary files left
    for name, source in run.inputs.items():
        check_output(source, run.outdir / f"{name}_dummy.root")
    summaries = [re.search(r"wrote \S+: (\d+) events", run.cluster.log(f"client-{run.clients}_{i}")) for i in range(3)]
    assert sorted(int(m.group(1)) for m in summaries if m) == [2, 4, 10]


def test_clients_started_before_the_broker_waited_without_trusting_a_stale_file(run: Run) -> None:
    for i in range(3):
        log = run.cluster.log(f"client-{run.clients}_{i}")
        stale_at = log.index(f"it names broker run {run.stale.run_id[:12]}")
        found_at = log.index(f"found broker run {run.broker_endpoint.run_id[:12]}")
        assert stale_at < found_at and "does not answer" in log[stale_at:found_at]
    assert run.broker_endpoint.host == socket.gethostname()  # the broker's node, advertised by name
    assert run.broker_endpoint.frontend == run.cluster.env["SSNET_BROKER_FRONTEND"].replace("*", socket.gethostname())
    assert run.broker_endpoint.metrics_port == int(run.cluster.env["SSNET_BROKER_METRICS_PORT"])


def test_the_jobs_made_the_users_keys_and_ran_with_curve(run: Run) -> None:
    keys = run.cluster.run_dir / "keys"
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    for name in ("broker", "client", "worker"):
        assert stat.S_IMODE(os.stat(keys / "private" / f"{name}.key_secret").st_mode) == 0o600
    assert "broker up (CURVE)" in run.cluster.log(f"broker-{run.broker}")
    assert run.broker_endpoint.curve_public is not None


def test_cancelled_worker_stopped_cleanly_and_no_event_was_lost(run: Run) -> None:
    assert run.done_at_cancel < EVENTS, "the worker was cancelled with work left"
    assert run.worker_tasks[f"{run.workers}_0"][0] == "CANCELLED"
    assert run.worker_tasks[f"{run.workers}_1"][0] == "RUNNING"
    cancelled = run.cluster.log(f"worker-{run.workers}_0")
    assert re.search(r"SIGTERM: (finishing the current request, then )?disconnecting", cancelled), cancelled
    assert "without finishing" not in cancelled  # one SIGTERM reached it, not two
    survivor = run.cluster.log(f"worker-{run.workers}_1")
    answered = survivor.count("received ") + cancelled.count("received ")
    assert answered >= EVENTS  # every event answered (a request in hand at a death would be answered twice)


def test_each_worker_has_its_own_gpu(run: Run) -> None:
    if not run.gpus:
        pytest.skip("this Slurm offers no (fake) GPUs: mknod is not allowed here")
    logs = [run.cluster.log(f"worker-{run.workers}_{i}") for i in range(2)]
    devices = [re.findall(r"CUDA_VISIBLE_DEVICES=(\S+)", log) for log in logs]
    assert all(len(d) == 1 for d in devices) and devices[0] != devices[1], devices  # one GPU each, not the same


def test_rerunning_submit_clients_resubmits_exactly_what_is_missing(run: Run) -> None:
    list_file = run.outdir.parent / "list.txt"
    nothing = run.cluster.command(str(SLURM_DIR / "submit_clients"), str(list_file), str(run.outdir))
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert "all 3 line(s)" in nothing.stderr and "nothing to submit" in nothing.stderr
    (run.outdir / "demo_dummy.root").unlink()  # as if its job had failed
    (again,) = run.cluster.submit("submit_clients", str(list_file), str(run.outdir))
    assert run.cluster.wait_finished(again, 1, 120) == {f"{again}_0": ("COMPLETED", "0:0")}, run.cluster.logs()
    assert "in/demo.root" in run.cluster.log(f"client-{again}_0")
    check_output(run.inputs["demo"], run.outdir / "demo_dummy.root")


def test_status_reports_broker_jobs_and_outputs(run: Run) -> None:
    list_file = run.outdir.parent / "list.txt"
    result = run.cluster.command(str(SLURM_DIR / "status"), str(list_file), str(run.outdir))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"broker: {run.broker_endpoint.frontend}" in text
    assert 'ssnet_broker_workers{service="dummy",state="idle"}' in text  # gauges lag by up to a second
    assert re.search(r'ssnet_broker_requests_total\{outcome="ok",service="dummy"\} (1[6-9]|2\d)\.0', text), text
    assert re.search(rf"^\s*{run.broker}\s.*RUNNING", text, re.MULTILINE), text
    assert "clients: 3 of 3 output(s) done" in text


def test_the_whole_run_is_quick(run: Run) -> None:
    assert run.seconds < 150, f"the Slurm run took {run.seconds:.0f} s"
