"""A worker with several slots (``ssnet-worker --slots M``): M broker sessions around one model.

Four clients at once, one event per request, against a 4-slot SSNet worker: every reply reaches the client that
asked, with the scores a 1-slot worker gives, and the worker ran the requests' images as shared forward passes.
A SIGKILLed multi-slot worker loses nothing: the broker re-queues the request of every slot.
"""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from ssnet_client import Client, ClientConfig
from ssnet_common.protocol import frame_bytes
from ssnet_data.larcv1 import LArCV1Reader
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images
from ssnet_worker.engines import engine_available

from .conftest import REPO, Stack, free_port, scrape, wait_until

TINY = REPO / "models" / "tiny"
DEMO = REPO / "data" / "demo" / "ssnet_demo.root"
CLIENTS = 4


def event_requests() -> list[list[bytes]]:
    """One request per (event, plane) of the demo file: each a single image, so batching can only come from
    several requests in hand at once."""
    requests = []
    for event in LArCV1Reader([str(DEMO)], "wire"):
        ids = EventId(event.run, event.subrun, event.event)
        for image in event.images:
            frames = encode_images([ImageProduct("wire", ((image.meta, ids),), image.pixels[np.newaxis])])
            requests.append([frame_bytes(frame) for frame in frames])
    return requests


def scores(reply: list[bytes]) -> list[tuple[str, tuple[EventId, ...], bytes]]:
    return [(p.name, p.ids, p.array.tobytes()) for p in decode_images(reply)]


@pytest.mark.skipif(not engine_available("onnx"), reason="needs the onnx engine (per-image BatchNorm statistics)")
def test_four_clients_share_forward_passes_and_get_their_own_one_slot_scores(stack: Stack) -> None:
    stack.broker()
    port = free_port()
    model = ["--model-dir", str(TINY), "--engine", "onnx", "--max-batch", "4"]
    stack.worker("ssnet", *model, "--slots", "4", "--batch-wait-ms", "200", service="ssnet", metrics_port=port)
    stack.worker("ssnet", *model, "--slots", "1", service="ssnet_one")
    stack.wait_for_service("ssnet")
    stack.wait_for_service("ssnet_one")
    requests = event_requests()
    with Client(stack.frontend, ClientConfig(timeout=60, retries=0)) as client:
        expected = [scores(client.request("ssnet_one", request)) for request in requests]

    got: dict[int, list[list[tuple[str, tuple[EventId, ...], bytes]]]] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(CLIENTS)

    def one_client(index: int) -> None:
        try:
            mine = requests[index::CLIENTS] * 2  # each client sends its share twice, one request at a time
            with Client(stack.frontend, ClientConfig(timeout=60, retries=0)) as client:
                start.wait(30)
                got[index] = [scores(client.request("ssnet", request)) for request in mine]
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    for index in range(CLIENTS):
        assert got[index] == expected[index::CLIENTS] * 2  # its own events, byte-identical to the 1-slot worker's

    samples = scrape(port)
    passes = sum(v for (name, _), v in samples.items() if name == "ssnet_worker_forward_batch_images_count")
    images = sum(v for (name, _), v in samples.items() if name == "ssnet_worker_forward_batch_images_sum")
    assert images == 2 * len(requests)
    assert passes < images, "four clients at once never shared a forward pass"


def test_a_killed_multi_slot_worker_loses_nothing(stack: Stack) -> None:
    port = free_port()
    stack.broker(metrics_port=port)
    victim = stack.worker("sleep", "--slots", "4", "--batch-wait-ms", "0")

    def busy() -> float | None:
        return scrape(port).get(("ssnet_broker_workers", (("service", "sleep"), ("state", "busy"))))

    wait_until(lambda: scrape(port).get(("ssnet_broker_workers", (("service", "sleep"), ("state", "idle")))) == 4,
               20, "the four slots of the sleep worker")
    bodies = [[b"2", b"request %d" % n] for n in range(4)]
    replies: list[list[bytes]] = []
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            with Client(stack.frontend, ClientConfig(timeout=60, retries=0, window=4)) as client:
                replies.extend([frame_bytes(f) for f in reply.payload]
                               for reply in client.imap(("sleep", body) for body in bodies))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        wait_until(lambda: busy() == 4, 20, "four requests in the victim's hands")
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        stack.worker("sleep", "--slots", "4", "--batch-wait-ms", "0")
    finally:
        asking.join(90)
    assert not failures, failures
    assert sorted(replies) == sorted(bodies)  # every request answered once, none lost
