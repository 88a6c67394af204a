"""Command-line configuration shared by the services.

Every option has a default that an ``SSNET_*`` environment variable may override; ``--help`` names the
variable and shows the default.  The environment is read only when a parser is built (inside ``main()``),
never at import time.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any, Callable, Mapping, Optional

from ssnet_common.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class EnvOptions:
    """Adds options to an ``argparse`` parser whose defaults come from the environment.

    ``EnvOptions(parser, prefix="SSNET_BROKER_").add("--frontend", default="tcp://*:5559", help=...)``
    reads ``SSNET_BROKER_FRONTEND``.  A malformed variable is reported with its name, like a bad option.
    """

    def __init__(
        self, parser: argparse.ArgumentParser, prefix: str, environ: Optional[Mapping[str, str]] = None,
        container: Optional[argparse._ActionsContainer] = None,
    ) -> None:
        self.parser = parser
        self.prefix = prefix
        self.environ = os.environ if environ is None else environ
        self._container = parser if container is None else container

    def group(self, title: str, description: Optional[str] = None) -> EnvOptions:
        """Options listed under their own heading in ``--help`` (same prefix, same parser)."""
        return EnvOptions(self.parser, self.prefix, self.environ,
                          self.parser.add_argument_group(title, description))

    def add(
        self,
        flag: str,
        *aliases: str,
        default: Any,
        help: str,
        type: Callable[[str], Any] = str,
        env: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        name = env or self.prefix + flag.lstrip("-").replace("-", "_").upper()
        if name in self.environ:
            raw = self.environ[name]
            try:
                default = type(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                self.parser.error(f"environment variable {name}={raw!r}: {exc}")
        shown = "unset" if default is None else str(default).replace("%", "%%")  # argparse formats help with %
        self._container.add_argument(
            flag, *aliases, default=default, type=type, help=f"{help} [env {name}; default: {shown}]", **kwargs
        )

    def add_flag(self, flag: str, *, default: bool = False, help: str, env: Optional[str] = None) -> None:
        """A boolean ``--flag/--no-flag`` option (environment: 1/0, true/false, yes/no, on/off)."""
        name = env or self.prefix + flag.lstrip("-").replace("-", "_").upper()
        if name in self.environ:
            try:
                default = parse_bool(self.environ[name])
            except ValueError as exc:
                self.parser.error(f"environment variable {name}: {exc}")
        self._container.add_argument(
            flag, default=default, action=_FlagAction, help=f"{help} [env {name}; default: {default}]"
        )


class _FlagAction(argparse.Action):
    """``--flag`` / ``--no-flag`` (like ``argparse.BooleanOptionalAction``, whose help differs across Pythons)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        negated = [f"--no-{flag[2:]}" for flag in option_strings if flag.startswith("--")]
        super().__init__([*option_strings, *negated], dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: Optional[str] = None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


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
        help="serve Prometheus metrics over HTTP on this port (0: no metrics endpoint)",
    )
    options.add(
        "--metrics-addr", default="0.0.0.0", help="address the metrics endpoint listens on",
    )


def configure_logging(level: str, name: str) -> None:
    """Configure the root logger once, for a service's ``main()``: timestamped lines on stderr."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


__all__ = [
    "ConfigError", "EnvOptions", "add_common_options", "configure_logging", "endpoint", "log_level",
    "non_negative_float", "non_negative_int", "parse_bool", "port_number", "positive_float", "positive_int",
]
