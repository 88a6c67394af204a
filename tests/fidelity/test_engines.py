"""Every engine against genuine Caffe: the tiny net's reference outputs, SSNet cross-checks, batches, clear errors.

Runs with whichever engines can be imported: torch, onnx and OpenCV on the host; onnx, genuine Caffe and OpenCV
in the worker image (``tests/fidelity/run-in-worker-image.sh``), where the comparisons with genuine Caffe run.
torch against genuine Caffe on SSNet and on one small net per layer type runs on the host from references the
worker image computes (``tests/container/test_fidelity.py``).  The models come from the shared material:
``$SSNET_SHARED`` or ``../shared`` beside the checkout.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest

from ssnet_common.errors import ConfigError
from ssnet_worker.engines import ENGINE_NAMES, ENGINES, Engine, InputShapeError, engine_available, make_engine

from .layer_nets import sparse_adc_image as _plane

SHARED = Path(os.environ.get("SSNET_SHARED") or Path(__file__).resolve().parents[2].parent / "shared")
TINY = SHARED / "models" / "tiny"
SSNET = SHARED / "models" / "ssnet"
TINY_NET = (TINY / "tiny_uresnet.prototxt", TINY / "tiny_uresnet.caffemodel")
SSNET_NET = (SSNET / "dllee_ssnet2018.prototxt", SSNET / "ssnet_random_plane0.caffemodel")

AVAILABLE = [name for name in ENGINE_NAMES if engine_available(name)]
PER_IMAGE = [name for name in AVAILABLE if ENGINES[name].per_image]
pytestmark = [
    pytest.mark.py39,
    pytest.mark.skipif(not AVAILABLE, reason="no engine is importable here; run tests/fidelity/run-in-worker-image.sh"),
    pytest.mark.skipif(not TINY_NET[1].is_file(), reason=f"shared models not found under {SHARED} "
                       "(set SSNET_SHARED or keep ../shared beside the checkout)"),
]
caffe_and = pytest.mark.skipif("caffe" not in AVAILABLE, reason="needs genuine Caffe (the worker image)")
engines = pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.skipif(name not in AVAILABLE, reason=f"engine {name} not importable"))
    for name in ENGINE_NAMES
])


def report(text: str) -> None:
    """Numbers worth seeing in the log (``pytest -rP`` shows them)."""
    sys.stdout.write(text + "\n")


def sparse_adc_image(seed: int, height: int = 512, width: int = 512) -> np.ndarray:
    """A 1x1xHxW image like a LArTPC wire plane (``layer_nets.sparse_adc_image``)."""
    return _plane(np.random.RandomState(seed), height, width)[None, None]


@pytest.fixture(scope="module")
def tiny_engines() -> Iterator[Dict[str, Engine]]:
    yield {name: make_engine(name, *TINY_NET) for name in AVAILABLE}


@pytest.fixture(scope="module")
def reference() -> Dict[str, np.ndarray]:
    with np.load(TINY / "reference_io.npz") as data:
        return {"inputs": data["inputs"], "softmax": data["softmax"], "batch_size": data["batch_size"]}


@engines
def test_tiny_net_reproduces_genuine_caffe(name: str, tiny_engines: Dict[str, Engine],
                                           reference: Dict[str, np.ndarray]) -> None:
    engine = tiny_engines[name]
    assert int(reference["batch_size"]) == 1
    assert engine.device == "cpu"
    worst = 0.0
    for i, image in enumerate(reference["inputs"]):
        out = engine.forward(image[None])
        assert out.shape == (1, 3, 64, 64) and out.dtype == np.float32
        diff = float(np.abs(out[0] - reference["softmax"][i]).max())
        assert diff <= 1e-4, f"image {i}: max |{name} - genuine Caffe| = {diff:.3g}"
        worst = max(worst, diff)
    report(f"tiny net, {name}: max |diff| to the genuine-Caffe reference {worst:.2e} ({engine.describe()})")


@engines
def test_a_batch_gives_each_image_its_batch_one_result(name: str, tiny_engines: Dict[str, Engine],
                                                       reference: Dict[str, np.ndarray]) -> None:
    """Four different images in one call: each equals its batch-1 result (per-image engines: one pass)."""
    engine = tiny_engines[name]
    inputs = reference["inputs"]
    singles = np.concatenate([engine.forward(inputs[i:i + 1]) for i in range(len(inputs))])
    batch = engine.forward(inputs)
    assert batch.shape == singles.shape == (4, 3, 64, 64)
    diff = float(np.abs(batch - singles).max())
    assert diff <= 1e-5, f"{name}: batch of 4 vs one by one: {diff:.3g}"
    assert float(np.abs(batch - reference["softmax"]).max()) <= 1e-4


@engines
def test_forward_leaves_no_state_between_images(name: str, tiny_engines: Dict[str, Engine],
                                                reference: Dict[str, np.ndarray]) -> None:
    """Batch size 1, image by image: the same image gives the same output whatever ran before it."""
    engine = tiny_engines[name]
    first = engine.forward(reference["inputs"][:1])
    engine.forward(reference["inputs"][1:2])
    engine.forward(np.zeros((1, 1, 48, 64), np.float32))  # another size in between
    np.testing.assert_array_equal(engine.forward(reference["inputs"][:1]), first)


@pytest.mark.skipif(len(AVAILABLE) < 2, reason="needs two engines")
@pytest.mark.parametrize("size", [(48, 64), (64, 32), (60, 60), (128, 96)])
def test_tiny_net_engines_agree_on_other_sizes(size: tuple, tiny_engines: Dict[str, Engine]) -> None:
    image = sparse_adc_image(seed=size[0] * 1000 + size[1], height=size[0], width=size[1])
    outs = {name: engine.forward(image) for name, engine in tiny_engines.items()}
    first = AVAILABLE[0] if "caffe" not in outs else "caffe"
    for name, out in outs.items():
        assert out.shape == (1, 3, *size)
        assert float(np.abs(out - outs[first]).max()) <= 1e-4, (name, first)


@pytest.mark.skipif("opencv" not in AVAILABLE, reason="engine opencv not importable")
def test_shape_check_matches_what_opencv_accepts(tiny_engines: Dict[str, Engine]) -> None:
    """The shape check (which guards genuine Caffe from aborting) agrees with OpenCV's own, size by size."""
    import cv2

    engine = tiny_engines["opencv"]
    net = cv2.dnn.readNetFromCaffe(*map(str, TINY_NET))
    with _stderr_to_devnull():  # OpenCV logs every size it cannot take as an ERROR
        _compare_sizes(engine, net, cv2)


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _compare_sizes(engine: Engine, net: Any, cv2: Any) -> None:
    for size in range(4, 81):
        image = np.zeros((1, 1, size, size + 4), np.float32)
        try:
            net.setInput(image)
            opencv_ok = net.forward("softmax").shape == (1, 3, size, size + 4)
        except cv2.error:
            opencv_ok = False
        try:
            engine.check_input(image)
            check_ok = True
        except InputShapeError:
            check_ok = False
        assert check_ok == opencv_ok, f"size {size}x{size + 4}: check says {check_ok}, OpenCV {opencv_ok}"


