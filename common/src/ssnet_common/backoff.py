"""The one back-off rule: the delay before the n-th try grows by ``factor`` from ``base`` up to ``cap``, less a
random fraction (``jitter``) of itself so that many processes retrying at once (a thousand client jobs polling for
the broker, workers reconnecting after a broker restart) spread out instead of retrying in lockstep.

Worker reconnection, the client's wait after a ``queue_full`` answer and the endpoint-file polling use it.  By
hand, not tenacity or backoff: those wrap blocking calls, and two of the three users are event loops that only
need the next delay (state machines that take ``now``).
"""

from __future__ import annotations

import math
import random
from typing import Callable

JITTER = 0.2  # the default random fraction taken off each delay


def backoff_delay(attempt: int, base: float, cap: float, *, factor: float = 2.0, jitter: float = JITTER,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before try ``attempt`` (1 for the first wait): ``base * factor**(attempt - 1)``, at most
    ``cap``, times ``1 - jitter * rng()``."""
    if not (0 < base <= cap and factor >= 1 and 0 <= jitter < 1 and math.isfinite(cap)):
        raise ValueError(f"need 0 < base <= cap, factor >= 1 and 0 <= jitter < 1; got {base}, {cap}, {factor}, "
                         f"{jitter}")
    exponent = max(attempt - 1, 0)
    grown = cap if exponent * math.log(factor) >= math.log(cap / base) else base * factor ** exponent
    return float(min(grown, cap) * (1.0 - jitter * rng()))


class Backoff:
    """:func:`backoff_delay` for successive tries: :meth:`next_delay` grows, :meth:`reset` starts over."""

    def __init__(self, base: float, cap: float, *, factor: float = 2.0, jitter: float = JITTER,
                 rng: Callable[[], float] = random.random) -> None:
        backoff_delay(1, base, cap, factor=factor, jitter=jitter, rng=rng)  # checks the arguments
        self.base, self.cap, self.factor, self.jitter, self.rng = base, cap, factor, jitter, rng
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, self.base, self.cap, factor=self.factor, jitter=self.jitter, rng=self.rng)

    def reset(self) -> None:
        self.attempt = 0


__all__ = ["JITTER", "Backoff", "backoff_delay"]
