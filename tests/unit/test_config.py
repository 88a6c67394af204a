"""Config helpers: options that ``SSNET_*`` environment variables (passed in) may set, through ConfigArgParse."""

from __future__ import annotations

import argparse
from typing import Any, Callable

import pytest

from ssnet_common.config import (
    ArgumentParser,
    EnvOptions,
    add_common_options,
    endpoint,
    log_level,
    non_negative_int,
    parse_bool,
    port_number,
    positive_float,
    positive_int,
)

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)


def make(environ: dict[str, str] | None = None, prefix: str = "SSNET_TEST_") -> EnvOptions:
    parser = ArgumentParser(
        prog="ssnet-test", formatter_class=lambda prog: argparse.HelpFormatter(prog, width=1000),
        environ={} if environ is None else environ,
    )
    return EnvOptions(parser, prefix)


def help_of(options: EnvOptions, dest: str) -> str:
    (action,) = [a for a in options.parser._actions if a.dest == dest]
    assert action.help is not None
    return action.help


# ------------------------------------------------------------------------------------------------ EnvOptions
def test_default_when_variable_unset() -> None:
    options = make({"SSNET_OTHER_TIMEOUT": "9"})
    options.add("--timeout", default=2.5, type=positive_float, help="seconds to wait")
    options.add("--frontend", default="tcp://*:5559", type=endpoint, help="where clients connect")
    args = options.parser.parse_args([])
    assert args.timeout == 2.5
    assert args.frontend == "tcp://*:5559"


def test_environment_overrides_default() -> None:
    options = make({"SSNET_TEST_TIMEOUT": "7.5", "SSNET_TEST_MAX_QUEUE": "12", "SSNET_TEST_FRONTEND": "ipc:///tmp/f"})
    options.add("--timeout", default=2.5, type=positive_float, help="seconds")
    options.add("--max-queue", default=100, type=positive_int, help="queue length")
    options.add("--frontend", default="tcp://*:5559", type=endpoint, help="endpoint")
    args = options.parser.parse_args([])
    assert (args.timeout, args.max_queue, args.frontend) == (7.5, 12, "ipc:///tmp/f")


def test_command_line_overrides_environment() -> None:
    options = make({"SSNET_TEST_MAX_QUEUE": "12"})
    options.add("--max-queue", default=100, type=positive_int, help="queue length")
    assert options.parser.parse_args(["--max-queue", "3"]).max_queue == 3


def test_explicit_env_name() -> None:
    options = make({"MY_VAR": "5", "SSNET_TEST_COUNT": "9"})
    options.add("--count", default=1, type=positive_int, help="count", env="MY_VAR")
    assert options.parser.parse_args([]).count == 5
    assert "[env MY_VAR; default: 1]" in help_of(options, "count")


def test_empty_variable_is_used() -> None:
    options = make({"SSNET_TEST_NAME": ""})
    options.add("--name", default="x", help="a name")
    assert options.parser.parse_args([]).name == ""


@pytest.mark.parametrize("environ", [{}, {"SSNET_TEST_TIMEOUT": "7"}], ids=["default", "from env"])
def test_help_names_variable_and_default(environ: dict[str, str]) -> None:
    options = make(environ)
    options.add("--timeout", default=2.5, type=positive_float, help="seconds to wait")
    assert help_of(options, "timeout") == "seconds to wait [env SSNET_TEST_TIMEOUT; default: 2.5]"
    assert "seconds to wait [env SSNET_TEST_TIMEOUT; default: 2.5]" in options.parser.format_help()
    assert "env var:" not in options.parser.format_help()  # ConfigArgParse's own note is not added twice


def test_help_shows_unset_for_none_default() -> None:
    options = make()
    options.add("--model-dir", default=None, help="where the weights are")
    assert help_of(options, "model_dir") == "where the weights are [env SSNET_TEST_MODEL_DIR; default: unset]"
    assert options.parser.parse_args([]).model_dir is None


def test_help_with_percent_in_value() -> None:
    options = make({"SSNET_TEST_NAME": "50%"})
    options.add("--name", default="5%", help="a name")
    assert options.parser.parse_args([]).name == "50%"
    assert "default: 5%]" in options.parser.format_help()


