"""Command-line configuration shared by the services.

Every option has a default that an ``SSNET_*`` environment variable may override; ``--help`` names the
variable and shows the default.  ConfigArgParse merges the environment into the command line (the command line
wins); :class:`EnvOptions` names each option's variable after one rule, ``<prefix><OPTION_NAME>``.  The
environment is read when the arguments are parsed (inside ``main()``), never at import time.

Lists: an option that takes several values takes them as words after the flag (``--input a.root b.root``), and
its variable holds the same words separated by spaces, quoted as in a shell (``SSNET_CLIENT_INPUT='a.root
"my file.root"'``).  Booleans are ``--flag``/``--no-flag`` and 1/0, true/false, yes/no, on/off in the
environment.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NoReturn, Optional

import configargparse

from ssnet_common.errors import ConfigError, DataError
from ssnet_common.protocol import METRICS_ADDR

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Exit statuses: the one convention of every command (``--help`` ends with it, the README lists it).
EXIT_OK = 0
EXIT_FAILURE = 1  # a failure at run time (broker unreachable, a worker error, a disk full)
EXIT_USAGE = 2  # bad options or bad input, model files included (argparse's own status for bad options)
EXIT_SKIPPED = 3  # finished, but events that failed for good were left out (--on-error skip)
EXIT_SIGNAL = 128  # + the signal's number: 130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM, scancel)
EXIT_STATUSES = ("exit status: 0 success; 1 a failure at run time; 2 bad options or input (model files included); "
                 "3 finished, but events that failed were left out; 130 interrupted (SIGINT), 143 terminated "
                 "(SIGTERM)")
SERVICE_EXIT_STATUSES = ("exit status: 0 stopped as asked (SIGTERM, SIGINT: the service finishes what it holds and "
                         "says goodbye); 1 a failure at run time; 2 bad options or input (model files included)")


def exit_status(error: BaseException) -> int:
    """The exit status for the error that ended a command: bad options or input (:class:`ConfigError`,
    :class:`DataError`, which includes unreadable LArCV1 files) 2, Ctrl-C 130, anything else 1."""
    if isinstance(error, (ConfigError, DataError)):
        return EXIT_USAGE
    if isinstance(error, KeyboardInterrupt):
        return EXIT_SIGNAL + signal.SIGINT
    return EXIT_FAILURE


def version_text(package: str) -> str:
    """``PACKAGE VERSION`` as installed (``--version``, provenance records), or ``PACKAGE (not installed)``."""
    from importlib import metadata

    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return f"{package} (not installed)"


class ArgumentParser(configargparse.ArgumentParser):
    """An ``argparse`` parser whose options may also come from environment variables (ConfigArgParse).

    ``environ`` replaces ``os.environ`` (tests).  A malformed variable is reported with its name and value.
    Every command gets ``--version`` (``package``: the distribution it belongs to) and, as the epilog of its
    ``--help``, the exit statuses (:data:`EXIT_STATUSES`, unless ``epilog`` says otherwise).
    """

    def __init__(self, *args: Any, environ: Optional[Mapping[str, str]] = None, package: str = "ssnet-common",
                 version: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("add_env_var_help", False)  # EnvOptions writes "[env NAME; default: X]" itself
        kwargs.setdefault("add_config_file_help", False)
        kwargs.setdefault("epilog", EXIT_STATUSES)
        super().__init__(*args, **kwargs)
        self.environ = environ
        self.package = package
        if version:  # sub-command parsers leave it to their parent
            self.add_argument("--version", action="version",
                              version=f"%(prog)s: {version_text(package)} (Python {sys.version.split()[0]})",
                              help="print the version and exit")

    def add_subparsers(self, **kwargs: Any) -> Any:
        """Sub-commands: parsers of this class, with the parent's package and epilog but no ``--version``."""
        commands = super().add_subparsers(**kwargs)
        parent = self

        class Sub(ArgumentParser):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("package", parent.package)
                kwargs.setdefault("epilog", parent.epilog)
                kwargs.setdefault("environ", parent.environ)
                super().__init__(*args, version=False, **kwargs)

        commands._parser_class = Sub
        return commands

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None, **kwargs: Any
                         ) -> Any:
        if self.environ is not None and kwargs.get("env_vars", os.environ) is os.environ:
            kwargs["env_vars"] = self.environ  # parse_args() passes os.environ itself
        return super().parse_known_args(args, namespace, **kwargs)

    def convert_item_to_command_line_arg(self, action: Optional[argparse.Action], key: str, value: Any
                                         ) -> list[str]:
        if isinstance(action, argparse.BooleanOptionalAction) and isinstance(value, str):
            try:
                value = "true" if parse_bool(value) else "false"
            except ValueError as exc:
                self.error(f"environment variable {key}={value!r}: {exc}")
        elif isinstance(value, str) and action is not None and action.nargs in ("+", "*"):
            try:
                value = shlex.split(value)  # a list in the environment: words, as on a command line
            except ValueError as exc:
                self.error(f"environment variable {key}={value!r}: {exc}")
        return list(super().convert_item_to_command_line_arg(action, key, value))

    def error(self, message: str) -> NoReturn:
        """argparse's error, naming the environment variable when the bad value came from one."""
        from_environment = self.get_source_to_settings_dict().get("environment_variables", {})
        for name, (action, value) in from_environment.items():
            if action is not None and message.startswith(f"argument {'/'.join(action.option_strings)}:"):
                message = f"environment variable {name}={value!r}: {message}"
                break
        super().error(message)
        raise AssertionError("argparse's error() exits")  # for type checkers: ConfigArgParse is untyped


