"""The engines against genuine Caffe, which runs only in the worker image.

* The fidelity tests (tests/fidelity) inside the worker image: genuine pycaffe, OpenCV 4.5 DNN and ONNX Runtime
  1.19.2 (Python 3.9) side by side.
* torch, which is not in the CPU image, against genuine Caffe on the host: the worker image computes Caffe's
  outputs (``tests/fidelity/make_caffe_references.py``: one small net per supported layer type with weights drawn
  by Caffe's fillers, and SSNet with the shared random weights, each image alone) and the host's torch and onnx
  engines must reproduce them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ssnet_worker.engines import engine_available, make_engine

from ..fidelity.layer_nets import NETS
from .conftest import REPO, SHARED, docker, shared_or_skip

pytestmark = pytest.mark.container

# (max |diff|, relative to the output's largest magnitude) per engine, for the small nets; SSNet's bounds are
# the issue's: torch 1e-4, onnx 1e-3, top class agreement >= 99.99 %.
LAYER_TOLERANCE = 1e-5
SSNET_TOLERANCE = {"torch": 1e-4, "onnx": 1e-3}
HOST_ENGINES = [name for name in ("torch", "onnx") if engine_available(name)]


def test_fidelity_tests_pass_in_the_worker_image(engine: None) -> None:
    shared_or_skip("models", "tiny")
    result = subprocess.run([str(REPO / "tests" / "fidelity" / "run-in-worker-image.sh"), "-q"], capture_output=True,
                            text=True, timeout=900, check=False)
    sys.stdout.write(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "failed" not in summary, summary
    # in the image only the torch cases may skip (torch is not installed there)
    skips = re.findall(r"SKIPPED \[\d+\] [^\n]*", result.stdout)
    assert all("torch" in line or "the host" in line for line in skips), skips


@pytest.fixture(scope="module")
def caffe_references(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    shared_or_skip("models", "ssnet")
    out = tmp_path_factory.mktemp("caffe-references")
    out.chmod(0o777)  # the image runs as uid 10001
    docker("run", "--rm", "--network", "none", "-v", f"{REPO / 'tests'}:/repo/tests:ro",
           "-v", f"{SHARED}:/shared:ro", "-v", f"{out}:/out", "-w", "/repo", "ssnet-worker:cpu",
           "python3", "tests/fidelity/make_caffe_references.py", "/out", "--ssnet", "/shared/models/ssnet",
           timeout=600)
    yield out


@pytest.mark.skipif(not HOST_ENGINES, reason="neither torch nor onnx is importable on the host")
@pytest.mark.parametrize("net", sorted(NETS))
def test_each_layer_type_matches_genuine_caffe(net: str, caffe_references: Path) -> None:
    reference = np.load(caffe_references / f"{net}.npz")
    inputs, expected = reference["inputs"], reference["outputs"]
    scale = max(float(np.abs(expected).max()), 1.0)
    for name in HOST_ENGINES:
        engine = make_engine(name, caffe_references / f"{net}.prototxt", caffe_references / f"{net}.caffemodel",
                             output="out", same_size=False)
        singles = np.concatenate([engine.forward(inputs[i:i + 1]) for i in range(len(inputs))])
        batch = engine.forward(inputs)
        worst = float(np.abs(singles - expected).max())
        sys.stdout.write(f"{net}, {name}: max |diff| to genuine Caffe {worst:.2e} (outputs up to {scale:.3g})\n")
        assert singles.shape == expected.shape
        assert worst <= LAYER_TOLERANCE * scale, (net, name, worst)
        assert float(np.abs(batch - singles).max()) <= LAYER_TOLERANCE * scale, (net, name, "batch")


@pytest.mark.slow
@pytest.mark.skipif(not HOST_ENGINES, reason="neither torch nor onnx is importable on the host")
def test_ssnet_matches_genuine_caffe(caffe_references: Path) -> None:
    reference = np.load(caffe_references / "ssnet.npz")
    inputs, expected = reference["inputs"], reference["outputs"]
    models = SHARED / "models" / "ssnet"
    for name in HOST_ENGINES:
        engine = make_engine(name, models / "dllee_ssnet2018.prototxt", models / "ssnet_random_plane0.caffemodel")
        out = engine.forward(inputs)  # one batch: each image must still get its batch-1 result
        diff = np.abs(out - expected)
        agree = float((out.argmax(axis=1) == expected.argmax(axis=1)).mean())
        sys.stdout.write(f"SSNet {name} (batch of {len(inputs)}) vs genuine Caffe (each alone): max |diff| "
                         f"{diff.max():.2e}, mean {diff.mean():.2e}, top class agrees on {100 * agree:.4f} %\n")
        assert float(diff.max()) <= SSNET_TOLERANCE[name] and agree >= 0.9999
