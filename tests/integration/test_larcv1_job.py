"""The LArCV1 client job end to end: ``ssnet-client`` (a subprocess) against a real broker and real workers.

Every check of the output goes through the reader (``ssnet-larcv1 dump --json``'s ``describe``) and is compared
with the shared manifest: what the genuine LArCV1 library reports for the sample files.  Waits are round trips
(MMI, metrics scrapes) or predicates on the filesystem, never sleeps.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssnet_client.base import ClientConfig
from ssnet_client.larcv1_cli import describe
from ssnet_client.larcv1_client import LArCV1JobConfig, SimpleLArCV1Client
from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import Frame
from ssnet_data.larcv1 import LArCV1Reader, LArCV1Writer
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images
from ssnet_worker.base import Worker, WorkerConfig

from .conftest import Stack, free_port, scrape, wait_until

SAMPLE_512 = "ssnet_sample_512.root"
SAMPLE_FULL = "ssnet_sample_fullevent.root"
RUN_TIMEOUT = 60.0  # bound on one client run; they take about a second


# ------------------------------------------------------------------------------------------------ helpers
@dataclass
class ClientRun:
    """One ``ssnet-client`` process; its stdout and stderr go to a log file in the stack's directory."""

    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")


_names = itertools.count()


def start_client(stack: Stack, *args: str) -> ClientRun:
    name = f"client-{next(_names)}"
    proc = stack.spawn(name, ["-m", "ssnet_client.cli", "--broker", stack.frontend, "--progress", "log", *args])
    return ClientRun(proc, stack.root / f"{name}.log")


def run_client(stack: Stack, *args: str) -> tuple[int, str]:
    """Run ``ssnet-client ARGS`` to the end: (exit code, what it printed)."""
    run = start_client(stack, *args)
    return run.wait(), run.text


def dump(path: Path) -> dict[str, Any]:
    """``ssnet-larcv1 dump PATH --json`` as a document, less the file name."""
    report = json.loads(json.dumps(describe(str(path))))
    del report["file"]
    return report


def entries(report: dict[str, Any], producer: str) -> list[dict[str, Any]]:
    return list(report["producers"][producer]["entries"])


def ids(items: Sequence[dict[str, Any]]) -> list[tuple[int, int, int]]:
    return [(e["run"], e["subrun"], e["event"]) for e in items]


def zeros_sha256(rows: int, cols: int) -> str:
    return hashlib.sha256(np.zeros((rows, cols), dtype="<f4").data).hexdigest()


def check_dummy(report: dict[str, Any], expected: Sequence[dict[str, Any]]) -> None:
    """One ``dummy`` image per entry: zeros shaped and described as the entry's first input image."""
    got = entries(report, "dummy")
    assert ids(got) == ids(expected)
    for out, want in zip(got, expected):
        assert out["n_images"] == 1, out["entry"]
        image, first = out["images"][0], want["images"][0]
        for key in ("plane", "rows", "cols", "meta_dump"):
            assert image[key] == first[key], (out["entry"], key)
        assert image["nonzero"] == 0
        assert image["sha256_f32_rowmajor"] == zeros_sha256(first["rows"], first["cols"])


def check_images(got: Sequence[dict[str, Any]], expected: Sequence[dict[str, Any]]) -> None:
    """The same events and, per image, the same pixels (sha256) and meta as the manifest."""
    assert ids(got) == ids(expected)
    for out, want in zip(got, expected):
        assert out["n_images"] == want["n_images"]
        for image, ref in zip(out["images"], want["images"]):
            for key in ("plane", "rows", "cols", "meta_dump", "sha256_f32_rowmajor", "nonzero"):
                assert image[key] == ref[key], (out["entry"], image["index"], key)


def leftovers(directory: Path, *expected: str) -> list[str]:
    """Names in ``directory`` other than ``expected``: a failed run must leave no output, temporary or not."""
    return sorted(p.name for p in directory.iterdir() if p.name not in expected)




