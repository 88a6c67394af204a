"""Every command explains every option, and the environment variable that sets its default, in --help."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from ssnet_broker.cli import build_parser as broker_parser
from ssnet_broker.cli import main as broker_main
from ssnet_client.cli import build_parser as client_parser
from ssnet_client.local import build_parser as local_parser
from ssnet_client.perf import build_parser as perf_parser
from ssnet_worker.cli import build_parser as worker_parser
from ssnet_worker.export import build_parser as export_parser
from ssnet_worker.infer import build_parser as infer_parser

PARSERS = {
    "ssnet-broker": broker_parser,
    "ssnet-worker": worker_parser,
    "ssnet-client": client_parser,
    "ssnet-local": local_parser,
    "ssnet-infer": infer_parser,
    "ssnet-export": export_parser,
    "ssnet-perf": perf_parser,
}
PREFIXES = {"ssnet-broker": "SSNET_BROKER_", "ssnet-worker": "SSNET_WORKER_", "ssnet-client": "SSNET_CLIENT_",
            "ssnet-local": "SSNET_LOCAL_", "ssnet-infer": "SSNET_INFER_", "ssnet-export": "SSNET_EXPORT_",
            "ssnet-perf": "SSNET_PERF_"}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_has_help_and_names_its_variable(command: str) -> None:
    parser = PARSERS[command]()
    for action in options(parser):
        assert action.help and len(action.help) > 15, action.option_strings
        long = next(s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-"))
        variable = PREFIXES[command] + long[2:].replace("-", "_").upper()
        assert f"[env {variable}; default: " in action.help, (command, long, action.help)
    assert parser.format_help()  # formats without error (e.g. no stray % in defaults)


def test_broker_option_set_that_users_scripts_rely_on() -> None:
    args = broker_parser().parse_args([
        "--frontend", "tcp://*:6000", "--backend", "ipc:///tmp/b", "--heartbeat-interval", "0.5",
        "--heartbeat-liveness", "5", "--queue-timeout", "12.5", "--metrics-port", "9100",
    ])
    assert (args.frontend, args.backend, args.heartbeat_interval, args.heartbeat_liveness, args.queue_timeout,
            args.metrics_port) == ("tcp://*:6000", "ipc:///tmp/b", 0.5, 5, 12.5, 9100)
    defaults = broker_parser().parse_args([])
    assert (defaults.frontend, defaults.backend) == ("tcp://*:5559", "tcp://*:5560")


def test_broker_options_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"FRONTEND": "tcp://*:7000", "BACKEND": "tcp://*:7001", "HEARTBEAT_INTERVAL": "0.25",
                        "HEARTBEAT_LIVENESS": "4", "QUEUE_TIMEOUT": "3", "METRICS_PORT": "9200"}.items():
        monkeypatch.setenv(f"SSNET_BROKER_{name}", value)
    args = broker_parser().parse_args([])
    assert (args.frontend, args.backend, args.heartbeat_interval, args.heartbeat_liveness, args.queue_timeout,
            args.metrics_port) == ("tcp://*:7000", "tcp://*:7001", 0.25, 4, 3.0, 9200)


def test_bad_environment_value_is_a_clear_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSNET_BROKER_HEARTBEAT_INTERVAL", "soon")
    with pytest.raises(SystemExit) as exc:
        broker_main([])
    assert exc.value.code == 2
    assert "SSNET_BROKER_HEARTBEAT_INTERVAL='soon'" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["ssnet_broker", "ssnet_worker", "ssnet_client.cli", "ssnet_client.local",
                                    "ssnet_client.larcv1_cli", "ssnet_client.perf"])
def test_help_runs_as_a_command(module: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_worker_help_groups_each_kinds_options_under_its_heading() -> None:
    text = worker_parser().format_help()
    listed = text.index("--kind dummy:")  # the usage lines come first: look in the listing after them
    for kind, option in (("dummy", "--dummy-delay"), ("ssnet", "--ssnet-max-batch"),
                         ("batch", "--batch-shard-count")):
        assert text.index(f"--kind {kind}:") < text.index(f"\n  {option}", listed), (kind, option)
    assert text.index("--kind ssnet:") < text.index("\n  --ssnet-threshold THRESHOLD, --threshold", listed) \
        < text.index("--kind batch:")


def test_every_kind_option_carries_its_kinds_prefix() -> None:
    """Each kind's options are named after it (the ssnet kind's older names stay as aliases)."""
    parser = worker_parser()
    for group in parser._action_groups:
        if group.title and group.title.startswith("--kind "):
            kind = group.title.split()[1]
            for action in group._group_actions:
                assert action.option_strings[0].startswith(f"--{kind}-"), action.option_strings
                assert action.env_var.startswith(f"SSNET_WORKER_{kind.upper()}_"), action.env_var  # type: ignore[attr-defined]


def test_old_ssnet_spellings_still_parse() -> None:
    args = worker_parser().parse_args(["--threshold", "3", "--planes", "0", "2", "--no-preprocess",
                                       "--weights", "a.caffemodel", "b.caffemodel"])
    assert (args.ssnet_threshold, args.ssnet_planes, args.ssnet_preprocess) == (3.0, [0, 2], False)
    assert args.ssnet_weights == ["a.caffemodel", "b.caffemodel"]
