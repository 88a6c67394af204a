"""Workers without a network: the dummy LArCV1 worker of the original design, echo and sleep."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from ssnet_common.protocol import Frame, frame_bytes, frame_len
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images, message_codec
from ssnet_worker.base import Worker

log = logging.getLogger(__name__)

MAX_SLEEP = 3600.0


class DummyLArCV1Worker(Worker):
    """Answers a LArCV1 image message with one product ``dummy``: zeros (float32) of the first product's shape,
    with the first product's metas and event ids unchanged.  Logs the names and shapes it received.
    """

    OUTPUT_NAME = "dummy"

    CRASH_STATUS = 70  # the exit status of a crash on request (``crash_on``)

    def __init__(self, *args: Any, delay: float = 0.0, crash_on: Optional[EventId] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay  # simulated processing time per request, for debugging a deployment and for tests
        self.crash_on = crash_on  # an event that kills the process, as a poison event would (tests, drills)

    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        products = decode_images(payload)
        if self.crash_on is not None and any(self.crash_on in product.ids for product in products):
            log.error("event %s: crashing, as --dummy-crash-on asks", self.crash_on)
            os._exit(self.CRASH_STATUS)  # no DISCONNECT, no cleanup: what a segfault looks like to the broker
        if self.delay:
            time.sleep(self.delay)
        log.info(
            "received %d image product(s): %s", len(products),
            ", ".join(f"{p.name} {p.array.shape} {p.array.dtype}" for p in products),
        )
        first = products[0]
        reply = ImageProduct(self.OUTPUT_NAME, first.items, np.zeros(first.array.shape, dtype=np.float32))
        return encode_images([reply], message_codec(payload))  # answer in the codec it was sent


class EchoWorker(Worker):
    """Replies with the request payload itself: the same frame objects, no copies (tests, benchmarks)."""

    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        return payload


class SleepWorker(Worker):
    """Sleeps, then echoes: payload frame 0 is the number of seconds as ASCII text (``b"2.5"``).

    Stands in for a long computation in tests (heartbeats while busy, shutdown during a request).
    """

    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        if not payload or frame_len(payload[0]) > 32:
            raise ValueError("the first payload frame must be a number of seconds (ASCII)")
        text = frame_bytes(payload[0]).decode("ascii", errors="replace")
        seconds = float(text)  # ValueError names the text
        if not 0 <= seconds <= MAX_SLEEP or math.isnan(seconds):
            raise ValueError(f"sleep must be between 0 and {MAX_SLEEP:g} seconds, got {text!r}")
        log.debug("sleeping %g s", seconds)
        time.sleep(seconds)
        return payload