def dummy_stack(stack: Stack) -> None:
    """A broker and 2 DummyLArCV1 workers, service ``dummy`` registered."""
    stack.broker()
    for _ in range(2):
        stack.worker("dummy")
    stack.wait_for_service("dummy")


def heard_by_broker(port: int) -> bool:
    """Whether the worker serving metrics on ``port`` has had a heartbeat from the broker (it is registered)."""
    try:
        return scrape(port).get(("ssnet_worker_heartbeats_total", (("direction", "received"),)), 0.0) > 0
    except OSError:
        return False


# -------------------------------------------------------------------------------------------- happy paths
def test_samples_through_two_dummy_workers(stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    dummy_stack(stack)
    for name in (SAMPLE_512, SAMPLE_FULL):
        output = tmp_path / f"{name}.out.root"
        code, text = run_client(stack, "--input", str(samples / name), "--output", str(output))
        assert code == 0, text
        n = len(manifest[name])
        assert re.search(rf"wrote {re.escape(str(output))}: {n} events in [\d.]+ s", text), text
        report = dump(output)
        assert report["producers_in_file"] == ["dummy"]
        check_dummy(report, manifest[name])


def test_batch_size_three_writes_what_batch_size_one_writes(stack: Stack, samples: Path, manifest: Any,
                                                            tmp_path: Path) -> None:
    dummy_stack(stack)
    single, batched = tmp_path / "b1.root", tmp_path / "b3.root"
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(single))
    assert code == 0, text
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(batched), "--batch-size", "3")
    assert code == 0, text
    assert "10 events" in text and "; 4 requests" in text, text  # batches of 3, 3, 3 and 1 events
    assert dump(batched) == dump(single)
    check_dummy(dump(batched), manifest[SAMPLE_512])


def test_copy_input_keeps_the_input_images(stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    dummy_stack(stack)
    output = tmp_path / "copy.root"
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(output), "--copy-input")
    assert code == 0, text
    report = dump(output)
    assert report["producers_in_file"] == ["dummy", "wire"]
    check_images(entries(report, "wire"), manifest[SAMPLE_512])
    check_dummy(report, manifest[SAMPLE_512])


def test_entry_range(stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    dummy_stack(stack)
    output = tmp_path / "range.root"
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(output),
                            "--start", "2", "--end", "7")
    assert code == 0, text
    assert "5 events" in text, text
    check_dummy(dump(output), manifest[SAMPLE_512][2:7])


@pytest.mark.slow
def test_worker_killed_mid_run(stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    stack.broker()
    ports = [free_port(), free_port()]
    workers = [stack.worker("dummy", "--dummy-delay", "0.3", metrics_port=port) for port in ports]
    wait_until(lambda: all(heard_by_broker(p) for p in ports), 20, "both workers registered")
    output = tmp_path / "killed.root"
    run = start_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(output), "--timeout", "30")

    def samples_of(port: int) -> tuple[float, float]:
        """(requests answered, busy) of one worker."""
        metrics = scrape(port)
        return (metrics.get(("ssnet_worker_requests_total", (("outcome", "ok"), ("service", "dummy"))), 0.0),
                metrics.get(("ssnet_worker_busy", (("service", "dummy"),)), 0.0))

    victim: list[int] = []  # index into workers, and how many requests it had answered

    def one_busy_after_a_reply() -> bool:
        assert run.proc.poll() is None, f"the client ended before a worker could be killed:\n{run.text}"
        for index, port in enumerate(ports):
            done, busy = samples_of(port)
            if done >= 1 and busy == 1:
                victim[:] = [index, int(done)]
                return True
        return False

    wait_until(one_busy_after_a_reply, 30, "a worker busy with its second request")
    index, answered = victim
    workers[index].send_signal(signal.SIGKILL)
    workers[index].wait(10)
    code = run.wait()
    assert code == 0, run.text
    check_dummy(dump(output), manifest[SAMPLE_512])
    survivor_done, _ = samples_of(ports[1 - index])
    # The survivor answered the rest, the killed request included (the victim may have finished one more
    # request between the scrape and the kill).
    assert survivor_done >= 10 - answered - 1


