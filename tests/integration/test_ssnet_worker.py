"""The SSNet chain end to end: LArCV1 file → client → broker → SSNetWorker (tiny model) → output LArCV1 file.

Runs with the engine ``auto`` picks here (ONNX Runtime on the host), and the batching of per-image engines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ssnet_client import Client, ClientConfig, WorkerError
from ssnet_client.larcv1_client import LArCV1JobConfig, SimpleLArCV1Client
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import LArCV1Reader, read_annotation
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, encode_images
from ssnet_data.provenance import OBJECT_NAME as PROVENANCE
from ssnet_data.provenance import file_digest
from ssnet_worker.engines import engine_available, make_engine
from ssnet_worker.ssnet import Preprocessing
from ssnet_worker.tiling import Stitcher, tile_grid

from .conftest import REPO, Stack, free_port, scrape

TINY = REPO / "models" / "tiny"
DEMO = REPO / "data" / "demo" / "ssnet_demo.root"
ENGINE = next((name for name in ("onnx", "caffe", "opencv") if engine_available(name)), "onnx")

pytestmark = pytest.mark.skipif(not engine_available(ENGINE), reason="no SSNet engine is importable")


def direct_scores(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the worker should send for one image: the engine called directly, float16, masked."""
    engine = make_engine(ENGINE, TINY / "tiny_uresnet.prototxt", TINY / "tiny_uresnet.caffemodel")
    prepared = Preprocessing().apply(image)
    scores = engine.forward(prepared[np.newaxis, np.newaxis])[0]
    below = prepared < 10
    return (np.where(below, 0, scores[1]).astype(np.float16), np.where(below, 0, scores[2]).astype(np.float16))


def start_ssnet(stack: Stack, *extra: str, service: str = "ssnet", metrics_port: int = 0) -> None:
    stack.worker("ssnet", "--model-dir", str(TINY), "--engine", ENGINE, *extra, service=service,
                 metrics_port=metrics_port)


def run_job(stack: Stack, output: Path, **options: object) -> None:
    config = LArCV1JobConfig(inputs=(str(DEMO),), output=str(output), producers=("wire",), service="ssnet",
                             broker=stack.frontend, client=ClientConfig(timeout=60), **options)  # type: ignore[arg-type]
    SimpleLArCV1Client(config).run()


def test_output_file_equals_direct_engine_calls(stack: Stack, tmp_path: Path) -> None:
    metrics_port = free_port()
    stack.broker()
    start_ssnet(stack, metrics_port=metrics_port)
    stack.wait_for_service("ssnet")
    output = tmp_path / "ssnet.root"
    run_job(stack, output)

    inputs = list(LArCV1Reader([str(DEMO)], "wire"))
    result = list(LArCV1Reader([str(output)], producers=["ssnet_shower", "ssnet_track"]))
    assert [(e.run, e.subrun, e.event) for e in result] == [(e.run, e.subrun, e.event) for e in inputs]
    for source, out in zip(inputs, result):
        for index, image in enumerate(source.images):
            shower, track = direct_scores(image.pixels)
            assert out.products["ssnet_shower"][index].meta == image.meta
            assert out.products["ssnet_track"][index].meta == image.meta
            np.testing.assert_array_equal(out.products["ssnet_shower"][index].pixels, shower.astype(np.float32))
            np.testing.assert_array_equal(out.products["ssnet_track"][index].pixels, track.astype(np.float32))
    samples = scrape(metrics_port)
    labels = {"plane": "0", "engine": ENGINE, "device": "cpu"}

    def key(name: str, **extra: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted({**labels, **extra}.items()))

    assert samples[key("ssnet_worker_inference_seconds_count")] == len(inputs)
    assert key("ssnet_worker_model_load_seconds", plane="2") in samples
    assert samples[key("ssnet_worker_engine_info", precision="float32")] == 1


