"""The job machinery both job clients share (ssnet_client.jobs): fan-out, fan-in in order, resubmission, stats.

The real Client is exercised with sockets by tests/integration (test_larcv1_job, test_training_feed); here a
stand-in with the two methods FanOut uses (imap, request) fixes the order of outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import pytest

from ssnet_client.base import Reply
from ssnet_client.jobs import FanOut, JobStats, Request, RetryPolicy
from ssnet_common.errors import RequestError, WorkerError, WorkerLost, worker_lost_message


class Scripted:
    """Answers each request with its payload reversed, except the (service, payload) pairs in ``fail``, whose
    first ``n`` attempts fail with the given error."""

    def __init__(self, fail: Optional[dict[tuple[str, bytes], list[RequestError]]] = None) -> None:
        self.fail = fail or {}
        self.sent: list[tuple[str, bytes]] = []
        self.window: Optional[int] = None

    def _answer(self, service: str, payload: Sequence[Any]) -> Union[Reply, RequestError]:
        key = (service, bytes(payload[0]))
        self.sent.append(key)
        errors = self.fail.get(key)
        if errors:
            return errors.pop(0)
        return Reply(service, len(self.sent), [bytes(payload[0])[::-1]], 0.001 * len(self.sent), 1)

    def imap(self, requests: Iterable[Request], *, window: Optional[int] = None, timeout: Optional[float] = None,
             return_exceptions: bool = False) -> Iterator[Union[Reply, RequestError]]:
        self.window = window
        for service, payload in requests:
            yield self._answer(service, payload)

    def request(self, service: str, payload: Sequence[Any], timeout: Optional[float] = None) -> list[Any]:
        outcome = self._answer(service, payload)
        if isinstance(outcome, RequestError):
            raise outcome
        return list(outcome.payload)


def units(*spec: list[str]) -> list[tuple[int, list[Request]]]:
    return [(n, [(service, [f"{n}{service}".encode()]) for service in services]) for n, services in enumerate(spec)]


def test_units_come_back_in_order_with_replies_per_request() -> None:
    stats = JobStats()
    fan: FanOut[int] = FanOut(Scripted(), stats, describe=str, window=3)  # type: ignore[arg-type]
    got = [(unit, [bytes(r.payload[0]) for r in replies])
           for unit, replies in fan.run(units(["a", "b"], [], ["a"], [], []))]
    assert got == [(0, [b"a0", b"b0"]), (1, []), (2, [b"a2"]), (3, []), (4, [])]
    assert stats.requests == 3 and stats.resubmits == 0
    assert stats.bytes_sent == stats.bytes_received == 6 and len(stats.round_trips) == 3


def lost(workers: int) -> WorkerLost:
    return WorkerLost(f"service 'a', request 1: worker_lost: {worker_lost_message(workers, 'a')}", service="a")


def test_a_lost_request_is_sent_again_until_its_workers_are_used_up() -> None:
    client = Scripted({("a", b"1a"): [lost(1), lost(1)]})
    stats = JobStats()
    fan: FanOut[int] = FanOut(client, stats, describe=str, policy=RetryPolicy(3))  # type: ignore[arg-type]
    got = [unit for unit, _ in fan.run(units(["a"], ["a"], ["a"]))]
    assert got == [0, 1, 2] and stats.resubmits == 2
    assert client.sent.count(("a", b"1a")) == 3

    client = Scripted({("a", b"1a"): [lost(1), lost(1), lost(1)]})
    fan = FanOut(client, JobStats(), describe=str, policy=RetryPolicy(3))  # type: ignore[arg-type]
    with pytest.raises(WorkerLost):
        list(fan.run(units(["a"], ["a"])))
    assert client.sent.count(("a", b"1a")) == 3


def test_a_worker_lost_reply_counts_the_workers_the_broker_tried() -> None:
    assert lost(3).workers == 3 and WorkerLost("no count here").workers == 1
    client = Scripted({("a", b"0a"): [lost(3), lost(3)]})
    fan: FanOut[int] = FanOut(client, JobStats(), describe=str, policy=RetryPolicy(5),  # type: ignore[arg-type]
                              return_exceptions=True)
    [(_, [error])] = list(fan.run(units(["a"])))
    assert isinstance(error, WorkerLost) and client.sent.count(("a", b"0a")) == 2  # 3 + 3 workers >= 5


def test_a_worker_error_is_not_sent_again() -> None:
    client = Scripted({("a", b"0a"): [WorkerError("bad image", service="a")]})
    stats = JobStats()
    fan: FanOut[int] = FanOut(client, stats, describe=str, policy=RetryPolicy(5))  # type: ignore[arg-type]
    with pytest.raises(WorkerError, match="bad image"):
        list(fan.run(units(["a"])))
    assert stats.resubmits == 0 and client.sent == [("a", b"0a")]


def test_stats_text_and_waits() -> None:
    stats = JobStats(unit="batch", started=100.0)
    stats.handed(4, 1000, waited_since=100.0)
    stats.handed(4, 1000, waited_since=stats.last)
    assert stats.done == 2 and stats.entries == 8 and stats.nbytes == 2000
    assert stats.wait >= stats.first_wait >= 0 and stats.elapsed >= stats.wait
    text = stats.text()
    assert text.startswith("2 batches (8 entries) in ") and "0 sent again" in text and "after the first batch" in text
    events = JobStats(unit="event", resumed=3, requests=2, round_trips=[0.01, 0.02])
    events.handed(1)
    assert events.text().startswith("1 events in ") and "after 3 from checkpoints" in events.text()
    assert "round trip p50 15.0 ms" in events.text() and "waited" not in events.text()
