"""The worker against a fake broker: the test binds a ROUTER socket and plays the broker's side of MDP/0.2
against a real ``python -m ssnet_worker`` process.  Every wait is a poll on a socket or a queue with a timeout.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional, TypeVar

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from ssnet_common.errors import ErrorCode
from ssnet_common.protocol import (
    Body,
    BodyKind,
    Disconnect,
    Frame,
    FromWorker,
    Heartbeat,
    Ready,
    WorkerReply,
    WorkerRequest,
    decode_body,
    decode_from_worker,
    frame_bytes,
    request_body,
)
from ssnet_common.transport import bind, new_socket, recv, send
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images
from ssnet_worker.base import REPEATED_SIGNAL_GRACE, WorkerConfig
from ssnet_worker.dummy import EchoWorker

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

ROOT = Path(__file__).resolve().parents[2]
SRC_PATH = os.pathsep.join(str(ROOT / sub) for sub in ("common/src", "data/src", "worker/src"))
CLIENT = b"\x00client-1"
M = TypeVar("M", Ready, WorkerReply, Heartbeat, Disconnect)


# ------------------------------------------------------------------------------------------------ helpers
def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSNET_")}
    env["PYTHONPATH"] = SRC_PATH + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class WorkerProcess:
    """``python -m ssnet_worker ARGS`` with its log lines collected by a reader thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssnet_worker", "--log-level", "DEBUG", *args],
            env=worker_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line with {text!r} within {timeout} s:\n{self.text()}") from None
            if text in line:
                return line

    def text(self) -> str:
        return "".join(self.log)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeBroker:
    """A ROUTER socket that speaks the broker's side of MDP/0.2 to one worker."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = new_socket(self.context, zmq.ROUTER)
        bind(self.socket, endpoint)
        self.answer_heartbeats = True
        self.heartbeats = 0

    def recv(self, timeout: float) -> tuple[bytes, FromWorker]:
        if not self.socket.poll(max(0, int(timeout * 1000))):
            raise AssertionError(f"nothing from the worker within {timeout:.1f} s")
        identity, *frames = recv(self.socket)
        return frame_bytes(identity), decode_from_worker(frames)

    def expect(self, kind: type[M], timeout: float = 10.0) -> tuple[bytes, M]:
        """The next message of ``kind``, counting (and answering) heartbeats on the way."""
        deadline = time.monotonic() + timeout
        while True:
            identity, message = self.recv(deadline - time.monotonic())
            if isinstance(message, kind):
                return identity, message
            if isinstance(message, Heartbeat):
                self.heartbeats += 1
                if self.answer_heartbeats:
                    self.send(identity, Heartbeat())
                continue
            raise AssertionError(f"expected {kind.__name__}, got {message}")

    def send(self, identity: bytes, message: WorkerRequest | Heartbeat | Disconnect) -> None:
        send(self.socket, [identity, *message.encode()])

    def request(self, identity: bytes, request_id: int, payload: list[Frame], timeout: float = 10.0) -> Body:
        """Hand the worker a request in our format; return the body of its FINAL reply."""
        self.send(identity, WorkerRequest(CLIENT, request_body(request_id, payload).encode()))
        _, reply = self.expect(WorkerReply, timeout)
        assert reply.client == CLIENT and reply.final
        body = decode_body(reply.body)
        assert body.request_id == request_id
        return body

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/broker.ipc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def image_product(name: str, shape: tuple[int, int, int], dtype: str, first_event: int) -> ImageProduct:
    k, rows, cols = shape
    items = tuple(
        (ImageMeta(width=cols * 1.0, height=rows * 6.0, rows=rows, cols=cols, origin_x=0.0,
                   origin_y=8448.0 - i, plane=i % 3), EventId(5007, 101, first_event + i))
        for i in range(k)
    )
    return ImageProduct(name, items, np.random.default_rng(first_event).random(shape).astype(dtype))


def frames_of(body: Body) -> list[bytes]:
    return [frame_bytes(f) for f in body.payload]


# -------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("args", "service"), [(["--kind", "echo"], "echo"), (["--service", "ssnet-uboone"], "ssnet-uboone")]
)
def test_ready_names_the_service(endpoint: str, args: list[str], service: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess("--broker", endpoint, *args):
        _, ready = broker.expect(Ready)
        assert ready.service == service


def test_echo_request_comes_back_final(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess("--broker", endpoint, "--kind", "echo"):
        identity, _ = broker.expect(Ready)
        big = np.arange(1 << 18, dtype=np.uint32).tobytes()
        body = broker.request(identity, 2**64 - 1, [b"first", b"", big])
        assert body.kind == BodyKind.RESULT and frames_of(body) == [b"first", b"", big]
        # A plain MDP body (no envelope) is echoed raw.
        broker.send(identity, WorkerRequest(CLIENT, [b"plain", b"body"]))
        _, reply = broker.expect(WorkerReply)
        assert [frame_bytes(f) for f in reply.body] == [b"plain", b"body"]


def test_heartbeats_flow_during_a_slow_request(endpoint: str) -> None:
    interval, duration = 0.5, 3.0
    with FakeBroker(endpoint) as broker, WorkerProcess(
        "--broker", endpoint, "--kind", "sleep", "--heartbeat-interval", str(interval),
    ) as worker:
        identity, _ = broker.expect(Ready)
        broker.heartbeats = 0
        started = time.monotonic()
        body = broker.request(identity, 1, [str(duration).encode(), b"payload"], timeout=duration + 5)
        elapsed = time.monotonic() - started
        assert body.kind == BodyKind.RESULT and frames_of(body) == [b"3.0", b"payload"]
        assert elapsed >= duration
        assert broker.heartbeats >= duration / interval - 1, worker.text()
        assert "reconnecting" not in worker.text()


def test_reconnects_when_the_broker_goes_silent(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess(
        "--broker", endpoint, "--kind", "echo", "--heartbeat-interval", "0.2", "--heartbeat-liveness", "2",
        "--reconnect-min", "0.5",
    ) as worker:
        broker.answer_heartbeats = False
        first, _ = broker.expect(Ready)
        second, _ = broker.expect(Ready, timeout=5)
        assert second != first
        worker.wait_for_log("broker silent")
        # Answered again, the new connection works.
        broker.answer_heartbeats = True
        assert broker.request(second, 3, [b"again"]).kind == BodyKind.RESULT


def test_reconnects_after_disconnect_from_the_broker(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess(
        "--broker", endpoint, "--kind", "echo", "--reconnect-min", "0.2",
    ) as worker:
        first, _ = broker.expect(Ready)
        broker.send(first, Disconnect())
        second, _ = broker.expect(Ready, timeout=5)
        assert second != first
        worker.wait_for_log("broker sent DISCONNECT")


def test_registers_when_the_broker_binds_later(endpoint: str) -> None:
    with WorkerProcess("--broker", endpoint, "--kind", "echo", "--heartbeat-interval", "0.5") as worker:
        worker.wait_for_log("connecting to broker")
        with FakeBroker(endpoint) as broker:
            identity, ready = broker.expect(Ready, timeout=10)
            assert ready.service == "echo"
            assert broker.request(identity, 4, [b"late"]).kind == BodyKind.RESULT


def test_sigterm_finishes_the_current_request(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess(
        "--broker", endpoint, "--kind", "sleep", "--heartbeat-interval", "0.2",
    ) as worker:
        identity, _ = broker.expect(Ready)
        broker.send(identity, WorkerRequest(CLIENT, request_body(7, [b"1.5"]).encode()))
        worker.wait_for_log("request 7: handling")
        signalled = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        _, reply = broker.expect(WorkerReply, timeout=10)
        assert reply.final and decode_body(reply.body).request_id == 7
        assert decode_body(reply.body).kind == BodyKind.RESULT
        broker.expect(Disconnect, timeout=5)
        assert worker.proc.wait(10) == 0
        assert time.monotonic() - signalled < 5
        assert "finishing the current request" in worker.text()


def test_second_signal_abandons_the_request(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess("--broker", endpoint, "--kind", "sleep") as worker:
        identity, _ = broker.expect(Ready)
        broker.send(identity, WorkerRequest(CLIENT, request_body(8, [b"60"]).encode()))
        worker.wait_for_log("request 8: handling")
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_for_log("finishing the current request")
        time.sleep(REPEATED_SIGNAL_GRACE)  # the behaviour under test: a signal after the grace period escalates
        worker.proc.send_signal(signal.SIGTERM)
        broker.expect(Disconnect, timeout=5)
        assert worker.proc.wait(10) == 1
        assert "abandoning 1 request" in worker.text()


def test_signal_repeated_at_once_is_the_same_request_to_stop(endpoint: str) -> None:
    """Container runtimes (Singularity's starter under Slurm) may deliver one SIGTERM twice."""
    with FakeBroker(endpoint) as broker, WorkerProcess("--broker", endpoint, "--kind", "sleep") as worker:
        identity, _ = broker.expect(Ready)
        broker.send(identity, WorkerRequest(CLIENT, request_body(9, [b"1"]).encode()))
        worker.wait_for_log("request 9: handling")
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_for_log("finishing the current request")
        worker.proc.send_signal(signal.SIGTERM)
        _, reply = broker.expect(WorkerReply, timeout=10)
        assert decode_body(reply.body).request_id == 9 and decode_body(reply.body).kind == BodyKind.RESULT
        broker.expect(Disconnect, timeout=5)
        assert worker.proc.wait(10) == 0
        assert "again within" in worker.text()


def test_reply_for_a_replaced_connection_is_dropped(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess(
        "--broker", endpoint, "--kind", "sleep", "--heartbeat-interval", "0.2", "--heartbeat-liveness", "2",
        "--reconnect-min", "0.2",
    ) as worker:
        first, _ = broker.expect(Ready)
        broker.answer_heartbeats = False
        broker.send(first, WorkerRequest(CLIENT, request_body(9, [b"1.5"]).encode()))
        second, _ = broker.expect(Ready, timeout=5)  # the broker went silent: a new connection
        assert second != first
        worker.wait_for_log("request 9: reply dropped", timeout=5)
        deadline = time.monotonic() + 0.5
        while True:  # the FINAL never comes: only heartbeats (and READYs, as the test answers nothing)
            try:
                _, message = broker.recv(deadline - time.monotonic())
            except AssertionError:
                break
            assert isinstance(message, (Heartbeat, Ready)), message


def test_sigterm_when_idle_exits_promptly(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess("--broker", endpoint, "--kind", "echo") as worker:
        broker.expect(Ready)
        signalled = time.monotonic()
        worker.proc.send_signal(signal.SIGINT)
        broker.expect(Disconnect, timeout=5)
        assert worker.proc.wait(10) == 0
        assert time.monotonic() - signalled < 1.0  # the default heartbeat interval is 2.5 s


def test_handler_exception_replies_worker_error(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker, WorkerProcess("--broker", endpoint, "--kind", "sleep") as worker:
        identity, _ = broker.expect(Ready)
        body = broker.request(identity, 11, [b"not-a-number"])
        assert body.kind == BodyKind.ERROR
        code, message = body.error
        assert code == ErrorCode.WORKER_ERROR and message.startswith("ValueError:") and "not-a-number" in message
        worker.wait_for_log("Traceback")
        # Still serving; and a plain body gets the plain error form.
        assert broker.request(identity, 12, [b"0", b"ok"]).kind == BodyKind.RESULT
        broker.send(identity, WorkerRequest(CLIENT, [b"soon"]))
        _, reply = broker.expect(WorkerReply)
        error, code_frame, text = (frame_bytes(f) for f in reply.body)
        assert (error, code_frame) == (b"error", b"worker_error") and text.startswith(b"ValueError:")


def test_dummy_larcv1_worker(endpoint: str) -> None:
    products = [
        image_product("wire", (2, 16, 12), "float32", 3001),
        image_product("wire_b", (1, 8, 8), "float64", 4000),
        image_product("wire_c", (3, 4, 4), "uint8", 5000),
    ]
    request = encode_images(products)
    with FakeBroker(endpoint) as broker, WorkerProcess("--broker", endpoint) as worker:
        identity, ready = broker.expect(Ready)
        assert ready.service == "dummy"
        body = broker.request(identity, 21, request)
        assert body.kind == BodyKind.RESULT
        (out,) = decode_images(body.payload)
        assert out.name == "dummy"
        assert out.array.shape == (2, 16, 12) and out.array.dtype == np.float32 and not out.array.any()
        assert out.items == products[0].items
        assert frame_bytes(body.payload[1]) == frame_bytes(request[1])  # the first product's meta text
        worker.wait_for_log("wire_c (3, 4, 4) uint8")


def test_metrics_endpoint(endpoint: str) -> None:
    port = free_port()
    with FakeBroker(endpoint) as broker, WorkerProcess(
        "--broker", endpoint, "--kind", "sleep", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1",
        "--heartbeat-interval", "0.2",
    ):
        identity, _ = broker.expect(Ready)
        assert broker.request(identity, 1, [b"0.3"]).kind == BodyKind.RESULT
        assert broker.request(identity, 2, [b"x"]).kind == BodyKind.ERROR
        broker.expect(Heartbeat)  # at least one heartbeat sent (and answered)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    svc = (("service", "sleep"),)
    assert samples[("ssnet_worker_requests_total", (("outcome", "ok"), *svc))] == 1
    assert samples[("ssnet_worker_requests_total", (("outcome", "error"), *svc))] == 1
    assert samples[("ssnet_worker_errors_total", svc)] == 1
    assert samples[("ssnet_worker_processing_seconds_count", svc)] == 2
    assert samples[("ssnet_worker_processing_seconds_sum", svc)] >= 0.3
    assert samples[("ssnet_worker_heartbeats_total", (("direction", "sent"),))] >= 1
    assert ("ssnet_worker_heartbeats_total", (("direction", "received"),)) in samples
    assert samples[("ssnet_worker_busy", svc)] == 0
    assert samples[("ssnet_worker_reconnects_total", svc)] == 0
    assert 0 <= samples[("ssnet_worker_broker_heartbeat_age_seconds", svc)] < 5


def test_bad_option_is_one_line_and_exit_2(endpoint: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ssnet_worker", "--broker", endpoint, "--reconnect-min", "5", "--reconnect-max", "1"],
        check=False, env=worker_env(), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "reconnect_max" in lines[0], result.stderr


def test_embedded_worker_stops_from_another_thread(endpoint: str) -> None:
    with FakeBroker(endpoint) as broker:
        worker = EchoWorker(WorkerConfig("embedded", broker=endpoint))
        status: list[Optional[int]] = [None]

        def serve() -> None:
            status[0] = worker.run()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            identity, ready = broker.expect(Ready)
            assert ready.service == "embedded"
            assert broker.request(identity, 5, [b"in-process"]).kind == BodyKind.RESULT
            worker.stop()
            broker.expect(Disconnect, timeout=5)
        finally:
            worker.stop()
            thread.join(10)
        assert not thread.is_alive() and status[0] == 0

