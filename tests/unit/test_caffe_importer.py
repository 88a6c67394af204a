"""The Caffe importer without any engine: parsing, checks, shape rules, lowering (no sockets, no torch needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssnet_common.errors import ConfigError
from ssnet_worker.caffe.graph import lower
from ssnet_worker.caffe.model import (
    InputShapeError,
    UnsupportedLayer,
    infer_shapes,
    load_model,
    load_net_spec,
    pool_output_size,
    read_weights,
)
from ssnet_worker.caffe.proto import message_class, net_parameter

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SSNET_SHARED") or REPO.parent / "shared")
TINY = (SHARED / "models" / "tiny" / "tiny_uresnet.prototxt", SHARED / "models" / "tiny" / "tiny_uresnet.caffemodel")
SSNET = (SHARED / "models" / "ssnet" / "dllee_ssnet2018.prototxt",
         SHARED / "models" / "ssnet" / "ssnet_random_plane0.caffemodel")
needs_shared = pytest.mark.skipif(not TINY[1].is_file(), reason=f"shared models not found under {SHARED}")

HEAD = 'name: "t"\ninput: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 8\ninput_dim: 8\n'


def write_net(tmp_path: Path, layers: str, blobs: dict[str, list[np.ndarray]] | None = None,
              head: str = HEAD) -> tuple[Path, Path]:
    """A prototxt and a caffemodel (with the given blobs per layer) made with our own message classes."""
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(head + layers)
    model = net_parameter()
    for name, arrays in (blobs or {}).items():
        layer = model.layer.add(name=name)
        for array in arrays:
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.astype(np.float32).ravel().tolist())
    if not model.layer:
        model.layer.add(name="data", type="Input")
    caffemodel = tmp_path / "net.caffemodel"
    caffemodel.write_bytes(model.SerializeToString())
    return prototxt, caffemodel


CONV = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }\n')


def conv_blobs(out: int = 3, inp: int = 2) -> dict[str, list[np.ndarray]]:
    return {"conv": [np.ones((out, inp, 3, 3)), np.zeros(out)]}


@needs_shared
def test_reads_the_ssnet_prototxt_and_weights() -> None:
    model = load_model(*SSNET, "softmax")
    assert model.spec.input_name == "data" and model.spec.input_shape == (1, 1, 512, 512)
    types = {layer.type for layer in model.spec.layers}
    assert types == {"Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Eltwise", "Concat", "Deconvolution",
                     "Softmax"}
    assert model.plan.blobs["softmax"] == (1, 3, 512, 512)
    assert model.plan.blobs["pool0"] == (1, 16, 256, 256)  # Caffe's ceil rounding
    assert model.weights["conv0"][0].shape == (16, 1, 7, 7) and model.weights["conv0"][0].dtype == np.float32
    convs = [layer for layer in model.spec.layers if layer.type == "Convolution"]
    with_bias = [layer.name for layer in convs if layer.param.convolution_param.bias_term]
    assert len(convs) == 48 and 0 < len(with_bias) < 48  # both kinds: bias_term false leaves one blob
    assert all(len(model.weights[layer.name]) == 1 + layer.param.convolution_param.bias_term for layer in convs)
    deconv = next(layer for layer in model.spec.layers if layer.type == "Deconvolution")
    group = deconv.param.convolution_param.group
    assert model.weights[deconv.name][0].shape[1] == deconv.param.convolution_param.num_output // group


@needs_shared
def test_lowering_fuses_batchnorm_and_scale_into_per_image_norms() -> None:
    graph = lower(load_model(*SSNET, "softmax"))
    kinds = [op.kind for op in graph.ops]
    assert kinds.count("norm") == 48 and "affine" not in kinds  # every BatchNorm+Scale pair, per image
    assert kinds.count("conv") == 48 and kinds.count("deconv") == 5 and kinds[-1] == "softmax"
    assert graph.output == "softmax" and graph.input == "data"
    norm = next(op for op in graph.ops if op.kind == "norm")
    assert norm.layer == "bn_conv0+scale_conv0" and norm.attrs["eps"] == pytest.approx(1e-5)
    # in-place blobs get one value per write: the ReLU after bn/scale of conv0 reads the norm's value
    relu = graph.ops[graph.ops.index(norm) + 1]
    assert relu.kind == "relu" and relu.inputs == [norm.output] and norm.output != norm.inputs[0]


def test_global_statistics_fold_into_an_affine(tmp_path: Path) -> None:
    layers = CONV + ('layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" '
                     'batch_norm_param { use_global_stats: true eps: 0.5 } }\n'
                     'layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }\n')
    mean, var, factor = np.array([2.0, 4.0, 6.0]), np.array([1.0, 3.0, 5.0]), np.array([2.0])
    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -1.0])
    blobs = {**conv_blobs(), "bn": [mean, var, factor], "sc": [gamma, beta]}
    graph = lower(load_model(*write_net(tmp_path, layers, blobs), "conv"))
    affine = graph.ops[-1]
    assert affine.kind == "affine" and affine.layer == "bn+sc"
    expected_scale = gamma / np.sqrt(var / 2 + 0.5)
    np.testing.assert_allclose(affine.arrays["scale"].ravel(), expected_scale, rtol=1e-6)
    np.testing.assert_allclose(affine.arrays["bias"].ravel(), beta - mean / 2 * expected_scale, rtol=1e-6)


def test_unset_use_global_stats_means_stored_statistics_as_in_caffes_test_phase(tmp_path: Path) -> None:
    layers = CONV + 'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n'
    blobs = {**conv_blobs(), "bn": [np.zeros(3), np.ones(3), np.ones(1)]}
    assert lower(load_model(*write_net(tmp_path, layers, blobs), "conv")).ops[-1].kind == "affine"


def test_a_scale_that_other_layers_also_read_is_not_fused(tmp_path: Path) -> None:
    layers = CONV + ('layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" '
                     'batch_norm_param { use_global_stats: false } }\n'
                     'layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" }\n'
                     'layer { name: "sum" type: "Eltwise" bottom: "bn" bottom: "sc" top: "sum" }\n')
    blobs = {**conv_blobs(), "bn": [np.zeros(3), np.ones(3), np.ones(1)], "sc": [np.full(3, 2.0)]}
    kinds = [op.kind for op in lower(load_model(*write_net(tmp_path, layers, blobs), "sum")).ops]
    assert kinds == ["conv", "norm", "affine", "eltwise"]


def test_only_what_the_output_needs_is_kept(tmp_path: Path) -> None:
    layers = CONV + ('layer { name: "relu" type: "ReLU" bottom: "conv" top: "relu" }\n'
                     'layer { name: "drop" type: "Dropout" bottom: "conv" top: "drop" }\n')
    model = load_model(*write_net(tmp_path, layers, conv_blobs()), "drop")
    graph = lower(model)
    assert [op.kind for op in graph.ops] == ["conv"] and graph.output == "conv"  # Dropout: the identity


@pytest.mark.parametrize(("size", "kernel", "stride", "pad", "ceil", "expected"), [
    (512, 2, 2, 0, True, 256), (511, 2, 2, 0, True, 256), (13, 3, 2, 1, True, 7), (12, 3, 2, 1, True, 7),
    (3, 2, 2, 1, True, 2),
    (13, 3, 2, 1, False, 7), (10, 3, 3, 0, True, 4), (10, 3, 3, 0, False, 3), (5, 1, 3, 0, True, 3),
])
def test_pooled_sizes_follow_caffe(size: int, kernel: int, stride: int, pad: int, ceil: bool, expected: int) -> None:
    assert pool_output_size(size, kernel, stride, pad, ceil) == expected


@needs_shared
def test_sizes_the_net_cannot_take() -> None:
    spec = load_net_spec(TINY[0])
    assert infer_shapes(spec, (1, 1, 64, 64)).blobs["softmax"] == (1, 3, 64, 64)
    with pytest.raises(InputShapeError, match="Concat"):
        infer_shapes(spec, (1, 1, 63, 63))
    with pytest.raises(InputShapeError, match=r"too small|smaller than"):
        infer_shapes(spec, (1, 1, 2, 2))


@pytest.mark.parametrize(("layers", "message"), [
    ('layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" }\n', "layer 'lrn': type LRN is not supported"),
    ('layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 3 } }\n',
     r"line 7, column \d+: .*no field named \"lrn_param\".*it reads the layers BatchNorm"),
    ('layers { name: "old" type: CONVOLUTION bottom: "data" top: "old" }\n', "V1 'layers' entries are not supported"),
    ('layer { name: "c" type: "Convolution" bottom: "nope" top: "c" convolution_param { num_output: 1 '
     'kernel_size: 1 } }\n', "layer 'c' reads unknown blob 'nope'"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 '
     'kernel_size: 1 group: 3 } }\n', "bad convolution_param"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: STOCHASTIC kernel_size: 2 } }\n',
     "STOCHASTIC pooling is not supported"),
    ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" '
     'eltwise_param { operation: MAX coeff: 1 coeff: 2 } }\n', "coefficients are for SUM"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 1 '
     'kernel_size: 1 weight_filer { type: "msra" } } }\n', 'no field named "weight_filer"'),
])
def test_bad_prototxts_are_config_errors_naming_the_layer(tmp_path: Path, layers: str, message: str) -> None:
    prototxt, caffemodel = write_net(tmp_path, layers, {"c": [np.ones((1, 2, 1, 1)), np.zeros(1)]})
    with pytest.raises(ConfigError, match=message) as caught:
        load_model(prototxt, caffemodel, "data")
    assert str(prototxt) in str(caught.value) or "layer" in str(caught.value)


def test_unsupported_layers_are_their_own_error_type(tmp_path: Path) -> None:
    prototxt, caffemodel = write_net(tmp_path, 'layer { name: "t" type: "TanH" bottom: "data" top: "t" }\n')
    with pytest.raises(UnsupportedLayer, match=f"prototxt {prototxt}: layer 't': type TanH"):
        load_model(prototxt, caffemodel, "t")


def test_missing_or_misshapen_weights(tmp_path: Path) -> None:
    prototxt, caffemodel = write_net(tmp_path, CONV, {"other": [np.ones(3)]})
    with pytest.raises(ConfigError, match=r"has no weights for layer 'conv'.*belong together"):
        load_model(prototxt, caffemodel, "conv")
    prototxt, caffemodel = write_net(tmp_path, CONV, conv_blobs(out=4))
    with pytest.raises(ConfigError, match=r"layer 'conv' has weights of shape 4x2x3x3, 4 but .* needs 3x2x3x3, 3"):
        load_model(prototxt, caffemodel, "conv")
    prototxt, caffemodel = write_net(tmp_path, CONV, conv_blobs())
    with pytest.raises(ConfigError, match="no blob named 'softmax'"):
        load_model(prototxt, caffemodel, "softmax")


def test_a_blob_whose_values_do_not_fill_its_shape(tmp_path: Path) -> None:
    model = net_parameter()
    blob = model.layer.add(name="conv").blobs.add()
    blob.shape.dim.extend([3, 2])
    blob.data.extend([1.0] * 5)
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ConfigError, match=r"layer 'conv': a blob of shape 3x2 holds 5 values"):
        read_weights(path)


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xff\xff\xff garbage", "not a binary Caffe model"),
    (HEAD.encode(), "not a binary Caffe model"),
    (b"", "empty file"),
])
def test_files_that_are_not_caffemodels(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.caffemodel"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_weights(path)


def test_legacy_four_d_blob_shapes_are_accepted(tmp_path: Path) -> None:
    prototxt, _ = write_net(tmp_path, CONV)
    model = net_parameter()
    layer = model.layer.add(name="conv")
    weight, bias = layer.blobs.add(), layer.blobs.add()
    weight.num, weight.channels, weight.height, weight.width = 3, 2, 3, 3
    weight.data.extend([0.5] * 54)
    bias.num, bias.channels, bias.height, bias.width = 1, 1, 1, 3
    bias.data.extend([1.0, 2.0, 3.0])
    caffemodel = tmp_path / "legacy.caffemodel"
    caffemodel.write_bytes(model.SerializeToString())
    loaded = load_model(prototxt, caffemodel, "conv")
    assert loaded.weights["conv"][0].shape == (3, 2, 3, 3) and loaded.weights["conv"][1].tolist() == [1, 2, 3]


def test_message_classes_are_private_to_the_importer() -> None:
    cls: Any = message_class("NetParameter")
    assert cls.DESCRIPTOR.full_name == "ssnet.caffe.NetParameter"  # never clashes with pycaffe's caffe.*


@pytest.mark.skipif(shutil.which("protoc") is None and not any(
    (Path(p) / "grpc_tools").is_dir() for p in sys.path if p), reason="needs grpcio-tools (dev environment)")
def test_the_shipped_descriptor_is_compiled_from_the_shipped_proto(tmp_path: Path) -> None:
    """caffe.desc must be what protoc makes of caffe.proto today (scripts/gen-caffe-descriptor.sh)."""
    folder = REPO / "worker" / "src" / "ssnet_worker" / "caffe"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{folder}",
                    f"--descriptor_set_out={tmp_path / 'caffe.desc'}", "caffe.proto"], check=True)
    assert (tmp_path / "caffe.desc").read_bytes() == (folder / "caffe.desc").read_bytes(), \
        "caffe.proto changed: run scripts/gen-caffe-descriptor.sh"
