"""The images: non-root, with health checks, small, and with no data, models or secrets baked in."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile

import pytest

from .conftest import IMAGES, PROMETHEUS_IMAGE, docker

pytestmark = pytest.mark.container

ALL = (*IMAGES, PROMETHEUS_IMAGE)
# Upper bounds that catch a regression (a stray build tool, a wheel cache left behind), not targets.  The client
# is ROOT's Python package (500 MB of libraries and C++ modules cling maps at start); the worker is Debian's
# python3-caffe with its dependencies (scipy, scikit-image, matplotlib, OpenCV, HDF5, Boost), plus ONNX Runtime,
# onnx and numpy 1.26 (120 MB).
MAX_MB = {"ssnet-broker:latest": 200, "ssnet-client:latest": 950, "ssnet-worker:cpu": 1100,
          PROMETHEUS_IMAGE: 250}
BAKED = re.compile(r"(\.root|\.caffemodel|(^|/)\.env|(^|/)id_(rsa|dsa|ecdsa|ed25519)|\.key)$")
KEY_SUFFIXES = (".pem", ".key", ".p12", ".pfx")


@pytest.mark.parametrize("image", ALL)
def test_image_runs_as_a_non_root_user(engine: None, image: str) -> None:
    user = docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
    assert user and user.split(":")[0] not in ("root", "0"), f"{image} runs as {user!r}"
    uid = docker("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u").stdout.strip()
    assert uid != "0"


@pytest.mark.parametrize("image", IMAGES)
def test_image_sets_no_service_options(engine: None, image: str) -> None:
    """Options come from whoever runs the image (compose.yaml, the Slurm jobs): an SSNET_BROKER_/WORKER_/CLIENT_
    default baked in would override the job's own settings in Apptainer images made from these."""
    env = docker("image", "inspect", "-f", "{{json .Config.Env}}", image).stdout
    assert not re.findall(r"SSNET_(?:BROKER|WORKER|CLIENT)_\w+", env), env


@pytest.mark.parametrize("image", ALL)
def test_image_has_a_health_check(engine: None, image: str) -> None:
    test = docker("image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", image).stdout.strip()
    assert test.startswith('["CMD'), f"{image}: no HEALTHCHECK ({test})"


@pytest.mark.parametrize("image", ALL)
def test_image_is_small_and_holds_no_data_models_or_secrets(engine: None, image: str) -> None:
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6
    sys.stdout.write(f"{image}: {size_mb:.0f} MB\n")
    assert size_mb < MAX_MB[image]
    container = docker("create", image).stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
        assert export.stdout is not None
        found, keys = [], []
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if BAKED.search(member.name):
                    found.append(member.name)
                if member.name.endswith(KEY_SUFFIXES) and member.size < 1_000_000:
                    handle = tar.extractfile(member)
                    if handle is not None and b"PRIVATE KEY" in io.BytesIO(handle.read()).getvalue():
                        keys.append(member.name)
        assert export.wait(120) == 0
    finally:
        docker("rm", "-f", container, check=False)
    assert not found, f"{image} holds data, model or secret files: {found[:20]}"
    assert not keys, f"{image} holds private keys: {keys}"


def test_worker_image_has_genuine_caffe_on_openblas_and_opencv_dnn(engine: None) -> None:
    code = ("import caffe, cv2, numpy, ssnet_worker.engines as e; "
            "print(caffe.__file__, cv2.__version__, e.engine_available('caffe'), e.engine_available('opencv'))")
    out = docker("run", "--rm", "--network", "none", "ssnet-worker:cpu", "python3", "-c", code).stdout.split()
    assert out[0].startswith("/usr/lib/python3/dist-packages/caffe/"), out  # Debian's python3-caffe
    assert out[1].startswith("4.5") and out[2:] == ["True", "True"], out
    blas = docker("run", "--rm", "--network", "none", "--entrypoint", "readlink", "ssnet-worker:cpu", "-f",
                  "/usr/lib/x86_64-linux-gnu/libblas.so.3").stdout
    assert "openblas" in blas


def test_worker_image_has_onnx_runtime_beside_pycaffe(engine: None) -> None:
    """The onnx engine's libraries in the interpreter of Debian's pycaffe: ONNX Runtime 1.19 (the last with cp39
    wheels) and numpy >= 1.21.6 (ONNX Runtime's floor) but < 2 (Debian's compiled cv2 and caffe), and protobuf 3.20
    (pycaffe's caffe_pb2 is protoc 3.12 generated code, which protobuf 4 refuses) with onnx 1.14, whose own
    generated code works on it.  They import together, and ONNX Runtime runs a model onnx built and checked."""
    code = """
import caffe, cv2, numpy as np, onnx, onnxruntime as ort, google.protobuf as pb
from caffe.proto import caffe_pb2
from onnx import TensorProto, helper, numpy_helper
caffe_pb2.NetParameter(name="n").SerializeToString()
conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
graph = helper.make_graph(
    [conv, helper.make_node("Softmax", ["y"], ["z"], axis=1)], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
    [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 8, 8])],
    [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
onnx.checker.check_model(model)
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
(z,) = session.run(None, {"x": np.random.rand(1, 1, 8, 8).astype(np.float32)})
print(ort.__version__, onnx.__version__, pb.__version__, np.__version__, z.shape, np.allclose(z.sum(axis=1), 1))
"""
    out = docker("run", "--rm", "--network", "none", "ssnet-worker:cpu", "python3", "-c", code).stdout.split()
    ort_version, onnx_version, protobuf, numpy_version = out[:4]
    assert ort_version.startswith("1.19.") and onnx_version.startswith("1.14."), out
    assert protobuf.startswith("3.20."), out
    assert (1, 21, 6) <= tuple(int(p) for p in numpy_version.split(".")[:3]) < (2,), out
    assert out[4:] == ["(1,", "2,", "8,", "8)", "True"], out


@pytest.mark.parametrize(("image", "command"), [
    ("ssnet-broker:latest", "ssnet-broker"), ("ssnet-client:latest", "ssnet-client"),
    ("ssnet-worker:cpu", "ssnet-worker"),
])
def test_each_image_installs_only_the_packages_it_runs(engine: None, image: str, command: str) -> None:
    """The broker: ssnet_common and ssnet_broker, and no numpy (it never looks into payloads); the others add
    ssnet_data.  Every project package is installed with its declared dependencies satisfied (pip check)."""
    code = ("import importlib.util as u; print(*[n for n in ('ssnet_common', 'ssnet_data', 'ssnet_broker', "
            "'ssnet_worker', 'ssnet_client', 'numpy') if u.find_spec(n)])")
    present = docker("run", "--rm", "--network", "none", image, "python3", "-c", code).stdout.split()
    own = command.replace("-", "_")
    if own == "ssnet_broker":
        assert present == ["ssnet_common", "ssnet_broker"]
    else:
        assert present == ["ssnet_common", "ssnet_data", own, "numpy"]
    default = docker("image", "inspect", "-f", "{{json .Config.Cmd}}", image).stdout.strip()
    assert default == f'["{command}"]'
