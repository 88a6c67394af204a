"""``ssnet-perf``'s pure parts (ssnet_client.perf): synthetic events, requests, reply checks, the rows, and the
measurement of one level against a stand-in client with a stand-in clock (no sockets; the real sweep runs in
tests/integration/test_perf.py)."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
import pytest

from ssnet_client.base import Reply
from ssnet_client.perf import (
    ADC_MAX,
    ADC_MIN,
    ErrorLog,
    PerfRequest,
    Row,
    TablePrinter,
    build_parser,
    build_requests,
    check_reply,
    csv_text,
    measure_level,
    summarize,
    synthetic_events,
    synthetic_image,
)
from ssnet_common.errors import ConfigError, RequestError, WorkerError
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images


# ------------------------------------------------------------------------------------------- synthetic events
@pytest.mark.parametrize("pattern", ["tracks", "random"])
@pytest.mark.parametrize(("rows", "cols", "occupancy"), [(512, 512, 0.03), (64, 100, 0.2), (8, 8, 1.0), (5, 7, 0.0)])
def test_synthetic_image_has_the_shape_dtype_and_occupancy_asked(pattern: str, rows: int, cols: int,
                                                                 occupancy: float) -> None:
    image = synthetic_image(np.random.default_rng(1), rows, cols, occupancy, pattern)
    assert image.shape == (rows, cols)
    assert image.dtype == np.float32
    assert np.count_nonzero(image) == round(occupancy * rows * cols)
    charge = image[image != 0]
    assert np.all((charge >= ADC_MIN) & (charge <= ADC_MAX))


def test_tracks_are_runs_of_neighbouring_pixels() -> None:
    image = synthetic_image(np.random.default_rng(2), 256, 256, 0.03, "tracks")
    hit = image != 0
    padded = np.pad(hit, 1)
    neighbours = sum(np.roll(np.roll(padded, dr, 0), dc, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                     if (dr, dc) != (0, 0))[1:-1, 1:-1]
    assert np.mean(neighbours[hit] > 0) > 0.95  # nearly every pixel has a lit neighbour (only cut track ends lack one)
    scattered = synthetic_image(np.random.default_rng(2), 256, 256, 0.03, "random") != 0
    padded = np.pad(scattered, 1)
    alone = sum(np.roll(np.roll(padded, dr, 0), dc, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                if (dr, dc) != (0, 0))[1:-1, 1:-1]
    assert np.mean(alone[scattered] > 0) < 0.5


def test_synthetic_events_are_seeded_distinct_and_carry_plane_metas() -> None:
    events = synthetic_events(4, (3, 32, 48), 0.05, seed=7)
    again = synthetic_events(4, (3, 32, 48), 0.05, seed=7)
    other = synthetic_events(4, (3, 32, 48), 0.05, seed=8)
    assert [e.ids for e in events] == [EventId(1, 0, n) for n in (1, 2, 3, 4)]
    for event, same, different in zip(events, again, other):
        assert [meta.plane for meta, _ in event.images] == [0, 1, 2]
        assert all(meta.shape == (32, 48) and pixels.shape == (32, 48) for meta, pixels in event.images)
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(event.images, same.images))
        assert not np.array_equal(event.images[0][1], different.images[0][1])
    assert not np.array_equal(events[0].images[0][1], events[1].images[0][1])


def test_synthetic_events_refuse_an_empty_shape() -> None:
    with pytest.raises(ConfigError, match="at least 1 plane"):
        synthetic_events(1, (3, 0, 5), 0.03)


# ---------------------------------------------------------------------------------------------- requests
def test_requests_are_the_larcv1_message_ssnet_client_sends() -> None:
    events = synthetic_events(3, (3, 16, 24), 0.1)
    (first, *_) = requests = build_requests(events, "wire")
    assert len(requests) == 3
    products = decode_images(first.frames)
    assert [p.name for p in products] == ["wire"] * 3
    assert all(p.ids == (EventId(1, 0, 1),) and p.array.shape == (1, 16, 24) for p in products)
    assert np.array_equal(products[2].array[0], events[0].images[2][1])
    assert first.ids == (EventId(1, 0, 1),) and first.events == 1
    assert first.nbytes == sum(len(memoryview(f).cast("B")) for f in first.frames)


def test_batched_requests_stack_consecutive_events() -> None:
    events = synthetic_events(5, (2, 8, 8), 0.2)
    requests = build_requests(events, "wire", batch_size=2)
    assert [r.ids for r in requests] == [(EventId(1, 0, 1), EventId(1, 0, 2)), (EventId(1, 0, 3), EventId(1, 0, 4))]
    products = decode_images(requests[1].frames)
    assert products[1].array.shape == (2, 8, 8)
    assert np.array_equal(products[1].array[1], events[3].images[1][1])
    # fewer events than a batch: the pool is repeated to fill one
    (only,) = build_requests(events[:1], "wire", batch_size=3)
    assert only.ids == (EventId(1, 0, 1),) * 3


def test_batches_need_events_of_the_same_shapes() -> None:
    events = [*synthetic_events(1, (3, 8, 8), 0.1), *synthetic_events(1, (3, 8, 16), 0.1, seed=1)]
    with pytest.raises(ConfigError, match="same shapes"):
        build_requests(events, "wire", batch_size=2)


# ----------------------------------------------------------------------------------------------- replies
def _request() -> PerfRequest:
    (request,) = build_requests(synthetic_events(1, (1, 4, 4), 0.25), "wire")
    return request


def _reply(payload: Sequence[Any], rtt: float = 0.01) -> Reply:
    return Reply("echo", 1, list(payload), rtt, 1)


def test_check_reply_accepts_the_echo_and_names_every_problem() -> None:
    request = _request()
    assert check_reply(_reply(request.frames), request) is None
    assert check_reply(WorkerError("bad image", service="echo", request_id=1), request) == (
        "WorkerError", "error reply: bad image")
    kind, text = check_reply(_reply([b"not", b"larcv1"]), request) or ("", "")
    assert kind == "not_larcv1" and "not a LArCV1 image message" in text
    stranger = ImageProduct("wire", ((decode_images(request.frames)[0].metas[0], EventId(9, 9, 9)),),
                            np.zeros((1, 4, 4), np.float32))
    kind, text = check_reply(_reply(encode_images([stranger])), request) or ("", "")
    assert kind == "event_ids" and "(9,9,9)" in text and "(1,0,1)" in text


def test_error_log_logs_each_kind_once_and_counts_all(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorLog()
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            errors.report(4, "WorkerError", "error reply: bad image")
        errors.report(4, "event_ids", "wrong ids")
    assert errors.count == 4
    assert [r.getMessage().split(":", 1)[1].split("(")[0].strip() for r in caplog.records] == [
        "error reply: bad image", "wrong ids"]


# -------------------------------------------------------------------------------------------------- rows
def test_summarize_computes_rates_and_percentiles() -> None:
    round_trips = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    row = summarize(4, round_trips, events=200, errors=1, seconds=2.0, nbytes=10_000_000)
    assert (row.concurrency, row.requests, row.events, row.errors, row.seconds) == (4, 100, 200, 1, 2.0)
    assert row.events_per_s == pytest.approx(100.0)
    assert row.mb_per_s == pytest.approx(5.0)
    assert row.p50_ms == pytest.approx(50.5)
    assert row.p90_ms == pytest.approx(90.1)
    assert row.p99_ms == pytest.approx(99.01)
    assert row.p50_ms <= row.p90_ms <= row.p99_ms


def test_summarize_without_a_good_reply() -> None:
    row = summarize(1, [], events=0, errors=5, seconds=0.5, nbytes=0)
    assert row.events_per_s == 0 and row.errors == 5
    assert math.isnan(row.p50_ms) and math.isnan(row.p99_ms)


def test_table_and_csv_have_one_line_per_level() -> None:
    rows = [summarize(c, [0.001 * c, 0.002 * c], events=2, errors=0, seconds=0.5, nbytes=2_000_000) for c in (1, 8)]
    rows.append(summarize(16, [], events=0, errors=3, seconds=0.1, nbytes=0))
    out = io.StringIO()
    printer = TablePrinter(out)
    for row in rows:
        printer.add(row)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["concurrency", "requests", "events", "errors", "seconds", "events/s", "MB/s", "p50",
                                "ms", "p90", "ms", "p99", "ms"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "8", "16"]
    assert lines[1].split()[5:7] == ["4.0", "4.0"]  # events/s, MB/s
    assert lines[3].split()[-3:] == ["-", "-", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned
    table = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert list(table[0]) == list(Row.COLUMNS)
    assert [int(r["concurrency"]) for r in table] == [1, 8, 16]
    assert float(table[1]["p90_ms"]) == pytest.approx(rows[1].p90_ms)
    assert table[2]["p50_ms"] == "nan"


# ------------------------------------------------------------------------------------------ one level
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Pipeline:
    """Stands in for Client.imap: keeps ``window`` requests taken from the source, as the real one does, and
    answers them in order, one every ``step`` seconds of the stand-in clock; ``answer`` makes the replies."""

    def __init__(self, clock: Clock, step: float = 0.25, answer: Optional[Any] = None) -> None:
        self.clock = clock
        self.step = step
        self.answer = answer or (lambda index, payload: _reply(payload, rtt=0.001 * (index + 1)))
        self.sent = 0
        self.window: Optional[int] = None

    def imap(self, requests: Iterable[tuple[str, Sequence[Any]]], *, window: int, return_exceptions: bool
             ) -> Iterator[Union[Reply, RequestError]]:
        assert return_exceptions
        self.window = window
        source = iter(requests)
        queue: deque[tuple[int, Sequence[Any]]] = deque()
        while True:
            for _, payload in source:
                queue.append((self.sent, payload))
                self.sent += 1
                if len(queue) == window:
                    break
            if not queue:
                return
            index, payload = queue.popleft()
            self.clock.now += self.step
            yield self.answer(index, payload)


def test_a_level_measures_the_requests_between_warmup_and_the_tail() -> None:
    clock = Clock()
    client = Pipeline(clock)
    pool = build_requests(synthetic_events(3, (1, 8, 8), 0.1), "wire")
    row = measure_level(client, "echo", pool, 2, warmup=3, requests=5, duration=None,  # type: ignore[arg-type]
                        errors=ErrorLog(), clock=clock)
    assert client.window == 2
    assert client.sent == 3 + 5 + 1  # the tail: the window stays full until the last measured reply
    assert (row.requests, row.events, row.errors) == (5, 5, 0)
    assert row.seconds == pytest.approx(5 * 0.25)  # from the last warm-up reply to the last measured one
    assert row.events_per_s == pytest.approx(4.0)
    assert (row.p50_ms, row.p99_ms) == (pytest.approx(6.0), pytest.approx(7.96))  # replies 3..7 took 4..8 ms
    expected_bytes = sum(2 * pool[i % 3].nbytes for i in range(3, 8))
    assert row.mb_per_s == pytest.approx(expected_bytes / 1.25 / 1e6)


def test_a_level_measured_by_duration_and_its_errors(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    def answer(index: int, payload: Sequence[Any]) -> Union[Reply, RequestError]:
        return WorkerError("no", service="echo", request_id=index) if index % 2 else _reply(payload)

    client = Pipeline(clock, answer=answer)
    pool = build_requests(synthetic_events(2, (1, 8, 8), 0.1), "wire")
    errors = ErrorLog()
    with caplog.at_level(logging.ERROR):
        row = measure_level(client, "echo", pool, 1, warmup=0, requests=None, duration=1.0,  # type: ignore[arg-type]
                            errors=errors, clock=clock)
    assert row.requests + row.errors == 4  # replies at 0.25 .. 1.0 s after the start
    assert (row.requests, row.errors, errors.count) == (2, 2, 2)
    assert row.seconds == pytest.approx(1.0)
    assert len(caplog.records) == 1


def test_options_have_variables_and_shape_takes_three_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args([])
    assert (args.shape, args.concurrency, args.occupancy, args.requests, args.duration) == (
        [3, 512, 512], [1, 2, 4, 8], 0.03, None, None)
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "version"):
            assert "[env SSNET_PERF_" in (action.help or ""), action.option_strings
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--requests", "5", "--duration", "2"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--occupancy", "1.5"])
    assert "between 0 and 1" in capsys.readouterr().err