@pytest.mark.parametrize(
    ("kind", "raw"),
    [(positive_float, "0"), (positive_float, "soon"), (positive_int, "1.5"), (port_number, "70000"),
     (endpoint, "localhost:5555"), (log_level, "chatty")],
)
def test_malformed_variable_exits_naming_it(
    kind: Callable[[str], Any], raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = make({"SSNET_TEST_VALUE": raw})
    options.add("--value", default=None, type=kind, help="a value")
    with pytest.raises(SystemExit) as exc_info:
        options.parser.parse_args([])
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert "SSNET_TEST_VALUE" in err
    assert repr(raw) in err
    assert err.startswith("usage: ssnet-test")


def test_malformed_variable_with_builtin_type(capsys: pytest.CaptureFixture[str]) -> None:
    options = make({"SSNET_TEST_WORKERS": "two"})
    options.add("--workers", default=1, type=int, help="workers")
    with pytest.raises(SystemExit):
        options.parser.parse_args([])
    assert "environment variable SSNET_TEST_WORKERS='two'" in capsys.readouterr().err
    assert options.parser.parse_args(["--workers", "3"]).workers == 3  # the command line wins, unread variable


# ---------------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("0", False), ("true", True), ("false", False), ("yes", True), ("no", False), ("on", True),
     ("off", False), ("TRUE", True), (" Yes ", True), ("Off", False), ("", False)],
)
@pytest.mark.parametrize("default", [False, True])
def test_add_flag_from_environment(raw: str, value: bool, default: bool) -> None:
    options = make({"SSNET_TEST_VERBOSE": raw})
    options.add_flag("--verbose", default=default, help="talk more")
    assert options.parser.parse_args([]).verbose is value
    assert options.parser.parse_args(["--verbose"]).verbose is True
    assert options.parser.parse_args(["--no-verbose"]).verbose is False
    assert help_of(options, "verbose") == f"talk more [env SSNET_TEST_VERBOSE; default: {default}]"


@pytest.mark.parametrize("default", [False, True])
def test_add_flag_default(default: bool) -> None:
    options = make()
    options.add_flag("--dry-run", default=default, help="do nothing")
    assert options.parser.parse_args([]).dry_run is default
    assert help_of(options, "dry_run") == f"do nothing [env SSNET_TEST_DRY_RUN; default: {default}]"


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "tru", "enabled"])
def test_add_flag_bad_value(raw: str, capsys: pytest.CaptureFixture[str]) -> None:
    options = make({"SSNET_TEST_VERBOSE": raw})
    options.add_flag("--verbose", help="talk more")
    with pytest.raises(SystemExit) as exc_info:
        options.parser.parse_args([])
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert "SSNET_TEST_VERBOSE" in err
    assert repr(raw) in err


def test_add_flag_explicit_env() -> None:
    options = make({"FORCE_IT": "on"})
    options.add_flag("--force", help="force", env="FORCE_IT")
    assert options.parser.parse_args([]).force is True


def test_flag_alias_and_group() -> None:
    options = make({"SSNET_TEST_KIND_FAST": "no"})
    group = options.group("--kind x", "the x kind")
    group.add_flag("--kind-fast", "--fast", default=True, help="go fast")
    assert options.parser.parse_args([]).kind_fast is False
    assert options.parser.parse_args(["--fast"]).kind_fast is True
    assert options.parser.parse_args(["--no-fast"]).kind_fast is False
    assert "--kind x:\n  the x kind" in options.parser.format_help()


# ---------------------------------------------------------------------------------------------------- lists
@pytest.mark.parametrize(
    ("raw", "value"),
    [("a.root", ["a.root"]), ("a.root  b.root", ["a.root", "b.root"]), ("'my file.root' b", ["my file.root", "b"]),
     ('["x", "y"]', ["x", "y"])],
)
def test_list_from_environment_is_words(raw: str, value: list[str]) -> None:
    options = make({"SSNET_TEST_INPUT": raw})
    options.add("--input", default=["d"], nargs="+", help="files")
    assert options.parser.parse_args([]).input == value
    assert options.parser.parse_args(["--input", "c", "d"]).input == ["c", "d"]
    assert help_of(options, "input") == "files [env SSNET_TEST_INPUT; default: d]"


