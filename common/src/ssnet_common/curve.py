"""CURVE: ZeroMQ's Curve25519 authentication and encryption for the broker's two sockets and its peers.

The broker holds a key pair and accepts only the public keys in two directories of authorized keys, one for
clients and one for workers (ZAP domains ``clients`` and ``workers``), so a client's key can never register a
worker.  Workers and clients hold a key pair of their own and the broker's public key.  Keys are ZeroMQ
certificate files (``zmq.auth``): ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600), made by
``ssnet-keys create DIR NAME``.  A secret key file others can read, or an authorized directory others can write,
is refused with a message saying so.

``ssnet-keys create DIR NAME`` writes a key pair; ``ssnet-keys show FILE`` prints the public key (Z85).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import zmq
import zmq.auth

from ssnet_common.config import ArgumentParser, EnvOptions, exit_status
from ssnet_common.errors import ConfigError

CLIENTS, WORKERS = "clients", "workers"  # the broker's ZAP domains, one per socket
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class CurveKeys:
    """A key pair (Z85 bytes) and, for a client or worker, the public key of the server it talks to."""

    public: bytes
    secret: bytes
    server: Optional[bytes] = None

    def client_side(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Make ``sock`` a CURVE client of ``server``."""
        if self.server is None:
            raise ConfigError("a CURVE client needs the broker's public key (--curve-server FILE)")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server

    def server_side(self, sock: zmq.Socket, domain: str) -> None:  # type: ignore[type-arg]
        """Make ``sock`` a CURVE server whose peers are checked in ZAP domain ``domain``."""
        sock.zap_domain = domain.encode()
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_secret(path: PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a secret key file; :class:`ConfigError` if it is missing, not ours, or readable by
    others."""
    where = Path(path)
    if not where.is_file():
        raise ConfigError(f"CURVE secret key file {str(where)!r} does not exist (ssnet-keys create DIR NAME makes one)")
    if _mode(where) & 0o077:
        raise ConfigError(f"CURVE secret key file {str(where)!r} can be read by others (mode {_mode(where):04o}): "
                          f"chmod 600 {where}")
    try:
        public, secret = zmq.auth.load_certificate(str(where))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CURVE secret key file {str(where)!r}: not a ZeroMQ certificate ({exc})") from None
    if not secret:
        raise ConfigError(f"{str(where)!r} holds no secret key: give the NAME.key_secret file")
    return public, secret


def load_public(path: PathLike) -> bytes:
    """The public key of a certificate file (public or secret)."""
    where = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(str(where))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CURVE public key file {str(where)!r}: cannot read it ({exc})") from None
    return public


def check_directory(path: PathLike, what: str) -> Path:
    """A directory of authorized public keys that only its owner can change."""
    where = Path(path)
    if not where.is_dir():
        raise ConfigError(f"{what} directory {str(where)!r} does not exist")
    if _mode(where) & 0o022:
        raise ConfigError(f"{what} directory {str(where)!r} can be written by others (mode {_mode(where):04o}): "
                          f"chmod go-w {where}")
    return where


def peer_keys(secret_file: Optional[PathLike], server_file: Optional[PathLike] = None,
              server_key: Optional[bytes] = None) -> Optional[CurveKeys]:
    """A client's or worker's keys from ``--curve-secret`` and ``--curve-server`` (or a server key found
    elsewhere, e.g. in the broker's endpoint file); None for no CURVE."""
    if secret_file is None:
        if server_file is not None:
            raise ConfigError("--curve-server needs --curve-secret (this process's own key pair)")
        return None
    public, secret = load_secret(secret_file)
    server = load_public(server_file) if server_file is not None else server_key
    if server is None:
        raise ConfigError("--curve-secret needs --curve-server (the broker's public key file)")
    return CurveKeys(public, secret, server)


def add_peer_options(options: EnvOptions) -> None:
    """``--curve-secret`` and ``--curve-server``, for a worker or a client of a CURVE broker."""
    options.add("--curve-secret", default=None,
                help="this process's CURVE secret key file (NAME.key_secret, from ssnet-keys create): talk to the "
                     "broker encrypted and authenticated; unset: in the clear")
    options.add("--curve-server", default=None, help="the broker's CURVE public key file (its NAME.key)")


def add_server_options(options: EnvOptions) -> None:
    """``--curve-secret``, ``--curve-clients`` and ``--curve-workers``, for the broker."""
    options.add("--curve-secret", default=None,
                help="the broker's CURVE secret key file (NAME.key_secret, from ssnet-keys create): encrypt both "
                     "sockets and admit only authorized keys; unset: in the clear")
    options.add("--curve-clients", default=None,
                help="directory of the public keys (NAME.key) of the clients allowed (needs --curve-secret)")
    options.add("--curve-workers", default=None,
                help="directory of the public keys (NAME.key) of the workers allowed (needs --curve-secret)")


def server_keys(secret_file: Optional[PathLike], clients: Optional[PathLike], workers: Optional[PathLike]
                ) -> tuple[Optional[CurveKeys], dict[str, Path]]:
    """The broker's key pair and its authorized-key directories by ZAP domain, from its options."""
    if secret_file is None:
        if clients is not None or workers is not None:
            raise ConfigError("--curve-clients and --curve-workers need --curve-secret (the broker's key pair)")
        return None, {}
    if clients is None or workers is None:
        raise ConfigError("--curve-secret needs --curve-clients DIR and --curve-workers DIR (the keys allowed)")
    public, secret = load_secret(secret_file)
    return CurveKeys(public, secret), {CLIENTS: check_directory(clients, "authorized client keys"),
                                       WORKERS: check_directory(workers, "authorized worker keys")}


def create_keys(directory: PathLike, name: str) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (mode 0600); never overwrite a key."""
    where = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"not a key name: {name!r}")
    public, secret = where / f"{name}.key", where / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists already: keys are never overwritten")
    where.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(where), name)
    finally:
        os.umask(old)
    os.chmod(made_secret, 0o600)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ssnet-keys``: create a CURVE key pair, or show a key file's public key."""
    parser = ArgumentParser(prog="ssnet-keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write DIR/NAME.key and DIR/NAME.key_secret (mode 0600)")
    create.add_argument("directory", help="where the key files go (made if missing)")
    create.add_argument("name", help="the key's name: a file name without .key")
    show = commands.add_parser("show", help="print the public key (Z85) of a key file")
    show.add_argument("file", help="a NAME.key or NAME.key_secret file")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            public, secret = create_keys(args.directory, args.name)
            sys.stdout.write(f"{public}\n{secret}\n")
        else:
            sys.stdout.write(load_public(args.file).decode("ascii") + "\n")
    except ConfigError as exc:
        sys.stderr.write(f"ssnet-keys: error: {exc}\n")
        return exit_status(exc)
    return 0


__all__ = ["CLIENTS", "WORKERS", "CurveKeys", "add_peer_options", "add_server_options", "check_directory",
           "create_keys", "load_public", "load_secret", "peer_keys", "server_keys"]


if __name__ == "__main__":
    sys.exit(main())
