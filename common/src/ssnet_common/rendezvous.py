"""Rendezvous through a shared filesystem: the broker says where it listens, workers and clients wait for it.

On a batch cluster the broker, the workers and the clients are separate jobs that start in any order on nodes
nobody knows in advance.  ``ssnet-broker --endpoint-file PATH`` writes an *endpoint file* once it answers on its
frontend; ``ssnet-worker --broker-file PATH`` and ``ssnet-client --broker-file PATH`` wait for that file (up to
``--broker-wait`` seconds), check it, and connect to the endpoints it names.  The file is JSON::

    {"format": "ssnet-broker-endpoint/1", "run_id": "6f1c…", "host": "node042",
     "frontend": "tcp://node042:5559", "backend": "tcp://node042:5560", "metrics_port": 9100,
     "pid": 4242, "started": 1700000000.25, "started_utc": "2023-11-14T22:13:20Z"}

What makes this robust on a shared (NFS, Lustre, GPFS) filesystem:

* **Atomic writes.**  The broker writes a temporary file in the same directory (its name unique to the host and
  process), flushes and fsyncs it, then ``os.replace``-s it onto the final name; renaming within a directory is
  atomic on every POSIX and cluster filesystem, so a reader sees the old file or the new one, never half of one.
* **A file is a claim, not a fact.**  A broker killed by SIGKILL or a node failure leaves its file behind (a
  clean stop removes it, and only if the file is still its own, by run id).  A waiter therefore (1) ignores files
  whose broker started before its ``not_before`` time, and (2) returns only after the broker the file names has
  answered a round trip (an RFC 8 MMI request on its frontend).  Until then it keeps re-reading the file, so the
  file a new broker writes over a stale one is picked up.  After a failure (a job that lost its broker and is
  run again) the same wait happens again: nothing is cached between runs.
* **Caches.**  NFS clients cache attributes and directory entries (``actimeo``, typically 3 to 60 s), so a file
  written on one node may appear on another only that much later; each poll opens the file anew (close-to-open
  consistency) and the wait timeout should be minutes, not seconds.  Polls back off from 0.5 s to 5 s, with
  jitter, so that thousands of waiting client jobs do not load the metadata server in lockstep.
* **Following the broker.**  A long-lived worker that found its broker through the file keeps an eye on it
  (:class:`EndpointWatcher`, every 10 s): when the file names another broker (a new run) or is gone (the broker
  stopped cleanly), the worker finishes its request and stops, and its job script decides whether to start
  again.  A transiently unreadable file (an I/O error on a busy server) is not taken as gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import zmq

from ssnet_common import protocol as mdp
from ssnet_common.backoff import Backoff
from ssnet_common.config import EnvOptions, endpoint, non_negative_float, positive_float
from ssnet_common.curve import CurveKeys, load_secret
from ssnet_common.errors import ConfigError, SSNetError
from ssnet_common.files import write_atomically
from ssnet_common.transport import mmi_service

log = logging.getLogger(__name__)

FORMAT = "ssnet-broker-endpoint/1"
POLL_MIN = 0.5  # seconds between the first polls of a missing or stale endpoint file
POLL_MAX = 5.0  # ... growing to this
PROBE_TIMEOUT = 2.0  # seconds a broker has to answer the MMI round trip that proves it is there
WATCH_INTERVAL = 10.0  # seconds between looks at the endpoint file while a worker runs
MISSING_CHECKS = 2  # consecutive looks that must find the file gone before the broker is taken as gone
PUBLISH_TIMEOUT = 30.0  # seconds a starting broker has to answer on its advertised frontend
PROBE_SERVICE = b"ssnet.rendezvous"  # the service name the MMI probe asks about (any name gets an answer)

PathLike = Union[str, "os.PathLike[str]"]


class RendezvousError(SSNetError):
    """No usable broker was found through an endpoint file, or one could not be published."""


class BrokerNotFound(RendezvousError):
    """The wait for an endpoint file naming a live broker timed out."""


@dataclass(frozen=True)
class BrokerEndpoint:
    """What an endpoint file says: where a broker listens (connectable endpoints) and which broker it is."""

    run_id: str
    host: str
    frontend: str
    backend: str
    metrics_port: int
    pid: int
    started: float
    format: str = FORMAT
    curve_public: Optional[str] = None  # the broker's CURVE public key (Z85) when it runs with CURVE

    @classmethod
    def create(cls, frontend: str, backend: str, *, host: Optional[str] = None, metrics_port: int = 0,
               started: Optional[float] = None, curve_public: Optional[bytes] = None) -> BrokerEndpoint:
        """The endpoint of a broker in this process that bound ``frontend``/``backend`` (``tcp://*:5559``...):
        wildcard addresses are replaced by ``host`` (default: this machine's host name)."""
        host = host or socket.gethostname()
        return cls(
            run_id=uuid.uuid4().hex, host=host, frontend=advertised(frontend, host), backend=advertised(backend, host),
            metrics_port=metrics_port, pid=os.getpid(), started=time.time() if started is None else started,
            curve_public=None if curve_public is None else curve_public.decode("ascii"),
        )

    @property
    def started_utc(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))

    @property
    def metrics_url(self) -> Optional[str]:
        return f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else None

    def describe(self) -> str:
        return f"broker run {self.run_id[:12]} (pid {self.pid} on {self.host}, started {self.started_utc})"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "started_utc": self.started_utc}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BrokerEndpoint:
        """Parse and validate an endpoint file's text; :class:`RendezvousError` says what is wrong."""
        try:
            data: Any = json.loads(text)
        except ValueError as exc:
            raise RendezvousError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RendezvousError("not a JSON object")
        if data.get("format") != FORMAT:
            raise RendezvousError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        fields: dict[str, tuple[type, ...]] = {
            "run_id": (str,), "host": (str,), "frontend": (str,), "backend": (str,),
            "metrics_port": (int,), "pid": (int,), "started": (int, float),
        }
        for name, types in fields.items():
            value = data.get(name)
            if not isinstance(value, types) or isinstance(value, bool) or value in ("", None):
                raise RendezvousError(f"field {name!r} is missing or not a {types[0].__name__}: {value!r}")
        for name in ("frontend", "backend"):
            _check_connectable(data[name], name)
        if not 0 <= data["metrics_port"] <= 65535:
            raise RendezvousError(f"metrics_port out of range: {data['metrics_port']}")
        curve_public = data.get("curve_public")
        if curve_public is not None and not (isinstance(curve_public, str) and len(curve_public) == 40):
            raise RendezvousError(f"field 'curve_public' is not a Z85 public key: {curve_public!r}")
        return cls(
            run_id=data["run_id"], host=data["host"], frontend=data["frontend"], backend=data["backend"],
            metrics_port=data["metrics_port"], pid=data["pid"], started=float(data["started"]),
            curve_public=curve_public,
        )