@pytest.fixture(scope="module")
def ssnet_outputs() -> Dict[str, np.ndarray]:
    if not SSNET_NET[1].is_file():
        pytest.skip(f"SSNet model not found under {SSNET}")
    image = sparse_adc_image(seed=2018)
    outs = {}
    for name in AVAILABLE:  # one engine at a time: genuine Caffe peaks near 6 GB on SSNet
        engine = make_engine(name, *SSNET_NET)
        outs[name] = engine.forward(image)
        report(f"SSNet, {name}: {engine.describe()}")
        del engine
    nonzero = int(np.count_nonzero(image))
    report(f"SSNet input: 512x512, {nonzero} nonzero pixels ({100 * nonzero / image.size:.2f} %), "
           f"ADC {image[image > 0].min():.0f}-{image.max():.0f}")
    return outs


# Tolerances against genuine Caffe on SSNet (512x512, random weights): (max |diff|, share of pixels whose top class
# agrees).  OpenCV fuses layers and reorders sums: it is the loosest.
SSNET_TOLERANCE = {"torch": (1e-4, 0.9999), "onnx": (1e-3, 0.9999), "opencv": (2e-3, 0.999)}


def _compare(name: str, out: np.ndarray, ref: np.ndarray, against: str) -> tuple:
    diff = np.abs(out - ref)
    same_class = float((out.argmax(axis=1) == ref.argmax(axis=1)).mean())
    report(f"SSNet {name} vs {against}: max |diff| {diff.max():.2e}, mean {diff.mean():.2e}, top class agrees on "
           f"{100 * same_class:.4f} % of pixels")
    return float(diff.max()), same_class