class EnvOptions:
    """Adds options to an :class:`ArgumentParser`, each with an environment variable named after its flag.

    ``EnvOptions(parser, prefix="SSNET_BROKER_").add("--frontend", default="tcp://*:5559", help=...)``:
    ``SSNET_BROKER_FRONTEND`` sets ``--frontend``; ``--help`` shows the variable and the default.
    """

    def __init__(self, parser: ArgumentParser, prefix: str,
                 container: Optional[argparse._ActionsContainer] = None) -> None:
        self.parser = parser
        self.prefix = prefix
        self._container = parser if container is None else container

    def group(self, title: str, description: Optional[str] = None) -> EnvOptions:
        """Options listed under their own heading in ``--help`` (same prefix, same parser)."""
        return EnvOptions(self.parser, self.prefix, self.parser.add_argument_group(title, description))

    def exclusive(self) -> EnvOptions:
        """Options of which at most one may be given (on the command line or in the environment)."""
        return EnvOptions(self.parser, self.prefix, self._container.add_mutually_exclusive_group())

    def variable(self, flag: str) -> str:
        """The environment variable of option ``flag``: the prefix and the flag's name in capitals."""
        return self.prefix + flag.lstrip("-").replace("-", "_").upper()

    def add(self, flag: str, *aliases: str, default: Any, help: str, env: Optional[str] = None, **kwargs: Any
            ) -> None:
        """An option taking a value (``nargs="+"``: several words); ``aliases`` are older spellings."""
        name = env or self.variable(flag)
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(item) for item in default)
        else:
            shown = "unset" if default is None else str(default)
        shown = shown.replace("%", "%%")  # argparse formats help with %
        self._container.add_argument(
            flag, *aliases, default=default, env_var=name, help=f"{help} [env {name}; default: {shown}]", **kwargs
        )

    def add_flag(self, flag: str, *aliases: str, default: bool = False, help: str, env: Optional[str] = None
                 ) -> None:
        """A boolean ``--flag/--no-flag`` option (environment: 1/0, true/false, yes/no, on/off)."""
        name = env or self.variable(flag)
        self._container.add_argument(
            flag, *aliases, default=default, action=_Flag, env_var=name,
            help=f"{help} [env {name}; default: {default}]",
        )


class _Flag(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, with the help as given (Pythons before 3.13 append the default to it)."""

    def __init__(self, *args: Any, help: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, help=help, **kwargs)
        self.help = help


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use 1/0, true/false, yes/no, on/off)")


def _number(text: str, kind: Callable[[str], Any], ok: Callable[[Any], bool], needs: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {needs}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return float(_number(text, float, lambda v: 0 < v < math.inf, "a positive number"))


def non_negative_float(text: str) -> float:
    return float(_number(text, float, lambda v: 0 <= v < math.inf, "0 or a positive number"))


def positive_int(text: str) -> int:
    return int(_number(text, int, lambda v: v >= 1, "at least 1"))


def non_negative_int(text: str) -> int:
    return int(_number(text, int, lambda v: v >= 0, "0 or more"))


def port_number(text: str) -> int:
    """A TCP port, or 0 for "off"."""
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return value


def endpoint(text: str) -> str:
    """A ZeroMQ endpoint (``tcp://host:port``, ``ipc:///path``, ``inproc://name``)."""
    transport, sep, address = text.partition("://")
    if not sep or transport not in ("tcp", "ipc", "inproc") or not address:
        raise argparse.ArgumentTypeError(f"not a ZeroMQ endpoint (tcp://host:port or ipc:///path): {text!r}")
    return text


def log_level(text: str) -> str:
    value = text.upper()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return value


def add_common_options(options: EnvOptions) -> None:
    """``--log-level`` and ``--metrics-port``, which every service has."""
    options.add("--log-level", default="INFO", type=log_level, help="logging level (DEBUG, INFO, WARNING, ERROR)")
    options.add(
        "--metrics-port", default=0, type=port_number,
        help="serve Prometheus metrics (/metrics) and health (/livez, /readyz) over HTTP on this port (0: none)",
    )
    options.add(
        "--metrics-addr", default=METRICS_ADDR,
        help="address the metrics endpoint listens on (0.0.0.0: every interface, for a Prometheus elsewhere)",
    )


def configure_logging(level: str, name: str) -> None:
    """Configure the root logger once, for a service's ``main()``: timestamped lines on stderr."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_SIGNAL",
    "EXIT_SKIPPED",
    "EXIT_STATUSES",
    "EXIT_USAGE",
    "SERVICE_EXIT_STATUSES",
    "ArgumentParser",
    "ConfigError",
    "EnvOptions",
    "add_common_options",
    "configure_logging",
    "endpoint",
    "exit_status",
    "log_level",
    "non_negative_float",
    "non_negative_int",
    "parse_bool",
    "port_number",
    "positive_float",
    "positive_int",
    "version_text",
]
