"""``ssnet-perf`` (a subprocess) against a real broker and real echo workers: the table on stdout, the CSV, the
error column, and the exit statuses of bad options, bad input and a broker that is not there.

Readiness is an MMI round trip (the Stack helper), never a sleep; every process is stopped in ``finally`` (the
``stack`` fixture)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, Stack

RUN_TIMEOUT = 120.0
DEMO = REPO / "data" / "demo" / "ssnet_demo.root"


def perf(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssnet_client.perf", *argv], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, cwd=cwd, check=False)


def table_rows(stdout: str) -> list[list[str]]:
    """The table's data lines (after the header), as words."""
    lines = stdout.splitlines()
    assert lines and lines[0].split()[0] == "concurrency", stdout
    return [line.split() for line in lines[1:] if line.strip()]


def test_sweep_against_echo_workers(stack: Stack, tmp_path: Path) -> None:
    stack.broker()
    for _ in range(2):
        stack.worker("echo")
    stack.wait_for_service("echo")
    out = tmp_path / "out.csv"

    result = perf("--broker", stack.frontend, "--service", "echo", "--concurrency", "1", "4", "--requests", "20",
                  "--shape", "3", "64", "64", "--csv", str(out))

    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["1", "4"]
    assert all(row[1:4] == ["20", "20", "0"] for row in rows)  # requests, events, errors
    with out.open(newline="") as file:
        table = list(csv.DictReader(file))
    assert [int(r["concurrency"]) for r in table] == [1, 4]
    for r in table:
        assert (int(r["requests"]), int(r["errors"])) == (20, 0)
        assert float(r["events_per_s"]) > 0 and float(r["mb_per_s"]) > 0 and float(r["seconds"]) > 0
        assert 0 < float(r["p50_ms"]) <= float(r["p90_ms"]) <= float(r["p99_ms"])
    assert "Traceback" not in result.stderr

    # the events of a LArCV1 file, cycled: the echo carries their own event ids back
    result = perf("--broker", stack.frontend, "--service", "echo", "--concurrency", "2", "--requests", "6",
                  "--warmup", "2", "--input", str(DEMO), "--producer", "wire")
    assert result.returncode == 0, result.stderr
    assert [row[:4] for row in table_rows(result.stdout)] == [["2", "6", "6", "0"]]


def test_error_replies_fill_the_error_column(stack: Stack) -> None:
    stack.broker()
    stack.worker("sleep")  # wants a number of seconds in frame 0: an image message gets an error reply
    stack.wait_for_service("sleep")

    result = perf("--broker", stack.frontend, "--service", "sleep", "--concurrency", "2", "--requests", "5",
                  "--warmup", "0", "--shape", "1", "8", "8")

    assert result.returncode == 1, result.stderr
    assert [row[:4] for row in table_rows(result.stdout)] == [["2", "0", "0", "5"]]
    assert result.stderr.count("error reply:") == 1, result.stderr  # logged once, counted five times
    assert "5 measured request(s) failed" in result.stderr


def test_no_broker_is_a_run_time_failure(tmp_path: Path) -> None:
    result = perf("--broker", f"ipc://{tmp_path}/nobody", "--connect-timeout", "0.5", "--shape", "1", "8", "8")
    assert result.returncode == 1
    assert "does not answer" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["--shape", "3", "0", "5"], "argument --shape: must be at least 1, got '0'"),
    (["--shape", "3", "64"], "--shape: takes three numbers"),
    (["--occupancy", "2"], "must be a fraction between 0 and 1"),
    (["--input", "{text}"], "ROOT file"),
    (["--input", "{missing}"], "does not exist"),
])
def test_bad_options_and_input_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a ROOT file\n")
    argv = [a.format(text=text, missing=tmp_path / "missing.root") for a in argv]
    # no broker at this endpoint: the options and the input are checked before any connection
    result = perf("--broker", f"ipc://{tmp_path}/nobody", "--connect-timeout", "0.5", *argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