def test_list_default_and_typed_items(capsys: pytest.CaptureFixture[str]) -> None:
    options = make({"SSNET_TEST_PLANES": "0 x"})
    options.add("--planes", default=None, nargs="+", type=non_negative_int, help="planes")
    assert options.parser.parse_args(["--planes", "0", "2"]).planes == [0, 2]
    with pytest.raises(SystemExit):
        options.parser.parse_args([])
    assert "environment variable SSNET_TEST_PLANES='0 x'" in capsys.readouterr().err
    assert make().parser.parse_args([]) is not None


def test_list_with_unbalanced_quote(capsys: pytest.CaptureFixture[str]) -> None:
    options = make({"SSNET_TEST_INPUT": "'a.root"})
    options.add("--input", default=None, nargs="+", help="files")
    with pytest.raises(SystemExit):
        options.parser.parse_args([])
    assert "environment variable SSNET_TEST_INPUT=\"'a.root\"" in capsys.readouterr().err


def test_parse_bool_rejects() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("nope")


# ------------------------------------------------------------------------------------------------ the types
@pytest.mark.parametrize(("text", "value"), [("1", 1.0), ("0.001", 0.001), ("2.5", 2.5), ("1e-300", 1e-300)])
def test_positive_float_accepts(text: str, value: float) -> None:
    assert positive_float(text) == value


@pytest.mark.parametrize("text", ["0", "-0", "0.0", "-1", "nan", "NaN", "inf", "-inf", "Infinity", "x", ""])
def test_positive_float_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("42", 42), (" 7 ", 7)])
def test_positive_int_accepts(text: str, value: int) -> None:
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "x", ""])
def test_positive_int_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


def test_non_negative_int() -> None:
    assert non_negative_int("0") == 0
    assert non_negative_int("5") == 5
    for text in ("-1", "x", "0.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            non_negative_int(text)


@pytest.mark.parametrize("text", ["0", "1", "5555", "65535"])
def test_port_number_accepts(text: str) -> None:
    assert port_number(text) == int(text)


@pytest.mark.parametrize("text", ["-1", "65536", "100000", "http", "80.0", ""])
def test_port_number_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        port_number(text)


@pytest.mark.parametrize(
    "text", ["tcp://*:5559", "tcp://localhost:5555", "tcp://10.0.0.1:5555", "ipc:///tmp/ssnet.sock",
             "inproc://broker"],
)
def test_endpoint_accepts(text: str) -> None:
    assert endpoint(text) == text


@pytest.mark.parametrize(
    "text", ["localhost:5555", "http://x", "tcp://", "tcp:/x:5555", "udp://x:5555", "TCP://x:5555", "", "://x"],
)
def test_endpoint_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        endpoint(text)


@pytest.mark.parametrize(("text", "value"), [("debug", "DEBUG"), ("INFO", "INFO"), ("Warning", "WARNING")])
def test_log_level(text: str, value: str) -> None:
    assert log_level(text) == value


@pytest.mark.parametrize("text", ["trace", "CRITICAL", ""])
def test_log_level_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        log_level(text)


# ---------------------------------------------------------------------------------------- common options
def test_add_common_options_defaults() -> None:
    options = make(prefix="SSNET_BROKER_")
    add_common_options(options)
    args = options.parser.parse_args([])
    assert (args.log_level, args.metrics_port, args.metrics_addr) == ("INFO", 0, "127.0.0.1")  # not open to all


def test_add_common_options_from_environment() -> None:
    options = make({"SSNET_BROKER_LOG_LEVEL": "debug", "SSNET_BROKER_METRICS_PORT": "9100"}, prefix="SSNET_BROKER_")
    add_common_options(options)
    args = options.parser.parse_args([])
    assert (args.log_level, args.metrics_port) == ("DEBUG", 9100)
    assert options.parser.parse_args(["--log-level", "error"]).log_level == "ERROR"