def _check_connectable(value: str, name: str) -> None:
    try:
        endpoint(value)
    except argparse.ArgumentTypeError as exc:
        raise RendezvousError(f"field {name!r}: {exc}") from None
    transport, _, address = value.partition("://")
    if transport == "tcp":
        host, sep, port = address.rpartition(":")
        if not sep or host in ("", "*", "0.0.0.0", "[::]", "::", "[*]") or not port.isdigit():
            raise RendezvousError(f"field {name!r} is not a connectable tcp://host:port endpoint: {value!r}")


def advertised(bound: str, host: str) -> str:
    """The endpoint others connect to for an endpoint bound as ``bound``: ``tcp://*:5559`` → ``tcp://host:5559``.

    Specific addresses and ``ipc://``/``inproc://`` endpoints are returned as they are.  Ephemeral ports
    (``tcp://*:*``, ``tcp://*:0``) are refused: the file must name the port the broker really has.
    """
    transport, _, address = bound.partition("://")
    if transport != "tcp":
        return bound
    addr, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        raise ConfigError(f"an endpoint file needs a fixed port, not {bound!r}")
    if addr in ("*", "0.0.0.0", "[::]", "::", "[*]"):
        return f"tcp://{f'[{host}]' if ':' in host else host}:{port}"
    return bound


# --------------------------------------------------------------------------------------------- the file
def write_endpoint_file(path: PathLike, info: BrokerEndpoint) -> None:
    """Write ``info`` to ``path`` atomically (:func:`ssnet_common.files.write_atomically`)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, info.to_json().encode("utf-8"))
    except OSError as exc:
        raise RendezvousError(f"cannot write endpoint file {target}: {exc.strerror or exc}") from None


def read_endpoint_file(path: PathLike) -> BrokerEndpoint:
    """Read and validate an endpoint file.  ``FileNotFoundError`` if it is not there; :class:`RendezvousError`
    (naming the file) if it cannot be read or is not a valid endpoint file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise RendezvousError(f"cannot read endpoint file {path}: {exc}") from None
    try:
        return BrokerEndpoint.from_json(text)
    except RendezvousError as exc:
        raise RendezvousError(f"endpoint file {path} is not valid: {exc}") from None


