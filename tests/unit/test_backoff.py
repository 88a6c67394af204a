"""The one back-off rule (ssnet_common.backoff): growth, cap, jitter, reset."""

from __future__ import annotations

import pytest

from ssnet_common.backoff import JITTER, Backoff, backoff_delay

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)


def test_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(1.0, 32.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 32, 32]
    backoff.reset()
    assert [backoff.next_delay() for _ in range(3)] == [1, 2, 4]


def test_a_cap_between_steps_and_another_factor() -> None:
    assert [backoff_delay(n, 0.5, 3.0, jitter=0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [backoff_delay(n, 0.5, 5.0, factor=1.5, jitter=0.0) for n in range(1, 4)] == [0.5, 0.75, 1.125]
    assert backoff_delay(10_000, 0.5, 5.0, jitter=0.0) == 5.0  # no overflow, however many tries


def test_jitter_takes_a_random_fraction_off() -> None:
    assert backoff_delay(3, 1.0, 32.0, rng=lambda: 1.0) == 4.0 * (1 - JITTER)
    assert backoff_delay(3, 1.0, 32.0, rng=lambda: 0.0) == 4.0
    delays = {Backoff(1.0, 32.0).next_delay() for _ in range(50)}
    assert len(delays) > 1 and all(1 - JITTER <= d <= 1.0 for d in delays)  # processes spread out


@pytest.mark.parametrize(("base", "cap", "factor", "jitter"),
                         [(0.0, 1.0, 2, 0), (2.0, 1.0, 2, 0), (-1.0, 4.0, 2, 0), (1, 2, 0.5, 0), (1, 2, 2, 1.0)])
def test_rejects_bad_arguments(base: float, cap: float, factor: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap, factor=factor, jitter=jitter)
