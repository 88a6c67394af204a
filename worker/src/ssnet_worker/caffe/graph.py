"""A Caffe network lowered to a short list of operations that the torch and ONNX builders both translate.

Caffe layers work in place (``bottom: "conv0" top: "conv0"``), so each blob name is given a fresh value name at
every write (``conv0``, ``conv0.1``, ...).  Lowering then:

* folds a Scale layer into the BatchNorm before it when the BatchNorm's output feeds nothing else;
* turns a BatchNorm with ``use_global_stats: false`` (SSNet's, even at test time) into **per-image**
  normalisation: each image's own per-channel mean and biased variance over H x W, Caffe's ``eps``, the Scale
  as affine (instance normalisation).  At batch size 1 this is exactly what Caffe computes, and it makes every
  image's result independent of the others in a batch;
* turns a BatchNorm with stored statistics (``use_global_stats: true``, or unset, which Caffe's TEST phase
  reads as true) into a per-channel affine: mean and variance divided by the stored scale factor;
* drops Dropout and Split (identities) and every layer the output does not depend on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ssnet_common.errors import ConfigError
from ssnet_worker.caffe.model import CaffeModel, Layer, conv_geometry, crop_offsets, pool_geometry, scale_axes

# Eltwise operations (EltwiseParameter.EltwiseOp)
PROD, SUM, MAX = 0, 1, 2


@dataclass
class Op:
    """One operation: ``kind`` is conv, deconv, norm, affine, relu, pool, eltwise, concat, crop or softmax."""

    kind: str
    layer: str  # the Caffe layer(s) it comes from, for messages
    inputs: List[str]
    output: str
    attrs: Dict[str, Any] = field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Graph:
    input: str
    output: str
    channels: int  # of the input
    ops: List[Op]
    output_shape: Tuple[int, ...] = ()  # at the input size the prototxt declares


def _values(model: CaffeModel) -> Tuple[List[Tuple[Layer, List[str], List[str]]], Dict[str, str]]:
    """Each layer with the value names it reads and writes; and the final value of every blob name."""
    current = {model.spec.input_name: model.spec.input_name}
    writes: Counter[str] = Counter()
    steps = []
    for layer in model.spec.layers:
        inputs = [current[b] for b in layer.bottoms]
        outputs = []
        for top in layer.tops:
            name = top if not writes[top] and top not in current else f"{top}.{writes[top] + 1}"
            writes[top] += 1
            current[top] = name
            outputs.append(name)
        steps.append((layer, inputs, outputs))
    return steps, current


def _channel(array: np.ndarray) -> np.ndarray:
    """A per-channel vector shaped to broadcast over N x C x H x W."""
    return np.ascontiguousarray(array, dtype=np.float32).reshape(1, -1, 1, 1)


def lower(model: CaffeModel) -> Graph:
    """The operations that compute ``model.output`` from the input, in order."""
    steps, final = _values(model)
    consumers: Counter[str] = Counter(v for _, inputs, _ in steps for v in inputs)
    consumers[final[model.output]] += 1
    alias: Dict[str, str] = {}
    ops: List[Op] = []
    fused: set[int] = set()
    for index, (layer, raw_inputs, outputs) in enumerate(steps):
        if index in fused:
            continue
        inputs = [alias.get(v, v) for v in raw_inputs]
        params = model.params(layer.name)
        kind = layer.type
        if kind in ("Dropout", "Split"):
            for out in outputs:
                alias[out] = inputs[0]
            continue
        out = outputs[0]
        if kind in ("Convolution", "Deconvolution"):
            g = conv_geometry(layer)
            arrays = {"weight": np.ascontiguousarray(params[0], dtype=np.float32)}
            if g.bias:
                arrays["bias"] = np.ascontiguousarray(params[1], dtype=np.float32).reshape(-1)
            ops.append(Op("conv" if kind == "Convolution" else "deconv", layer.name, inputs, out,
                          {"stride": g.stride, "pad": g.pad, "dilation": g.dilation, "group": g.group}, arrays))
        elif kind == "BatchNorm":
            scale = _fusable_scale(model, steps, index, out, consumers)
            names = layer.name
            gamma = beta = None
            if scale is not None:
                scale_layer = steps[scale][0]
                names = f"{layer.name}+{scale_layer.name}"
                scale_params = model.params(scale_layer.name)
                gamma = scale_params[0].reshape(-1).astype(np.float32)
                beta = scale_params[1].reshape(-1).astype(np.float32) if len(scale_params) > 1 else None
                fused.add(scale)
                out = steps[scale][2][0]
            ops.append(_batch_norm(layer, params, gamma, beta, names, inputs, out))
        elif kind == "Scale":
            bottom = model.plan.blobs.get(layer.bottoms[0], ())
            ops.append(_scale(layer, params, len(bottom) or 4, inputs, out))
        elif kind == "ReLU":
            ops.append(Op("relu", layer.name, inputs, out, {"slope": float(layer.param.relu_param.negative_slope)}))
        elif kind == "Pooling":
            pool = pool_geometry(layer)
            ops.append(Op("pool", layer.name, inputs, out,
                          {"method": "max" if pool.method == 0 else "ave", "kernel": pool.kernel,
                           "stride": pool.stride, "pad": pool.pad, "ceil": pool.ceil, "global": pool.global_pooling}))
        elif kind == "Eltwise":
            eltwise = layer.param.eltwise_param
            coeffs = [float(c) for c in eltwise.coeff] or [1.0] * len(inputs)
            ops.append(Op("eltwise", layer.name, inputs, out,
                          {"operation": int(eltwise.operation), "coeffs": coeffs}))
        elif kind == "Concat":
            concat = layer.param.concat_param
            axis = concat.axis if concat.HasField("axis") or not concat.HasField("concat_dim") else concat.concat_dim
            ops.append(Op("concat", layer.name, inputs, out, {"axis": int(axis) % 4}))
        elif kind == "Crop":
            axis, offsets = crop_offsets(layer, 4)
            ops.append(Op("crop", layer.name, inputs, out, {"axis": axis, "offsets": offsets}))
        elif kind == "Softmax":
            ops.append(Op("softmax", layer.name, inputs, out, {"axis": int(layer.param.softmax_param.axis) % 4}))
        else:  # load_model has refused it already
            raise ConfigError(f"layer {layer.name!r}: type {kind} is not supported")
    output = alias.get(final[model.output], final[model.output])
    return Graph(model.spec.input_name, output, model.spec.input_shape[1], _needed(ops, output),
                 model.plan.blobs[model.output])


def _fusable_scale(model: CaffeModel, steps: List[Tuple[Layer, List[str], List[str]]], index: int, value: str,
                   consumers: Counter[str]) -> Optional[int]:
    """The index of a channel-wise Scale that reads only this BatchNorm's output, if the next layer is one."""
    if index + 1 >= len(steps) or consumers[value] != 1:
        return None
    layer, inputs, _ = steps[index + 1]
    if layer.type != "Scale" or inputs != [value]:
        return None
    bottom = model.plan.blobs.get(layer.bottoms[0], ())
    axis, shape = scale_axes(layer, bottom)
    return index + 1 if axis == 1 and len(shape) == 1 else None


