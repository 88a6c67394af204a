"""``ssnet-export``: the ONNX file it writes runs in ONNX Runtime and gives what the onnx engine gives; bad model
files are one line on stderr, exit 2 and no output file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssnet_worker.engines import engine_available, make_engine

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SSNET_SHARED") or REPO.parent / "shared")
TINY = SHARED / "models" / "tiny"
PROTOTXT, WEIGHTS = TINY / "tiny_uresnet.prototxt", TINY / "tiny_uresnet.caffemodel"

pytestmark = [
    pytest.mark.py39,
    pytest.mark.skipif(not engine_available("onnx"), reason="needs onnx and onnxruntime"),
    pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"shared tiny model not found under {TINY}"),
]


def export(*args: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join([*(str(REPO / p / "src") for p in ("common", "data", "worker")),
                                  os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "ssnet_worker.export", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PYTHONPATH": pythonpath})


def test_the_exported_model_runs_in_onnx_runtime_like_the_engine(tmp_path: Path) -> None:
    import onnxruntime

    result = export("--prototxt", str(PROTOTXT), "--weights", str(WEIGHTS), "-o", str(tmp_path / "tiny.onnx"))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and "sha256" in result.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"] and [o.name for o in session.get_outputs()] == ["softmax"]
    with np.load(TINY / "reference_io.npz") as reference:
        inputs, softmax = reference["inputs"], reference["softmax"]
    out = session.run(None, {"data": inputs})[0]  # a batch of 4: dynamic N
    np.testing.assert_array_equal(out, make_engine("onnx", PROTOTXT, WEIGHTS).forward(inputs))
    assert float(np.abs(out - softmax).max()) <= 1e-4  # genuine Caffe's outputs
    wide = np.zeros((1, 1, 48, 96), np.float32)  # dynamic H and W
    assert session.run(None, {"data": wide})[0].shape == (1, 3, 48, 96)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


@pytest.mark.parametrize(("layer", "message"), [
    ('layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" }', "layer 'lrn': type LRN is not supported"),
    ('layer { name: "conv0" type: "Convolution" bottom: "data" top: "x" convolution_param { num_output: 5 '
     'kernel_size: 3 } }', "layer 'conv0' has weights of shape"),
])
def test_bad_models_exit_2_with_one_line(tmp_path: Path, layer: str, message: str) -> None:
    prototxt = tmp_path / "net.prototxt"
    text = PROTOTXT.read_text()
    start = text.index("layer {")
    prototxt.write_text(text[:start] + layer + "\n")
    top = layer.split('top: "')[1].split('"', maxsplit=1)[0]
    result = export("--prototxt", str(prototxt), "--weights", str(WEIGHTS), "--output", str(tmp_path / "x.onnx"),
                    "--output-blob", top)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssnet-export: error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_missing_options_and_output_directory(tmp_path: Path) -> None:
    result = export("--prototxt", str(PROTOTXT), "--weights", str(WEIGHTS))
    assert result.returncode == 2 and "--output is required" in result.stderr
    result = export("--prototxt", str(PROTOTXT), "--weights", str(WEIGHTS), "-o", str(tmp_path / "no" / "x.onnx"))
    assert result.returncode == 2 and "does not exist" in result.stderr