# ------------------------------------------------------------------------------------- ssnet-local (echo)
def run_local(*args: str, cwd: Path) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "ssnet_client.local", "--heartbeat-interval", "0.25", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False)
    return result.returncode, result.stdout.decode(errors="replace")


@pytest.mark.parametrize("name", [SAMPLE_512, SAMPLE_FULL])
def test_local_echo_round_trip(name: str, samples: Path, manifest: Any, tmp_path: Path) -> None:
    output = tmp_path / "echo.root"
    code, text = run_local("--kind", "echo", "--input", str(samples / name), "--output", str(output), cwd=tmp_path)
    assert code == 0, text
    report = dump(output)
    assert report["producers_in_file"] == ["wire"]
    check_images(entries(report, "wire"), manifest[name])


def test_local_without_arguments_runs_ssnet_on_the_demo(manifest: Any, tmp_path: Path) -> None:
    """The README's main job: SSNet workers (tiny model, default CPU engine) on the demo file; the output holds
    the scores of every event and says what produced them; a second run refuses to replace it without --force."""
    result = subprocess.run([sys.executable, "-m", "ssnet_client.local"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=300, check=False)
    text = result.stdout.decode(errors="replace")
    assert result.returncode == 0, text
    output = tmp_path / "out" / "ssnet_demo_ssnet.root"
    report = dump(output)
    assert report["producers_in_file"] == ["ssnet_shower", "ssnet_track"]
    expected = [(e["run"], e["subrun"], e["event"]) for e in manifest[SAMPLE_512][:4]]  # the demo: 4 entries
    for name in ("ssnet_shower", "ssnet_track"):
        got = entries(report, name)
        assert [(e["run"], e["subrun"], e["event"]) for e in got] == expected
        assert all(len(e["images"]) == 3 and any(i["nonzero"] for i in e["images"]) for e in got)
    planes = report["provenance"]["planes"]
    assert [(p["plane"], p["events"]) for p in planes] == [(0, 4), (1, 4), (2, 4)]
    assert {p["record"]["weights"]["file"] for p in planes} == {"tiny_uresnet.caffemodel"}
    again = subprocess.run([sys.executable, "-m", "ssnet_client.local"], cwd=tmp_path, capture_output=True,
                           timeout=120, check=False)
    assert again.returncode == 2 and b"exists: give --force to replace it" in again.stderr


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_after_the_client_was_killed(stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    stack.broker()
    stack.worker("dummy", "--dummy-delay", "0.3")
    stack.worker("dummy", service="fast")
    stack.wait_for_service("dummy")
    stack.wait_for_service("fast")
    sample = str(samples / SAMPLE_512)
    straight = tmp_path / "straight.root"
    code, text = run_client(stack, "--service", "fast", "--input", sample, "--output", str(straight))
    assert code == 0, text

    output = tmp_path / "resumed.root"
    chunks = tmp_path / "resumed.root.chunks"
    job = ["--input", sample, "--output", str(output), "--checkpoint", "3", "--window", "1"]
    run = start_client(stack, *job)

    def a_chunk_is_done() -> bool:
        assert run.proc.poll() is None, f"the client ended before a checkpoint chunk was written:\n{run.text}"
        return any(chunks.glob("entries-*.root"))

    wait_until(a_chunk_is_done, 30, "a finished checkpoint chunk")
    run.proc.send_signal(signal.SIGKILL)
    run.wait()
    assert not output.exists()
    assert leftovers(tmp_path, straight.name, chunks.name) == []
    left = sorted(p.name for p in chunks.iterdir())

    for options in (["--checkpoint", "3"], []):  # a leftover chunks dir is never overwritten nor ignored
        code, text = run_client(stack, "--input", sample, "--output", str(output), *options)
        assert code == 2, text
        assert f"{chunks} holds checkpoints of an earlier run: resume it or remove it" in text, text
        assert not output.exists()
        assert sorted(p.name for p in chunks.iterdir()) == left

    code, text = run_client(stack, *job, "--resume")
    assert code == 0, text
    match = re.search(r"resuming after (\d+) entries found in (\d+) checkpoint chunks", text)
    assert match, text
    resumed, files = int(match[1]), int(match[2])
    assert resumed == 3 * files and 3 <= resumed < 10, text
    assert f"{10 - resumed} events in" in text and f"after {resumed} from checkpoints" in text, text
    assert not chunks.exists()
    assert dump(output) == dump(straight)
    check_dummy(dump(output), manifest[SAMPLE_512])


# ------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def bad_inputs(samples: Path, tmp_path: Path) -> Path:
    """A directory with a text file, a truncated sample and a writable copy of the 512 sample."""
    (tmp_path / "text.root").write_text("this is not a ROOT file\n")
    (tmp_path / "truncated.root").write_bytes((samples / SAMPLE_512).read_bytes()[:100_000])
    shutil.copyfile(samples / SAMPLE_512, tmp_path / "copy.root")
    return tmp_path


BAD_INPUTS = {
    "missing file": (["--input", "{d}/missing.root"], "file '{d}/missing.root': no such file"),
    "not ROOT": (["--input", "{d}/text.root"], "file '{d}/text.root': not a ROOT file"),
    "truncated": (["--input", "{d}/truncated.root"], "file '{d}/truncated.root': truncated: "),
    "no such producer": (["--input", "{s}", "--producer", "nosuch"],
                         "producer 'nosuch': no Image2D producer 'nosuch' in the file (it has: wire)"),
    "output is the input": (["--input", "{d}/copy.root", "--output", "{d}/copy.root"],
                            "output '{d}/copy.root' is also an input"),
    "start past the end": (["--input", "{s}", "--start", "12"], "no entries to process: range [12, 10) of 10 entries"),
    "no output directory": (["--input", "{s}", "--output", "{d}/nowhere/out.root"],
                            "directory '{d}/nowhere' does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_without_output(case: str, stack: Stack, samples: Path, bad_inputs: Path) -> None:
    args, message = BAD_INPUTS[case]
    fill = {"d": str(bad_inputs), "s": str(samples / SAMPLE_512)}
    argv = [a.format(**fill) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(bad_inputs / "out.root")]
    before = {p.name: p.read_bytes() for p in bad_inputs.iterdir()}
    code, text = run_client(stack, *argv)  # fails before it would talk to a broker: none is started
    assert code == 2, text
    assert message.format(**fill) in text, text
    assert {p.name: p.read_bytes() for p in bad_inputs.iterdir()} == before  # nothing written, nothing changed


def test_service_without_workers_fails_after_the_service_wait(stack: Stack, samples: Path, tmp_path: Path) -> None:
    stack.broker()
    output = tmp_path / "none.root"
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(output),
                            "--service", "dumy", "--service-wait", "1")
    assert code == 1, text
    assert "waiting for a worker of service 'dumy' (up to 1 s)" in text, text
    assert "job failed, no output written" in text and "no worker of service 'dumy' within 1 s" in text, text
    assert leftovers(tmp_path) == []


def test_a_broker_that_does_not_answer_fails_the_job_at_once(samples: Path, tmp_path: Path) -> None:
    nowhere = f"ipc://{tmp_path}/nobody"
    result = subprocess.run(
        [sys.executable, "-m", "ssnet_client.cli", "--broker", nowhere, "--connect-timeout", "1", "--input",
         str(samples / SAMPLE_512), "--output", str(tmp_path / "o.root")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"broker at {nowhere} does not answer (no reply within 1 s)" in result.stderr
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- reply ids are checked
class WrongIdsWorker(Worker):
    """Answers like the dummy worker, but with every event number off by one."""

    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        first = decode_images(payload)[0]
        items = tuple((meta, EventId(i.run, i.subrun, i.event + 1)) for meta, i in first.items)
        return encode_images([ImageProduct("dummy", items, np.zeros(first.array.shape, dtype=np.float32))])


@pytest.fixture
def wrong_ids_service(stack: Stack) -> Iterator[str]:
    stack.broker()
    worker = WrongIdsWorker(WorkerConfig("wrongids", stack.backend, heartbeat_interval=stack.heartbeat))
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        stack.wait_for_service("wrongids")
        yield "wrongids"
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()


def test_reply_with_other_event_ids_fails_the_job(stack: Stack, wrong_ids_service: str, samples: Path,
                                                  tmp_path: Path) -> None:
    output = tmp_path / "wrong.root"
    config = LArCV1JobConfig(
        inputs=(str(samples / SAMPLE_512),), output=str(output), producers=("wire",), service=wrong_ids_service,
        broker=stack.frontend, client=ClientConfig(timeout=10),
    )
    with pytest.raises(ProtocolError, match=r"carries event ids \['\(5007,101,3002\)'\], sent \['\(5007,101,3001\)'\]"):
        SimpleLArCV1Client(config).run()
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------- regions
def test_regions_send_only_their_crops_and_write_whole_views_zero_outside(stack: Stack, samples: Path,
                                                                         tmp_path: Path) -> None:
    """Echo workers return each crop unchanged: the output is the input inside the boxes and zero outside, for
    boxes for all events, a box over the image's edge (clipped), and an event with boxes of its own."""
    source = samples / SAMPLE_FULL
    first, second = list(LArCV1Reader([str(source)], "wire"))
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({
        "all": {"0": [{"wires": [100, 612], "ticks": [3000, 6072]}],                 # rows 396-908, cols 100-612
                "2": [{"wires": [3000, 3500], "ticks": [2000, 9000]},                # rows 0-1008, cols 3000-3456
                      {"wires": [-50, 200], "ticks": [7968, 9600]}]},                # rows 0-80, cols 0-200
        "events": [{"run": second.run, "subrun": second.subrun, "event": second.event,
                    "planes": {"1": [{"wires": [2000, 2400], "ticks": [2400, 2460]}]}}],  # rows 998-1008
    }))
    stack.broker()
    stack.worker("echo")
    stack.wait_for_service("echo")
    output = tmp_path / "out.root"
    code, text = run_client(stack, "--service", "echo", "--input", str(source), "--output", str(output),
                            "--regions", str(regions))
    assert code == 0, text
    boxes = {(first.event, 0): [(396, 908, 100, 612)], (first.event, 2): [(0, 1008, 3000, 3456), (0, 80, 0, 200)],
             (second.event, 1): [(998, 1008, 2000, 2400)]}
    out = list(LArCV1Reader([str(output)], "wire"))
    assert [(e.run, e.subrun, e.event) for e in out] == [(e.run, e.subrun, e.event) for e in (first, second)]
    for source_entry, out_entry in zip((first, second), out):
        for image, got in zip(source_entry.images, out_entry.images):
            assert got.meta == image.meta
            want = np.zeros_like(image.pixels)
            for row0, row1, col0, col1 in boxes.get((source_entry.event, image.meta.plane), []):
                want[row0:row1, col0:col1] = image.pixels[row0:row1, col0:col1]
            np.testing.assert_array_equal(got.pixels, want)
    sent = re.search(r"sent ([\d.]+) MB", text)
    assert sent is not None and float(sent.group(1)) < 5.0, text  # the crops only, not 2 x 33 MB of views


@pytest.mark.parametrize(("content", "message"), [("", "is empty"), ("{}", "names no box")])
def test_empty_regions_file_is_a_clear_error(stack: Stack, samples: Path, tmp_path: Path, content: str,
                                            message: str) -> None:
    regions = tmp_path / "regions.json"
    regions.write_text(content)
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(tmp_path / "o.root"),
                            "--regions", str(regions))
    assert code == 2, text
    assert f"regions file '{regions}' {message}" in text
    assert leftovers(tmp_path, "regions.json") == []


# ------------------------------------------------------------------------------------------ poison events
def start_crashing_dummies(stack: Stack, poison: tuple[int, int, int], count: int = 4) -> None:
    """A broker that gives up on a request after one lost worker, and dummy workers that die on ``poison``."""
    stack.broker("--max-attempts", "1")
    for _ in range(count):
        stack.worker("dummy", "--dummy-crash-on", "/".join(map(str, poison)))
    stack.wait_for_service("dummy")


def test_a_poison_event_stops_the_job_naming_it_and_resume_finishes_without_it(
        stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    source = samples / SAMPLE_512
    entries = manifest[SAMPLE_512]
    poison = (entries[5]["run"], entries[5]["subrun"], entries[5]["event"])
    start_crashing_dummies(stack, poison)
    output = tmp_path / "out.root"
    job = ["--output", str(output), "--checkpoint", "2", "--window", "1", "--max-event-attempts", "2"]
    code, text = run_client(stack, "--input", str(source), *job)
    assert code == 1, text
    assert (f"event {poison[0]}/{poison[1]}/{poison[2]} (file {source}, entry 5) failed: service 'dummy'"
            in text), text
    assert "worker_lost" in text and "sending it again" in text  # one resubmission: 2 workers in all
    assert not output.exists()
    chunks = sorted(p.name for p in (tmp_path / "out.root.chunks").iterdir())
    assert chunks == ["entries-000000000-000000002.root", "entries-000000002-000000004.root"]

    cleaned = tmp_path / "cleaned.root"  # the input without the poison event: what the physicist does next
    reader = LArCV1Reader([str(source)], "wire")
    with LArCV1Writer(str(cleaned), ["wire"]) as writer:
        for entry in reader:
            if (entry.run, entry.subrun, entry.event) != poison:
                writer.copy_entry(entry)
    code, text = run_client(stack, "--input", str(cleaned), *job, "--resume")
    assert code == 0, text
    check_dummy(dump(output), entries[:5] + entries[6:])


def test_skipped_poison_event_is_listed_and_the_rest_written(stack: Stack, samples: Path, manifest: Any,
                                                            tmp_path: Path) -> None:
    entries = manifest[SAMPLE_512]
    poison = (entries[2]["run"], entries[2]["subrun"], entries[2]["event"])
    start_crashing_dummies(stack, poison)
    output = tmp_path / "out.root"
    code, text = run_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(output),
                            "--on-error", "skip", "--max-event-attempts", "2")
    assert code == 3, text
    check_dummy(dump(output), entries[:2] + entries[3:])  # every other event, in order, once
    failed = json.loads((tmp_path / "out.root.failed.json").read_text())
    assert [(e["run"], e["subrun"], e["event"], e["entry"]) for e in failed["skipped"]] == [(*poison, 2)]
    assert "worker_lost" in failed["skipped"][0]["error"]
    assert f"1 skipped: {poison[0]}/{poison[1]}/{poison[2]}" in text
    assert f"{len(entries)}/{len(entries)} events" in text  # skipped events count as behind the job: ETA 0


# ----------------------------------------------------------------------------------------------- signals
def test_sigterm_stops_keeps_the_checkpoint_and_the_logged_command_resumes(
        stack: Stack, samples: Path, manifest: Any, tmp_path: Path) -> None:
    stack.broker()
    stack.worker("dummy", "--dummy-delay", "0.2")
    stack.wait_for_service("dummy")
    output = tmp_path / "out.root"
    run = start_client(stack, "--input", str(samples / SAMPLE_512), "--output", str(output), "--checkpoint", "2",
                       "--window", "2")
    chunks = tmp_path / "out.root.chunks"

    def a_chunk_is_done() -> bool:
        assert run.proc.poll() is None, f"the client ended before a checkpoint chunk was written:\n{run.text}"
        return any(chunks.glob("entries-*.root"))

    wait_until(a_chunk_is_done, 30, "a finished checkpoint chunk")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 143, run.text
    assert "stopped by SIGTERM: the first" in run.text and not output.exists()
    command = re.search(r"to go on: (.*)", run.text)
    assert command is not None, run.text
    argv = shlex.split(command.group(1))
    assert argv[0] == "ssnet-client" and argv[-1] == "--resume"
    code, text = run_client(stack, *argv[1:])
    assert code == 0, text
    assert re.search(r"resuming after \d+ entries", text), text
    check_dummy(dump(output), manifest[SAMPLE_512])
