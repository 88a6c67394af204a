"""Who may talk to a CURVE broker: ZAP (ZeroMQ RFC 27) answers from directories of authorized public keys.

With CURVE on, libzmq asks the ZAP handler (a REP socket at ``inproc://zeromq.zap.01`` in the broker's context)
about every peer that completes a CURVE handshake: the request names the socket's domain (``clients`` or
``workers``) and the peer's public key.  :class:`KeyRing` holds each domain's authorized keys, read from its
directory; a key it does not know makes it read the directory again (at most once a second), so adding a key
file admits a new client or worker without a restart, and removing one refuses it from then on.

By hand against RFC 27 rather than ``zmq.auth.Authenticator``: pyzmq 25 turned that class's handler into a
coroutine, and the broker image runs Debian's pyzmq 24; the broker's own poll loop drives this one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import zmq.auth
from zmq.utils import z85

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
RELOAD_PERIOD = 1.0  # seconds between re-reads of a directory when unknown keys knock


class KeyRing:
    """The authorized public keys (Z85) of each ZAP domain, from one directory per domain."""

    def __init__(self, directories: dict[str, Path], clock: Callable[[], float],
                 always: frozenset[bytes] | set[bytes] = frozenset()) -> None:
        self.directories = directories
        self.clock = clock
        self.always = set(always)  # keys admitted in every domain (the broker's own, for its self-check)
        self.keys: dict[str, set[bytes]] = {}
        self.read_at: dict[str, float] = {}
        for domain in directories:
            self._read(domain)

    def _read(self, domain: str) -> None:
        try:
            certificates = zmq.auth.load_certificates(str(self.directories[domain]))
        except (OSError, ValueError) as exc:  # a directory gone or a file half-written: keep what was known
            log.error("cannot read the authorized keys of %s in %s: %s", domain, self.directories[domain], exc)
            return
        self.keys[domain] = {bytes(key) for key in certificates}
        self.read_at[domain] = self.clock()

    def allows(self, domain: str, key: bytes) -> bool:
        """Whether public key ``key`` (Z85) may connect in ``domain``; an unknown key re-reads the directory."""
        if domain not in self.directories:
            return False
        if key in self.always:
            return True
        if key not in self.keys.get(domain, set()) and self.clock() - self.read_at.get(domain, 0.0) >= RELOAD_PERIOD:
            self._read(domain)
        return key in self.keys.get(domain, set())


def answer(request: Sequence[bytes], ring: KeyRing) -> tuple[Optional[list[bytes]], Optional[str]]:
    """The ZAP reply to ``request`` (None if it cannot be answered at all) and, for a refusal, why (to log)."""
    if len(request) < 6:
        return None, f"malformed ZAP request ({len(request)} frames)"
    version, request_id, domain, address, _identity, mechanism = request[:6]
    credentials = request[6:]

    def reply(code: bytes, text: bytes, user: bytes = b"") -> list[bytes]:
        return [ZAP_VERSION, request_id, code, text, user, b""]

    if version != ZAP_VERSION:
        return reply(b"400", b"unsupported ZAP version"), f"ZAP version {version!r}"
    side = domain.decode("ascii", "replace")
    peer = address.decode("ascii", "replace") or "?"
    if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
        return reply(b"400", b"CURVE only"), f"{side} connection from {peer}: mechanism {mechanism!r}, not CURVE"
    key = z85.encode(credentials[0])
    if not ring.allows(side, key):
        return reply(b"400", b"unknown key"), f"{side} connection from {peer}: key {key.decode()} is not authorized"
    return reply(b"200", b"OK", key), None


__all__ = ["ZAP_ENDPOINT", "KeyRing", "answer"]