@caffe_and
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ENGINE_NAMES if n != "caffe"])
def test_ssnet_engines_reproduce_genuine_caffe(name: str, ssnet_outputs: Dict[str, np.ndarray]) -> None:
    if name not in ssnet_outputs:
        pytest.skip(f"engine {name} not importable here")
    caffe_out = ssnet_outputs["caffe"]
    classes = np.bincount(caffe_out.argmax(axis=1).ravel(), minlength=3)
    report(f"caffe's classes: {classes.tolist()}")
    worst, same_class = _compare(name, ssnet_outputs[name], caffe_out, "genuine Caffe")
    limit, agreement = SSNET_TOLERANCE[name]
    assert ssnet_outputs[name].shape == caffe_out.shape == (1, 3, 512, 512)
    assert worst <= limit and same_class >= agreement


@pytest.mark.skipif(not {"torch", "onnx"} <= set(AVAILABLE), reason="needs torch and onnx (the host)")
@pytest.mark.slow
def test_ssnet_torch_and_onnx_agree(ssnet_outputs: Dict[str, np.ndarray]) -> None:
    worst, same_class = _compare("onnx", ssnet_outputs["onnx"], ssnet_outputs["torch"], "torch")
    assert worst <= 1e-3 and same_class >= 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("name", PER_IMAGE)
def test_ssnet_batch_of_four_gives_each_image_its_batch_one_result(name: str) -> None:
    if not SSNET_NET[1].is_file():
        pytest.skip(f"SSNet model not found under {SSNET}")
    engine = make_engine(name, *SSNET_NET)
    images = np.concatenate([sparse_adc_image(seed) for seed in (1, 2, 3, 4)])
    images[3] *= 0.5  # another scale: BatchNorm statistics differ from image to image
    batch = engine.forward(images)
    singles = np.concatenate([engine.forward(images[i:i + 1]) for i in range(4)])
    diff = float(np.abs(batch - singles).max())
    report(f"SSNet {name}: batch of 4 vs each alone: max |diff| {diff:.2e}")
    assert diff <= 1e-5


@engines
def test_wrong_input_shapes_are_clear_errors(name: str, tiny_engines: Dict[str, Engine]) -> None:
    engine = tiny_engines[name]
    with pytest.raises(InputShapeError, match=r"1x1x63x63.*Concat.*H=63 does not fit the net.*60 or 64"):
        engine.forward(np.zeros((1, 1, 63, 63), np.float32))
    with pytest.raises(InputShapeError, match=r"shape 2x2x64x64: expected Nx1xHxW"):
        engine.forward(np.zeros((2, 2, 64, 64), np.float32))
    with pytest.raises(InputShapeError, match=r"shape 64x64: expected Nx1xHxW"):
        engine.forward(np.zeros((64, 64), np.float32))
    with pytest.raises(InputShapeError, match=r"too small|smaller than"):
        engine.forward(np.zeros((1, 1, 2, 2), np.float32))
    # the engine still works afterwards
    assert engine.forward(np.zeros((1, 1, 64, 64), np.float32)).shape == (1, 3, 64, 64)


@engines
def test_ssnet_wrong_size_is_refused_before_the_engine_runs(name: str) -> None:
    if not SSNET_NET[1].is_file():
        pytest.skip(f"SSNet model not found under {SSNET}")
    engine = make_engine(name, *SSNET_NET)
    with pytest.raises(InputShapeError, match=r"1x1x500x512.*H=500 does not fit the net.*480 or 512"):
        engine.forward(np.zeros((1, 1, 500, 512), np.float32))