@pytest.mark.skipif(not engine_available("onnx"), reason="needs the onnx engine (per-image BatchNorm statistics)")
def test_batched_requests_run_as_one_pass_and_give_the_same_file(stack: Stack, tmp_path: Path) -> None:
    """--batch-size 4 events per request: each plane's 4 images run as one forward pass, results unchanged."""
    metrics_port = free_port()
    stack.broker()
    stack.worker("ssnet", "--model-dir", str(TINY), "--engine", "onnx", "--max-batch", "4", service="ssnet",
                 metrics_port=metrics_port)
    stack.wait_for_service("ssnet")
    one, four = tmp_path / "one.root", tmp_path / "four.root"
    run_job(stack, one, batch_size=1)
    run_job(stack, four, batch_size=4)
    for a, b in zip(LArCV1Reader([str(one)], producers=["ssnet_shower", "ssnet_track"]),
                    LArCV1Reader([str(four)], producers=["ssnet_shower", "ssnet_track"])):
        assert (a.run, a.subrun, a.event) == (b.run, b.subrun, b.event)
        for name in ("ssnet_shower", "ssnet_track"):
            for x, y in zip(a.products[name], b.products[name]):
                assert x.meta == y.meta
                # float16 scores: a batch may differ from batch 1 by float32 rounding, at most one float16 step
                np.testing.assert_allclose(x.pixels, y.pixels, rtol=0, atol=1e-3)
    samples = scrape(metrics_port)
    batches = {dict(labels)["plane"]: value for (name, labels), value in samples.items()
               if name == "ssnet_worker_forward_batch_images_sum"}
    counts = {dict(labels)["plane"]: value for (name, labels), value in samples.items()
              if name == "ssnet_worker_forward_batch_images_count"}
    entries = len(list(LArCV1Reader([str(DEMO)], "wire")))
    assert batches == {"0": 2 * entries, "1": 2 * entries, "2": 2 * entries}  # every image, in both jobs
    assert counts["0"] == entries + 1  # one pass per image in the first job, one pass of 4 in the second


def test_per_plane_requests_give_the_same_file(stack: Stack, tmp_path: Path) -> None:
    stack.broker()
    start_ssnet(stack)
    for plane in range(3):
        start_ssnet(stack, service=f"ssnet_plane{plane}")
    for service in ("ssnet", "ssnet_plane0", "ssnet_plane1", "ssnet_plane2"):
        stack.wait_for_service(service)
    whole, split = tmp_path / "whole.root", tmp_path / "split.root"
    run_job(stack, whole)
    run_job(stack, split, per_plane=True)
    for a, b in zip(LArCV1Reader([str(whole)], producers=["ssnet_shower", "ssnet_track"]),
                    LArCV1Reader([str(split)], producers=["ssnet_shower", "ssnet_track"])):
        assert (a.run, a.subrun, a.event) == (b.run, b.subrun, b.event)
        for name in ("ssnet_shower", "ssnet_track"):
            assert [i.meta for i in a.products[name]] == [i.meta for i in b.products[name]]
            for x, y in zip(a.products[name], b.products[name]):
                np.testing.assert_array_equal(x.pixels, y.pixels)


