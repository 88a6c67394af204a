"""The lowered Caffe graph as an ONNX model, built with the ``onnx`` package (no torch needed).

The input is ``N x C x H x W`` with N, H and W dynamic; per-image BatchNorm becomes ``InstanceNormalization``.
Opset 17 and IR version 8, which ONNX Runtime 1.16 and later run (the worker image has 1.19.2).
"""

from __future__ import annotations

import dataclasses
from typing import Any, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ssnet_worker.caffe.graph import MAX, PROD, SUM, Graph, Op

OPSET = 17
IR_VERSION = 8


class _Builder:
    def __init__(self) -> None:
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type: str, inputs: List[str], output: str, name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


def _pads(pad: Any) -> List[int]:
    return [pad[0], pad[1], pad[0], pad[1]]


def _add(b: _Builder, op: Op) -> None:
    a, x, out, layer = op.attrs, op.inputs[0], op.output, op.layer
    if op.kind in ("conv", "deconv"):
        inputs = [x, b.const(f"{layer}_w", op.arrays["weight"])]
        if "bias" in op.arrays:
            inputs.append(b.const(f"{layer}_b", op.arrays["bias"]))
        b.node("Conv" if op.kind == "conv" else "ConvTranspose", inputs, out, layer,
               kernel_shape=list(op.arrays["weight"].shape[2:]), strides=list(a["stride"]),
               pads=_pads(a["pad"]), dilations=list(a["dilation"]), group=a["group"])
    elif op.kind == "norm":
        _instance_norm(b, op)
    elif op.kind == "affine":
        scaled = out if "bias" not in op.arrays else b.name(f"{layer}_scaled")
        b.node("Mul", [x, b.const(f"{layer}_scale", op.arrays["scale"])], scaled, b.name(layer))
        if "bias" in op.arrays:
            b.node("Add", [scaled, b.const(f"{layer}_bias", op.arrays["bias"])], out, b.name(layer))
    elif op.kind == "relu":
        if a["slope"]:
            b.node("LeakyRelu", [x], out, layer, alpha=a["slope"])
        else:
            b.node("Relu", [x], out, layer)
    elif op.kind == "pool":
        _pool(b, op)
    elif op.kind == "eltwise":
        _eltwise(b, op)
    elif op.kind == "concat":
        b.node("Concat", op.inputs, out, layer, axis=a["axis"])
    elif op.kind == "crop":
        _crop(b, op)
    elif op.kind == "softmax":
        b.node("Softmax", [x], out, layer, axis=a["axis"])
    else:
        raise ValueError(f"unknown operation {op.kind!r}")


def _instance_norm(b: _Builder, op: Op) -> None:
    """Per image and channel: (x - mean) / sqrt(var + eps) * scale + bias, mean and (biased) variance over H x W.

    Written out rather than as an InstanceNormalization node: ONNX Runtime's CPU kernels (that node, and a
    ReduceMean over both axes) sum H x W float32 values in one run, which on a 512x512 plane is off by ~2e-2 after
    SSNet's first BatchNorm (~3e-3 on the softmax).  Averaging each row, then the rows, keeps every sum to one
    axis's length and matches Caffe to ~1e-5, for about 5 % more time.
    """
    x, out, layer, eps = op.inputs[0], op.output, op.layer, op.attrs["eps"]

    def mean_over_plane(value: str, hint: str) -> str:
        rows = b.node("ReduceMean", [value], b.name(f"{layer}_{hint}_rows"), b.name(layer), axes=[3])
        return b.node("ReduceMean", [rows], b.name(f"{layer}_{hint}"), b.name(layer), axes=[2])

    centred = b.node("Sub", [x, mean_over_plane(x, "mean")], b.name(f"{layer}_centred"), b.name(layer))
    square = b.node("Mul", [centred, centred], b.name(f"{layer}_square"), b.name(layer))
    var = mean_over_plane(square, "var")
    std = b.node("Sqrt", [b.node("Add", [var, b.const(f"{layer}_eps", np.float32(eps))], b.name(f"{layer}_vareps"),
                                 b.name(layer))], b.name(f"{layer}_std"), b.name(layer))
    gain = b.node("Div", [b.const(f"{layer}_scale", op.arrays["scale"].reshape(1, -1, 1, 1)), std],
                  b.name(f"{layer}_gain"), b.name(layer))
    scaled = b.node("Mul", [centred, gain], b.name(f"{layer}_scaled"), b.name(layer))
    b.node("Add", [scaled, b.const(f"{layer}_bias", op.arrays["bias"].reshape(1, -1, 1, 1))], out, layer)