def remove_endpoint_file(path: PathLike, run_id: str) -> bool:
    """Remove ``path`` if it still names the broker run ``run_id`` (another broker may have replaced it since)."""
    try:
        if read_endpoint_file(path).run_id != run_id:
            return False
        Path(path).unlink()
    except (OSError, RendezvousError):
        return False
    return True


# --------------------------------------------------------------------------------------------- liveness
def probe_broker(frontend: str, timeout: float = PROBE_TIMEOUT, curve: Optional[CurveKeys] = None) -> bool:
    """Whether a broker answers on ``frontend`` within ``timeout`` seconds: an MMI round trip (``mmi.service``).

    With ``curve``, a refusal of our key also proves the broker holding ``curve.server`` is there (a worker's key
    is not a client key, yet a worker waits for its broker the same way)."""
    if curve is None:
        return mmi_service(frontend, PROBE_SERVICE.decode("ascii"), timeout) is not None
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        curve.client_side(sock)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        try:
            sock.connect(frontend)
            sock.send_multipart(mdp.ClientRequest(mdp.MMI_SERVICE, [PROBE_SERVICE]).encode())
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            return bool(poller.poll(max(1, int(timeout * 1000))))
        finally:
            monitor.close(linger=0)
            sock.close(linger=0)
    except zmq.ZMQError:
        return False
    finally:
        context.term()


def wait_for_broker(
    path: PathLike,
    timeout: float,
    *,
    not_before: float = 0.0,
    probe: Callable[[str, float], bool] = probe_broker,
    probe_timeout: float = PROBE_TIMEOUT,
    poll_min: float = POLL_MIN,
    poll_max: float = POLL_MAX,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    identity: Optional[tuple[bytes, bytes]] = None,
) -> BrokerEndpoint:
    """Wait until the endpoint file at ``path`` names a broker that started at or after ``not_before`` (Unix
    time) and answers on its frontend; return what the file says.  Raises :class:`BrokerNotFound`, with the
    last reason the file was not used, after ``timeout`` seconds.  ``identity``: our CURVE key pair (public,
    secret); the broker's public key comes from the file."""
    deadline = clock() + timeout
    backoff = Backoff(poll_min, poll_max, factor=1.5)
    reason = ""
    log.info("waiting up to %g s for a broker in endpoint file %s", timeout, path)
    while True:
        info: Optional[BrokerEndpoint] = None
        try:
            info = read_endpoint_file(path)
        except FileNotFoundError:
            now_reason = "the file does not exist yet"
        except RendezvousError as exc:
            now_reason = str(exc)
        if info is not None:
            if info.started < not_before:
                now_reason = (f"it names {info.describe()}, older than the --broker-not-before time "
                              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(not_before))}")
            elif identity is not None and info.curve_public is None:
                answers = probe(info.frontend, max(0.001, min(probe_timeout, deadline - clock())))
                now_reason = (f"it names {info.describe()}, which runs without CURVE, but a CURVE key was given"
                              if answers else f"it names {info.describe()}, which does not answer on {info.frontend}")
            elif (probe(info.frontend, max(0.001, min(probe_timeout, deadline - clock()))) if identity is None
                  else probe_broker(info.frontend, max(0.001, min(probe_timeout, deadline - clock())),
                                    CurveKeys(*identity, server=(info.curve_public or "").encode("ascii")))):
                log.info("found %s: frontend %s, backend %s", info.describe(), info.frontend, info.backend)
                return info
            else:
                now_reason = f"it names {info.describe()}, which does not answer on {info.frontend}"
        if now_reason != reason:
            reason = now_reason
            log.info("endpoint file %s not usable yet: %s", path, reason)
        remaining = deadline - clock()
        if remaining <= 0:
            raise BrokerNotFound(f"no broker found through endpoint file {path} within {timeout:g} s: {reason}")
        sleep(min(backoff.next_delay(), remaining))


