"""One convention for every command, checked as a user meets it (real processes; the client commands open
sockets): ``--version``; the exit statuses in every ``--help`` (0 ok, 1 run-time failure, 2 bad options or
input, 3 skipped events, 130/143 interrupted); an existing output refused unless ``--force``; input errors in
the user's words."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

DEMO = REPO / "data" / "demo" / "ssnet_demo.root"
TINY = REPO / "models" / "tiny"
BIN = Path(sys.executable).parent
NOWHERE = "tcp://127.0.0.1:9"  # nothing listens there: a job that gets past its checks fails to connect (exit 1)

# command, its package, whether it is a service (exits 0 when stopped as asked) or a job
COMMANDS = [
    ("ssnet-broker", "ssnet-broker", True),
    ("ssnet-worker", "ssnet-worker", True),
    ("ssnet-client", "ssnet-client", False),
    ("ssnet-local", "ssnet-client", False),
    ("ssnet-larcv1", "ssnet-client", False),
    ("ssnet-perf", "ssnet-client", False),
    ("ssnet-infer", "ssnet-worker", False),
    ("ssnet-export", "ssnet-worker", False),
    ("ssnet-keys", "ssnet-common", False),
]


def run(*argv: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSNET_")}
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, check=False)


@pytest.mark.parametrize(("command", "package", "service"), COMMANDS)
def test_version_help_epilog_and_bad_options(command: str, package: str, service: bool) -> None:
    version = run(command, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"{command}: {package} 0.") and "Python 3." in version.stdout
    helped = run(command, "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert "exit status: 0" in text and "2 bad options or input" in text
    if service:
        assert "0 stopped as asked" in text
    else:
        assert "3 finished, but events that failed were left out" in text and "143 terminated (SIGTERM)" in text
    sub = {"ssnet-larcv1": ["dump", str(DEMO)], "ssnet-keys": ["show", "x.key"]}.get(command, [])
    bad = run(command, *sub, "--no-such-option")
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr, bad.stderr


def output_commands(out: Path) -> dict[str, list[str]]:
    """Each command that writes an output file, writing ``out``: past the output check it fails in another way
    (no broker, or no input), which shows that ``--force`` let it through."""
    npy = out.parent / "in.npy"
    return {
        "ssnet-client": ["ssnet-client", "--broker", NOWHERE, "--connect-timeout", "0.5", "--input", str(DEMO),
                         "--output", str(out)],
        "ssnet-local": ["ssnet-local", "--input", str(out.parent / "missing.root"), "--output", str(out)],
        "ssnet-larcv1 show": ["ssnet-larcv1", "show", str(out.parent / "missing.root"), "-o", str(out)],
        "ssnet-infer": ["ssnet-infer", "--prototxt", str(TINY / "tiny_uresnet.prototxt"), "--weights",
                        str(TINY / "tiny_uresnet.caffemodel"), "--input", str(npy), "--output", str(out)],
        "ssnet-export": ["ssnet-export", "--prototxt", str(out.parent / "missing.prototxt"), "--weights",
                         str(TINY / "tiny_uresnet.caffemodel"), "-o", str(out)],
    }


@pytest.mark.parametrize("name", ["ssnet-client", "ssnet-local", "ssnet-larcv1 show", "ssnet-infer",
                                  "ssnet-export"])
def test_an_existing_output_is_refused_unless_forced(name: str, tmp_path: Path) -> None:
    out = tmp_path / "result.out"
    out.write_bytes(b"the user's earlier result")
    argv = output_commands(out)[name]
    refused = run(*argv)
    assert refused.returncode == 2, refused.stderr
    assert "exists: give --force to replace it" in refused.stderr
    assert out.read_bytes() == b"the user's earlier result"
    forced = run(*argv, "--force")
    assert "exists" not in forced.stderr
    assert forced.returncode in (1, 2), forced.stderr  # it went on, and failed for the reason set up
    assert out.read_bytes() == b"the user's earlier result"  # nothing half-written over it


@pytest.mark.parametrize(("content", "message"), [
    (b"not ROOT at all\n", "not a ROOT file"),
    (None, "a directory, not a file"),
    ("truncated", "truncated: 100,000 of {size:,} bytes"),
])
@pytest.mark.parametrize("command", ["ssnet-client", "ssnet-larcv1"])
def test_input_errors_in_the_users_words(command: str, content: bytes | str | None, message: str,
                                        tmp_path: Path) -> None:
    source = tmp_path / "in.root"
    if content is None:
        source.mkdir()
    elif content == "truncated":
        source.write_bytes(DEMO.read_bytes()[:100_000])
    else:
        assert isinstance(content, bytes)
        source.write_bytes(content)
    argv = (["ssnet-client", "--broker", NOWHERE, "--input", str(source), "--output", str(tmp_path / "o.root")]
            if command == "ssnet-client" else ["ssnet-larcv1", "dump", str(source)])
    result = run(*argv)
    assert result.returncode == 2, result.stderr
    assert message.format(size=DEMO.stat().st_size) in result.stderr
    assert "Chunk" not in result.stderr and "FSSpec" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.root").exists()


def test_a_batch_worker_given_a_file_that_is_not_root_exits_2(tmp_path: Path) -> None:
    source = tmp_path / "notes.root"
    source.write_text("a text file\n")
    result = run("ssnet-worker", "--kind", "batch", "--broker", NOWHERE, "--batch-input", str(source))
    assert result.returncode == 2, result.stderr
    assert "not a ROOT file" in result.stderr