def _pool(b: _Builder, op: Op) -> None:
    a, x, out, layer = op.attrs, op.inputs[0], op.output, op.layer
    method = "Max" if a["method"] == "max" else "Average"
    if a["global"]:
        b.node(f"Global{method}Pool", [x], out, layer)
        return
    attrs = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]), "pads": _pads(a["pad"]),
             "ceil_mode": int(a["ceil"])}
    if method == "Average":
        attrs["count_include_pad"] = 1
    b.node(f"{method}Pool", [x], out, layer, **attrs)


def _eltwise(b: _Builder, op: Op) -> None:
    a, out, layer = op.attrs, op.output, op.layer
    if a["operation"] == SUM:
        terms = []
        for i, (value, coeff) in enumerate(zip(op.inputs, a["coeffs"])):
            if coeff == 1.0:
                terms.append(value)
            else:
                terms.append(b.node("Mul", [value, b.const(f"{layer}_coeff{i}", np.float32(coeff))],
                                    b.name(f"{layer}_term{i}"), b.name(layer)))
        b.node("Sum", terms, out, layer)
    elif a["operation"] == PROD:
        b.node("Mul", op.inputs[:2], out if len(op.inputs) == 2 else b.name(layer), b.name(layer))
        for i, other in enumerate(op.inputs[2:], start=2):
            previous = b.nodes[-1].output[0]
            b.node("Mul", [previous, other], out if i == len(op.inputs) - 1 else b.name(layer), b.name(layer))
    elif a["operation"] == MAX:
        b.node("Max", op.inputs, out, layer)


def _crop(b: _Builder, op: Op) -> None:
    """Slice x from the offsets to offset + the reference's size, on every axis from ``axis`` on."""
    a, (x, ref), out, layer = op.attrs, op.inputs, op.output, op.layer
    axis, offsets = a["axis"], a["offsets"]
    axes = list(range(axis, axis + len(offsets)))
    shape = b.node("Shape", [ref], b.name(f"{layer}_refshape"), b.name(layer))
    sizes = b.node("Gather", [shape, b.const(f"{layer}_axes", np.array(axes, np.int64))], b.name(f"{layer}_sizes"),
                   b.name(layer), axis=0)
    starts = b.const(f"{layer}_starts", np.array(offsets, np.int64))
    ends = b.node("Add", [sizes, starts], b.name(f"{layer}_ends"), b.name(layer))
    b.node("Slice", [x, starts, ends, b.const(f"{layer}_sliceaxes", np.array(axes, np.int64))], out, layer)


def build_onnx(graph: Graph, name: str = "caffe_net", output_name: str = "softmax") -> onnx.ModelProto:
    """An ONNX model computing ``graph``: input named as the Caffe input, output named ``output_name``."""
    b = _Builder()

    def rename(value: str) -> str:  # in-place Caffe blobs have several values: only the last is the output
        if value == graph.output:
            return output_name
        return value if value == graph.input else f"{value}:value"

    for op in graph.ops:
        _add(b, dataclasses.replace(op, inputs=[rename(v) for v in op.inputs], output=rename(op.output)))
    inputs = [helper.make_tensor_value_info(graph.input, TensorProto.FLOAT, ["N", graph.channels, "H", "W"])]
    # N, and the spatial sizes of a 4-D output, follow the input's
    dims: List[Any] = list(graph.output_shape) or ["N"]
    dims[0] = "N"
    if len(dims) == 4:
        dims[2:] = ["H_out", "W_out"]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, dims)]
    model = helper.make_model(
        helper.make_graph(b.nodes, name, inputs, outputs, b.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ssnet-server",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
