"""The job progress display: the state (recent rate, ETA, stalls) given ``now``, tqdm's bar on a terminal and
periodic log lines elsewhere (no sockets)."""

from __future__ import annotations

import io
import logging
import time

import pytest

from ssnet_client.progress import ProgressReport, ProgressState, clock_text


def test_the_rate_is_the_recent_one_not_the_average_since_the_start() -> None:
    state = ProgressState(window=10.0)
    state.update(0, 100, now=0.0)
    state.update(40, 100, now=10.0)  # 4 events/s
    assert state.rate(10.0) == pytest.approx(4.0)
    state.update(41, 100, now=60.0)  # a worker died: 1 event in 50 s
    state.update(51, 100, now=70.0)  # back at 1 event/s over the last 10 s
    assert state.rate(70.0) == pytest.approx(1.0)
    assert state.eta(70.0) == pytest.approx(49.0)
    # the mean since the start (51/70 = 0.73/s) is not what it reports
    assert state.line(70.0).startswith("51/100 events, 1.00 events/s over the last 10 s, ETA 0:00:49")


def test_resumed_events_do_not_count_in_the_rate() -> None:
    state = ProgressState(window=60.0)
    state.update(500, 1000, now=0.0)  # 500 entries found in checkpoint chunks
    state.update(510, 1000, now=5.0)
    assert state.rate(5.0) == pytest.approx(2.0)


def test_a_stall_is_reported_and_the_eta_becomes_unknown() -> None:
    state = ProgressState(window=10.0)
    state.update(0, 10, now=0.0)
    assert state.eta(5.0) is None and state.stalled_for(5.0) == 5.0
    state.update(3, 10, now=6.0)
    assert state.stalled_for(6.0) == 0.0
    assert state.stalled_for(30.0) == 24.0
    assert state.rate(30.0) == 0.0 and state.eta(30.0) is None  # nothing in the last 10 s
    assert state.line(30.0, stall_after=10.0).endswith("ETA --:--; no event for 24 s")
    state.update(10, 10, now=31.0)
    assert state.stalled_for(100.0) == 0.0 and state.eta(100.0) == 0.0  # done: no stall, nothing left


def test_clock_text() -> None:
    assert clock_text(None) == "--:--"
    assert clock_text(3725.4) == "1:02:05"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_counts_events_notes_a_stall_and_lets_log_lines_pass() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    with ProgressReport("bar", stream, stall_after=5.0, clock=clock) as report:
        report(0, 5)
        report(2, 5)
        clock.now = 12.0
        report._note()  # what the ticker thread does every second
        assert "no event for 12 s" in stream.getvalue()
        report.write("2026-12-02 ssnet-worker[1] INFO a worker's line\n")
        report(5, 5)
    text = stream.getvalue()
    assert "5/5" in text and "event" in text and "100%" in text
    assert "a worker's line\n" in text


def test_log_lines_every_interval_even_while_nothing_comes(caplog: pytest.LogCaptureFixture) -> None:
    report = ProgressReport("auto", io.StringIO(), log_interval=0.05, stall_after=0.0)
    assert report.mode == "log"  # not a terminal
    with caplog.at_level(logging.INFO, logger="ssnet_client.progress"), report:
        report(1, 4)
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)  # the ticker thread logs without any new event
        assert caplog.records, "no progress line while no event came"
        assert "1/4 events" in caplog.records[0].getMessage()
        assert "no event for" in caplog.records[0].getMessage()
        report(4, 4)
    assert caplog.records[-1].getMessage().startswith("4/4 events")  # and one at the end


def test_none_shows_nothing() -> None:
    stream = io.StringIO()
    with ProgressReport("none", stream) as report:
        report(1, 2)
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="progress mode"):
        ProgressReport("fancy", stream)