def test_whole_event_runs_as_tiles_each_pixel_from_its_tile(shared: Path, tmp_path: Path) -> None:
    """A whole MicroBooNE event (planes of 1008x2400, 1008x2400, 1008x3456) through ssnet-local: it completes, the
    output planes have the input's shapes and metas, and every pixel is the engine's score for the tile the
    worker took it from (512x512 tiles, the tiny net's declared input; center stitching)."""
    full = shared / "data" / "larcv1" / "ssnet_sample_fullevent.root"
    output = tmp_path / "full.root"
    result = subprocess.run(
        [sys.executable, "-m", "ssnet_client.local", "--kind", "ssnet", "--engine", ENGINE, "--workers", "1",
         "--input", str(full), "--output", str(output), "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    source = next(iter(LArCV1Reader([str(full)], "wire")))
    out = next(iter(LArCV1Reader([str(output)], producers=["ssnet_shower", "ssnet_track"])))
    assert [i.meta.shape for i in source.images] == [(1008, 2400), (1008, 2400), (1008, 3456)]
    engine = make_engine(ENGINE, TINY / "tiny_uresnet.prototxt", TINY / "tiny_uresnet.caffemodel")
    for index, image in enumerate(source.images):
        shower, track = out.products["ssnet_shower"][index], out.products["ssnet_track"][index]
        assert shower.meta == track.meta == image.meta
        prepared = Preprocessing().apply(image.pixels)
        expected = [np.zeros(prepared.shape, np.float32), np.zeros(prepared.shape, np.float32)]
        stitcher = Stitcher(expected, "center")
        for tile in tile_grid(prepared.shape, (512, 512), (0, 0)):
            scores = engine.forward(prepared[tile.region][np.newaxis, np.newaxis])[0]
            stitcher.paint(tile, [scores[1], scores[2]])
        below = prepared < 10
        for got, want in zip((shower.pixels, track.pixels), expected):
            want[below] = 0
            # float16 on the wire; a tile batched with others may differ from alone by float32 rounding
            np.testing.assert_allclose(got, want.astype(np.float16).astype(np.float32), rtol=0, atol=1e-3)


def test_image_the_net_cannot_take_gets_an_error_reply_naming_it(stack: Stack) -> None:
    stack.broker()
    start_ssnet(stack, "--output-dtype", "float32")
    stack.wait_for_service("ssnet")
    meta = ImageMeta(width=30, height=180, rows=30, cols=30, origin_x=0, origin_y=2580, plane=1)
    bad = ImageProduct("wire", ((meta, EventId(7, 8, 9)),), np.ones((1, 30, 30), np.float32) * 50)
    meta_ok = ImageMeta(width=64, height=384, rows=64, cols=64, origin_x=0, origin_y=2784, plane=2)
    good = ImageProduct("wire", ((meta_ok, EventId(7, 8, 9)),), np.full((1, 64, 64), 50, np.float32))
    with Client(stack.frontend, ClientConfig(timeout=30, retries=0)) as client:
        with pytest.raises(WorkerError, match=r"plane 1, event \(7,8,9\).*30") as error:
            client.request("ssnet", encode_images([bad]))
        assert "image 0 of product 'wire'" in str(error.value)
        products = decode_images(client.request("ssnet", encode_images([good])))  # the worker is still serving
    assert [p.name for p in products] == ["ssnet_shower", "ssnet_track"]
    assert products[0].array.dtype == np.float32 and products[0].ids == (EventId(7, 8, 9),)


def test_image_smaller_than_a_tile_runs_whole(stack: Stack) -> None:
    stack.broker()
    start_ssnet(stack, "--output-dtype", "float32")
    stack.wait_for_service("ssnet")
    rng = np.random.default_rng(5)
    pixels = (rng.random((1, 200, 304)) * 80).astype(np.float32)
    meta = ImageMeta(width=304, height=1200, rows=200, cols=304, origin_x=0, origin_y=3600, plane=0)
    with Client(stack.frontend, ClientConfig(timeout=30, retries=0)) as client:
        products = decode_images(client.request("ssnet", encode_images([
            ImageProduct("wire", ((meta, EventId(1, 1, 1)),), pixels)])))
    shower, _ = direct_scores(pixels[0])
    np.testing.assert_allclose(products[0].array[0], shower.astype(np.float32), rtol=0, atol=1e-3)


@pytest.mark.skipif(not engine_available("opencv"), reason="needs OpenCV")
def test_opencv_never_sees_a_view_that_would_crash_it(stack: Stack) -> None:
    """OpenCV DNN segfaults on a whole 1008x3456 plane: untiled, that image is an error reply naming it and the
    worker stays up; tiled (the default), it runs."""
    stack.broker()
    stack.worker("ssnet", "--ssnet-model-dir", str(TINY), "--ssnet-engine", "opencv", "--ssnet-tile", "none",
                 service="ssnet_whole")
    stack.worker("ssnet", "--ssnet-model-dir", str(TINY), "--ssnet-engine", "opencv", service="ssnet")
    stack.wait_for_service("ssnet_whole")
    stack.wait_for_service("ssnet")
    meta = ImageMeta(width=3456, height=6048, rows=1008, cols=3456, origin_x=0, origin_y=8448, plane=2)
    view = ImageProduct("wire", ((meta, EventId(3, 2, 1)),), np.full((1, 1008, 3456), 20, np.float32))
    small_meta = ImageMeta(width=64, height=384, rows=64, cols=64, origin_x=0, origin_y=2784, plane=2)
    small = ImageProduct("wire", ((small_meta, EventId(3, 2, 1)),), np.full((1, 64, 64), 20, np.float32))
    with Client(stack.frontend, ClientConfig(timeout=120, retries=0)) as client:
        with pytest.raises(WorkerError, match=r"image 0 of product 'wire' \(plane 2, event \(3,2,1\)\).*1008x3456.*"
                                              r"crashes the process"):
            client.request("ssnet_whole", encode_images([view]))
        assert decode_images(client.request("ssnet_whole", encode_images([small])))[0].array.shape == (1, 64, 64)
        tiled = decode_images(client.request("ssnet", encode_images([view])))
    assert tiled[0].array.shape == (1, 1008, 3456) and np.isfinite(tiled[0].array).all()
    assert all(proc.poll() is None for _, proc in stack.procs)


def test_a_plane_the_worker_does_not_serve_is_an_error_reply(stack: Stack) -> None:
    stack.broker()
    start_ssnet(stack, service="ssnet_plane0")
    stack.wait_for_service("ssnet_plane0")
    meta = ImageMeta(width=64, height=384, rows=64, cols=64, origin_x=0, origin_y=2784, plane=2)
    product = ImageProduct("wire", ((meta, EventId(1, 2, 3)),), np.zeros((1, 64, 64), np.float32))
    with Client(stack.frontend, ClientConfig(timeout=30, retries=0)) as client, \
            pytest.raises(WorkerError, match=r"serves plane\(s\) \[0\]"):
        client.request("ssnet_plane0", encode_images([product]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model-dir", "/nonexistent"], "model directory '/nonexistent' does not exist"),
        (["--model-dir", str(TINY), "--weights", "missing.caffemodel"], "weights of plane 0"),
        (["--model-dir", str(TINY), "--planes", "3"], "no weights for plane(s) [3]"),
    ],
)
def test_bad_model_configuration_is_a_clear_startup_error(extra: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ssnet_worker", "--kind", "ssnet", "--engine", ENGINE, "--broker", "ipc:///tmp/none",
         *extra], capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def other_weights(path: Path) -> Path:
    """The tiny model's weights with one value changed: another weight file for the same net."""
    from ssnet_worker.caffe.proto import net_parameter

    model = net_parameter()
    model.ParseFromString((TINY / "tiny_uresnet.caffemodel").read_bytes())
    blob = next(layer.blobs[0] for layer in model.layer if layer.blobs)
    blob.data[0] += 0.5
    path.write_bytes(model.SerializeToString())
    return path


def test_the_output_names_what_produced_it_and_workers_that_disagree(stack: Stack, tmp_path: Path) -> None:
    """Every reply carries the worker's provenance; the output file stores, per plane, the records and their event
    counts as a TNamed (uproot reads it here; ROOT in the container tests' dumps), and a job whose workers ran
    different weights for a plane says so in its summary."""
    stack.broker()
    start_ssnet(stack)
    stack.wait_for_service("ssnet")
    output = tmp_path / "one.root"
    run_job(stack, output)
    log = json.loads(read_annotation(output, PROVENANCE) or "{}")
    assert [(p["plane"], p["events"]) for p in log["planes"]] == [(0, 4), (1, 4), (2, 4)]
    record = log["planes"][0]["record"]
    assert record["weights"] == {"file": "tiny_uresnet.caffemodel",
                                 "sha256": file_digest(TINY / "tiny_uresnet.caffemodel")}
    assert record["prototxt"]["sha256"] == file_digest(TINY / "tiny_uresnet.prototxt")
    assert (record["engine"], record["device"], record["precision"]) == (ENGINE, "cpu", "float32")
    assert record["software"].startswith("ssnet-worker ") and log["disagreements"] == []

    # A second worker with other weights for every plane: the two share the events.
    stack.worker("ssnet", "--ssnet-model-dir", str(TINY), "--ssnet-engine", ENGINE, "--ssnet-weights",
                 str(other_weights(tmp_path / "v2.caffemodel")))
    deadline = time.monotonic() + 120
    while True:  # until the broker has two workers of the service (MMI counts services, not workers: ask the job)
        mixed = tmp_path / "mixed.root"
        config = LArCV1JobConfig(inputs=(str(DEMO),), output=str(mixed), producers=("wire",), service="ssnet",
                                 broker=stack.frontend, force=True, client=ClientConfig(timeout=60, window=1))
        summary = SimpleLArCV1Client(config).run()
        if summary.notes or time.monotonic() > deadline:
            break
    assert summary.notes and summary.notes[0].startswith("workers disagree on plane 0: weights tiny_uresnet.caffemodel")
    assert "v2.caffemodel" in summary.notes[0] and "workers disagree" in summary.text()
    stored = json.loads(read_annotation(mixed, PROVENANCE) or "{}")
    assert stored["disagreements"] == summary.notes
    assert sum(p["events"] for p in stored["planes"] if p["plane"] == 0) == 4