@engines
def test_missing_or_mismatched_model_files_are_config_errors(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.caffemodel"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: no such file")):
        make_engine(name, TINY_NET[0], missing)
    with pytest.raises(ConfigError, match=r"missing\.prototxt: no such file"):
        make_engine(name, tmp_path / "missing.prototxt", TINY_NET[1])
    with pytest.raises(ConfigError, match="not a binary Caffe model"):
        make_engine(name, TINY_NET[0], TINY_NET[0])
    with pytest.raises(ConfigError, match="not a text prototxt"):
        make_engine(name, TINY_NET[1], TINY_NET[1])
    if SSNET_NET[1].is_file():  # genuine Caffe aborts and OpenCV crashes on these without the check
        with pytest.raises(ConfigError, match=r"layer 'conv0' has weights of shape 16x1x7x7, 16 but .* needs 4x1x7x7"):
            make_engine(name, TINY_NET[0], SSNET_NET[1])
        with pytest.raises(ConfigError, match="belong together"):
            make_engine(name, SSNET_NET[0], TINY_NET[1])
    with pytest.raises(ConfigError, match="no blob named 'nope'"):
        make_engine(name, *TINY_NET, output="nope")


@engines
def test_threads_are_set_and_reported(name: str) -> None:
    engine = make_engine(name, *TINY_NET, threads=1)
    assert engine.threads == 1
    assert "1 threads" in engine.describe()


@engines
def test_default_threads_are_described_in_words(name: str, tiny_engines: Dict[str, Engine]) -> None:
    engine = tiny_engines[name]
    expected = f", {engine.threads} threads" if engine.threads else f", {name}'s default threads"
    assert expected in engine.describe() and "?" not in engine.describe()


@pytest.mark.skipif("opencv" not in AVAILABLE, reason="engine opencv not importable")
def test_opencv_refuses_a_gpu() -> None:
    with pytest.raises(ConfigError, match="CPU only"):
        make_engine("opencv", *TINY_NET, device="cuda:0")


@pytest.mark.skipif("caffe" not in AVAILABLE, reason="engine caffe not importable")
def test_cpu_only_caffe_refuses_a_gpu_instead_of_aborting() -> None:
    from ssnet_worker.engines import _cuda_device_count

    if _cuda_device_count() is not None:
        pytest.skip("this Caffe has CUDA")
    with pytest.raises(ConfigError, match="CPU-only build"):
        make_engine("caffe", *TINY_NET, device="cuda:0")


@pytest.mark.skipif("torch" not in AVAILABLE, reason="engine torch not importable")
def test_torch_without_cuda_refuses_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(ConfigError, match="cuda:0 requested, but torch sees no CUDA device"):
        make_engine("torch", *TINY_NET, device="cuda:0")
    with pytest.raises(ConfigError, match="float16 needs a CUDA device"):
        make_engine("torch", *TINY_NET, precision="float16")


@pytest.mark.skipif("onnx" not in AVAILABLE, reason="engine onnx not importable")
def test_onnx_needs_a_cuda_provider_for_a_gpu_and_computes_in_float32() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match=r"no CUDA provider.*onnxruntime-gpu"):
            make_engine("onnx", *TINY_NET, device="cuda:0")
    with pytest.raises(ConfigError, match="float32 only"):
        make_engine("onnx", *TINY_NET, precision="float16")


@pytest.mark.parametrize("name", ["torch", "onnx"])
def test_layers_the_importer_cannot_run_fail_at_load(name: str, tmp_path: Path) -> None:
    if name not in AVAILABLE:
        pytest.skip(f"engine {name} not importable")
    prototxt = tmp_path / "lrn.prototxt"
    prototxt.write_text(TINY_NET[0].read_text().replace(
        'layer {', 'layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" }\nlayer {', 1))
    with pytest.raises(ConfigError, match="layer 'lrn': type LRN is not supported"):
        make_engine(name, prototxt, TINY_NET[1])


def test_engine_and_option_names() -> None:
    with pytest.raises(ConfigError, match="unknown engine 'tensorflow'"):
        make_engine("tensorflow", *TINY_NET)
    with pytest.raises(ConfigError, match="device 'gpu0': expected cpu or cuda:N"):
        make_engine(AVAILABLE[0], *TINY_NET, device="gpu0")
    with pytest.raises(ConfigError, match="precision 'float64'"):
        make_engine(AVAILABLE[0], *TINY_NET, precision="float64")