class EndpointWatcher:
    """Looks at the endpoint file every ``interval`` seconds (in a daemon thread) after ``current`` was found
    through it, and calls ``on_change(reason)`` once, when the file names another broker run or has been
    missing ``missing_checks`` times in a row.  Unreadable or invalid files are ignored (a busy shared
    filesystem may fail a read now and then)."""

    def __init__(self, path: PathLike, current: BrokerEndpoint, on_change: Callable[[str], None], *,
                 interval: float = WATCH_INTERVAL, missing_checks: int = MISSING_CHECKS) -> None:
        self.path = Path(path)
        self.current = current
        self.on_change = on_change
        self.interval = interval
        self.missing_checks = missing_checks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpoint-watcher", daemon=True)

    def start(self) -> EndpointWatcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def check(self, missing: int) -> tuple[Optional[str], int]:
        """One look: (the reason to stop or None, the updated count of consecutive misses)."""
        try:
            info = read_endpoint_file(self.path)
        except FileNotFoundError:
            missing += 1
            if missing >= self.missing_checks:
                return f"endpoint file {self.path} is gone (the broker stopped)", missing
            return None, missing
        except RendezvousError as exc:
            log.warning("%s; looking again in %g s", exc, self.interval)
            return None, 0
        if info.run_id != self.current.run_id:
            return f"endpoint file {self.path} now names another broker, {info.describe()}", 0
        return None, 0

    def _run(self) -> None:
        missing = 0
        while not self._stop.wait(self.interval):
            reason, missing = self.check(missing)
            if reason is not None:
                log.info("%s", reason)
                self.on_change(reason)
                return


class EndpointPublisher:
    """The broker side: once the broker answers on its advertised frontend (an MMI round trip, which proves it
    has bound and that the advertised name reaches it), write the endpoint file; on :meth:`close`, remove it if
    it is still ours.  ``on_failure(message)`` is called (from the publisher's thread) if the broker does not
    answer within ``timeout`` seconds or the file cannot be written."""

    def __init__(self, path: PathLike, info: BrokerEndpoint, on_failure: Callable[[str], None], *,
                 timeout: float = PUBLISH_TIMEOUT, probe: Callable[[str, float], bool] = probe_broker) -> None:
        self.path = Path(path)
        self.info = info
        self.on_failure = on_failure
        self.timeout = timeout
        self.probe = probe
        self.written = threading.Event()
        self.failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpoint-publisher", daemon=True)

    def start(self) -> EndpointPublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set():
            if self.probe(self.info.frontend, 0.5):
                try:
                    write_endpoint_file(self.path, self.info)
                except RendezvousError as exc:
                    self._fail(str(exc))
                    return
                self.written.set()
                log.info("wrote endpoint file %s: %s, frontend %s, backend %s", self.path, self.info.describe(),
                         self.info.frontend, self.info.backend)
                return
            if time.monotonic() > deadline:
                self._fail(f"the broker did not answer on its advertised frontend {self.info.frontend} within "
                           f"{self.timeout:g} s (wrong --advertise-host?); endpoint file {self.path} not written")
                return
            self._stop.wait(0.1)

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        self.failed = True
        self.on_failure(message)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.written.is_set() and remove_endpoint_file(self.path, self.info.run_id):
            log.info("removed endpoint file %s", self.path)


# --------------------------------------------------------------------------------------------- CLI helpers
def add_broker_options(options: EnvOptions, default: str, help: str) -> None:
    """``--broker`` (``default``), or ``--broker-file`` with ``--broker-wait`` and ``--broker-not-before``: find the
    broker through its endpoint file.  ``--broker`` and ``--broker-file`` exclude each other (exit status 2)."""
    one_of = options.exclusive()
    one_of.add("--broker", default=default, type=endpoint, help=help)
    one_of.add("--broker-file", default=None,
               help="find the broker through the endpoint file ssnet-broker --endpoint-file writes (on a shared "
                    "filesystem): wait for it, check the broker answers, connect to what it names; "
                    "excludes --broker")
    options.add("--broker-wait", default=600.0, type=positive_float,
                help="seconds to wait for --broker-file to name a broker that answers")
    options.add("--broker-not-before", default=0.0, type=non_negative_float,
                help="ignore an endpoint file whose broker started before this Unix time (0: any)")


def broker_from_file(args: Any) -> Optional[BrokerEndpoint]:
    """The broker named by ``args.broker_file`` (waited for), or None without a broker file."""
    if not args.broker_file:
        return None
    identity = None if getattr(args, "curve_secret", None) is None else load_secret(args.curve_secret)
    found: BrokerEndpoint = wait_for_broker(args.broker_file, args.broker_wait, not_before=args.broker_not_before,
                                            identity=identity)
    return found


__all__ = [
    "FORMAT", "BrokerEndpoint", "BrokerNotFound", "EndpointPublisher", "EndpointWatcher", "RendezvousError",
    "add_broker_options", "advertised", "broker_from_file", "probe_broker", "read_endpoint_file",
    "remove_endpoint_file", "wait_for_broker", "write_endpoint_file",
]
