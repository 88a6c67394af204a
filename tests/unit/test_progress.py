"""The job progress display: tqdm's bar on a terminal, periodic log lines otherwise (no sockets)."""

from __future__ import annotations

import io
import logging

import pytest

from ssnet_client.cli import ProgressReport


def test_the_bar_counts_events_and_closes_at_the_end() -> None:
    stream = io.StringIO()
    report = ProgressReport("bar", stream)
    for done in (1, 2, 2, 5):  # a stall (2 twice) and a jump (resumed chunks) are fine
        report(done, 5, done * 0.5)
    text = stream.getvalue()
    assert "5/5" in text and "event" in text and "100%" in text


def test_log_lines_when_not_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    report = ProgressReport("auto", io.StringIO())  # not a terminal: log lines
    assert report.mode == "log"
    with caplog.at_level(logging.INFO, logger="ssnet_client.cli"):
        report(1, 4, 0.5)
        report(2, 4, 1.0)  # within the log period: no line
        report(4, 4, 2.0)  # the end: always a line
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["1/4 events, 2.00 events/s, ETA 00:00:01", "4/4 events, 2.00 events/s, ETA 00:00:00"]