def _batch_norm(layer: Layer, params: List[np.ndarray], gamma: Optional[np.ndarray], beta: Optional[np.ndarray],
                names: str, inputs: List[str], out: str) -> Op:
    bn = layer.param.batch_norm_param
    eps = float(bn.eps)
    global_stats = bn.use_global_stats if bn.HasField("use_global_stats") else True  # Caffe: TEST phase
    channels = params[0].size
    gamma = np.ones(channels, np.float32) if gamma is None else gamma
    beta = np.zeros(channels, np.float32) if beta is None else beta
    if not global_stats:
        return Op("norm", names, inputs, out, {"eps": eps},
                  {"scale": np.ascontiguousarray(gamma), "bias": np.ascontiguousarray(beta)})
    # Caffe divides the stored sums by the stored scale factor (0 stays 0).
    factor = float(params[2].reshape(-1)[0])
    factor = 0.0 if factor == 0 else 1.0 / factor
    mean = params[0].astype(np.float64) * factor
    var = params[1].astype(np.float64) * factor
    inv_std = 1.0 / np.sqrt(var + eps)
    a = gamma.astype(np.float64) * inv_std
    b = beta.astype(np.float64) - mean * a
    return Op("affine", names, inputs, out, {}, {"scale": _channel(a), "bias": _channel(b)})


def _scale(layer: Layer, params: List[np.ndarray], ndim: int, inputs: List[str], out: str) -> Op:
    if len(inputs) != 1:
        raise ConfigError(f"layer {layer.name!r} (Scale): a scale taken from a second bottom is not supported")
    axis = int(layer.param.scale_param.axis) % ndim
    shape = params[0].shape

    def broadcast(array: np.ndarray) -> np.ndarray:
        full = (1,) * axis + tuple(shape) + (1,) * (ndim - axis - len(shape))
        return np.ascontiguousarray(array, dtype=np.float32).reshape(full)

    arrays = {"scale": broadcast(params[0])}
    if len(params) > 1:
        arrays["bias"] = broadcast(params[1])
    return Op("affine", layer.name, inputs, out, {}, arrays)


def _needed(ops: List[Op], output: str) -> List[Op]:
    """The operations ``output`` depends on."""
    wanted = {output}
    kept = []
    for op in reversed(ops):
        if op.output in wanted:
            kept.append(op)
            wanted.update(op.inputs)
    if output not in {op.output for op in kept} and kept:
        raise ConfigError(f"no operation computes {output!r}")
    return kept[::-1]


def last_uses(graph: Graph) -> Dict[str, int]:
    """For each value, the index of the last operation that reads it (the output: past the end)."""
    last: Dict[str, int] = {}
    for index, op in enumerate(graph.ops):
        for value in op.inputs:
            last[value] = index
    last[graph.output] = len(graph.ops)
    return last
