"""``ssnet-infer`` (``python -m ssnet_worker.infer``): reproduces genuine Caffe on the tiny reference net, and a
bad input or model is one clear line on stderr, a non-zero exit and no output file.

Runs with each engine importable here: torch, onnx and OpenCV 4.x on the host; onnx, genuine Caffe and OpenCV in
the worker image.  Skipped where none is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from ssnet_worker.engines import ENGINE_NAMES, engine_available

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SSNET_SHARED") or REPO.parent / "shared")
TINY = SHARED / "models" / "tiny"
PROTOTXT, WEIGHTS = TINY / "tiny_uresnet.prototxt", TINY / "tiny_uresnet.caffemodel"

AVAILABLE = [name for name in ENGINE_NAMES if engine_available(name)]
pytestmark = [
    pytest.mark.py39,
    pytest.mark.skipif(not AVAILABLE, reason="no engine importable: install opencv-python-headless<5 (or use the "
                       "worker image, which has genuine Caffe)"),
    pytest.mark.skipif(not (TINY / "reference_io.npz").is_file(), reason=f"shared tiny model not found under {TINY}"),
]


def run_infer(*args: str, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join([*(str(REPO / p / "src") for p in ("common", "data", "worker")),
                                  os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "ssnet_worker.infer", *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})},
    )


def model_args(engine: str) -> List[str]:
    return ["--engine", engine, "--prototxt", str(PROTOTXT), "--weights", str(WEIGHTS)]


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ssnet-infer: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def reference() -> Dict[str, np.ndarray]:
    with np.load(TINY / "reference_io.npz") as data:
        return {"inputs": data["inputs"], "softmax": data["softmax"]}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("engine", AVAILABLE)
def test_reproduces_the_genuine_caffe_reference(engine: str, batch: int, tmp_path: Path,
                                                reference: Dict[str, np.ndarray]) -> None:
    np.save(tmp_path / "in.npy", reference["inputs"])
    result = run_infer(*model_args(engine), "--input", str(tmp_path / "in.npy"),
                       "--output", str(tmp_path / "out.npy"), "--threads", "1", "--batch-size", str(batch))
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (4, 3, 64, 64) and out.dtype == np.float32
    assert float(np.abs(out - reference["softmax"]).max()) <= 1e-4
    assert "image 4/4" in result.stderr and f"{engine} on cpu, float32, 1 threads" in result.stderr
    assert ("images 1-3/4" in result.stderr) == (batch == 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.npy"]  # no temporary file left


def test_options_come_from_the_environment(tmp_path: Path, reference: Dict[str, np.ndarray]) -> None:
    np.save(tmp_path / "in.npy", reference["inputs"][:1])
    env = {"SSNET_INFER_ENGINE": AVAILABLE[0], "SSNET_INFER_PROTOTXT": str(PROTOTXT),
           "SSNET_INFER_WEIGHTS": str(WEIGHTS), "SSNET_INFER_LOG_LEVEL": "WARNING"}
    result = run_infer("--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.npy"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert np.load(tmp_path / "out.npy").shape == (1, 3, 64, 64)


def test_an_input_size_the_net_cannot_take(tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", np.zeros((2, 1, 63, 63), np.float32))
    (tmp_path / "out.npy").write_bytes(b"previous result")
    result = run_infer(*model_args(AVAILABLE[0]), "--input", str(tmp_path / "in.npy"),
                       "--output", str(tmp_path / "out.npy"), "--force")
    assert result.returncode == 2
    line = error_line(result)
    assert "2x1x63x63" in line and "H=63 does not fit the net (nearest sizes that do: 60 or 64)" in line
    assert (tmp_path / "out.npy").read_bytes() == b"previous result"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.npy"]


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no such file"),
    (b"not an array", "not a readable .npy array"),
    (np.zeros((1, 64, 64), np.float32), "shape 1x64x64 is not N x C x H x W"),
    (np.zeros((0, 1, 64, 64), np.float32), "with N >= 1"),
    (np.zeros((2, 1, 64, 64), np.complex64), "dtype complex64 is not a real number type"),
    (np.zeros((1, 3, 64, 64), np.float32), "expected Nx1xHxW"),
])
def test_bad_inputs(content: object, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "in.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    result = run_infer(*model_args(AVAILABLE[0]), "--input", str(path), "--output", str(tmp_path / "out.npy"))
    assert result.returncode == 2
    assert expected in error_line(result)
    assert not (tmp_path / "out.npy").exists()


def test_bad_model_and_output_paths(tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", np.zeros((1, 1, 64, 64), np.float32))
    args = ["--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.npy")]
    missing = tmp_path / "missing.caffemodel"
    result = run_infer("--prototxt", str(PROTOTXT), "--weights", str(missing), *args)
    assert result.returncode == 2
    assert f"caffemodel {missing}: no such file" in error_line(result)
    result = run_infer(*model_args(AVAILABLE[0]), "--input", str(tmp_path / "in.npy"),
                       "--output", str(tmp_path / "no" / "out.npy"))
    assert result.returncode == 2
    assert "does not exist" in error_line(result)
    result = run_infer("--prototxt", str(PROTOTXT), *args)  # no --weights
    assert result.returncode == 2
    assert "--weights is required" in result.stderr
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.skipif("opencv" not in AVAILABLE, reason="needs OpenCV")
def test_opencv_refuses_a_view_that_would_crash_it(tmp_path: Path) -> None:
    """OpenCV DNN kills the process (SIGSEGV) on a whole 1008x3456 plane: a clear error and exit 2 instead."""
    np.save(tmp_path / "in.npy", np.full((1, 1, 1008, 3456), 20, np.float32))
    result = run_infer(*model_args("opencv"), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy"))
    assert result.returncode == 2, result.stderr
    assert "1008x3456 pixels: OpenCV's DNN module crashes the process" in result.stderr
    assert not (tmp_path / "o.npy").exists()
