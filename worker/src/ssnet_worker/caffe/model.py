"""Read a Caffe network (prototxt) and its weights (caffemodel), check that they fit, and propagate shapes.

``load_net_spec(prototxt)`` parses the text prototxt with protobuf's text format against ``caffe.proto`` and
keeps the TEST-phase layers in order; ``read_weights(caffemodel)`` parses the binary model and returns each
layer's blobs as float32 arrays; ``infer_shapes(spec, input_shape)`` follows Caffe 1.0's Reshape rules through
the layers; ``check_weights`` compares the caffemodel's blobs with what the layers need.  Every problem with a
file is a :class:`~ssnet_common.errors.ConfigError` naming the file and the layer, raised at load time: genuine
Caffe would abort the process (glog ``CHECK``) and OpenCV crash on the same files.  An input the net cannot
take is an :class:`InputShapeError` (a ``ValueError``) naming the shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from ssnet_common.errors import ConfigError
from ssnet_worker.caffe.proto import net_parameter

Shape = Tuple[int, ...]
PathLike = Union[str, Path]

#: The layer types the engines built from the importer (torch, onnx) run.
SUPPORTED_LAYERS = (
    "BatchNorm", "Concat", "Convolution", "Crop", "Deconvolution", "Dropout", "Eltwise", "Pooling", "ReLU",
    "Scale", "Softmax", "Split",
)


class InputShapeError(ValueError):
    """An image the loaded net cannot take (wrong rank, channels or a size its layers do not fit)."""


class UnsupportedLayer(ConfigError):
    """A layer type the importer does not know (genuine Caffe and OpenCV may still run it)."""


def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


@dataclass
class Layer:
    """One TEST-phase layer: its ``LayerParameter`` message and where it reads and writes."""

    name: str
    type: str
    bottoms: List[str]
    tops: List[str]
    param: Any  # the LayerParameter message


@dataclass
class NetSpec:
    """A prototxt: the one input and the TEST-phase layers in order."""

    path: str
    name: str
    input_name: str
    input_shape: Shape
    layers: List[Layer] = field(default_factory=list)


def read_file(path: PathLike, what: str) -> bytes:
    """A whole file's bytes; a missing, unreadable or empty file is a ConfigError naming it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise ConfigError(f"{what} {path}: empty file")
    return data


_V1_LAYERS = re.compile(rb"^\s*layers\s*\{", re.MULTILINE)


def _in_test_phase(layer: Any) -> bool:
    def matches(rule: Any) -> bool:
        return not rule.HasField("phase") or rule.phase == 1  # TEST

    if layer.include and not any(matches(rule) for rule in layer.include):
        return False
    return not any(matches(rule) for rule in layer.exclude)


def load_net_spec(prototxt: PathLike, data: Optional[bytes] = None) -> NetSpec:
    """Read and check a prototxt (``layer {}`` format, one input)."""
    path = str(prototxt)
    if data is None:
        data = read_file(path, "prototxt")
    if b"\0" in data:
        raise ConfigError(f"prototxt {path}: binary data, not a text prototxt (is it the caffemodel?)")
    if _V1_LAYERS.search(data):
        raise ConfigError(f"prototxt {path}: V1 'layers' entries are not supported; upgrade the file with "
                          "Caffe's upgrade_net_proto_text")
    net = net_parameter()
    try:
        text_format.Parse(data.decode("utf-8", errors="replace"), net)
    except text_format.ParseError as exc:
        raise ConfigError(f"prototxt {path}: {_parse_error(exc)}") from None
    inputs: List[Tuple[str, Shape]] = []
    if net.input:
        if net.input_shape:
            dims = [tuple(int(d) for d in shape.dim) for shape in net.input_shape]
        else:
            flat = [int(d) for d in net.input_dim]
            dims = [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]
        if len(dims) != len(net.input):
            raise ConfigError(f"prototxt {path}: {len(net.input)} inputs but {len(dims)} input shapes")
        inputs = list(zip(net.input, dims))
    layers: List[Layer] = []
    for raw in net.layer:
        if not _in_test_phase(raw):
            continue
        if not raw.type:
            raise ConfigError(f"prototxt {path}: layer {raw.name!r} has no type")
        if raw.type == "Input":
            shapes = raw.input_param.shape
            for i, top in enumerate(raw.top):
                shape = shapes[min(i, len(shapes) - 1)].dim if shapes else []
                inputs.append((top, tuple(int(d) for d in shape)))
            continue
        layers.append(Layer(raw.name, raw.type, list(raw.bottom), list(raw.top), raw))
    if len(inputs) != 1:
        raise ConfigError(f"prototxt {path}: the engines take a net with exactly one input, found "
                          f"{[n for n, _ in inputs] or 'none'}")
    input_name, input_shape = inputs[0]
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ConfigError(f"prototxt {path}: input {input_name!r} must be NxCxHxW, got {fmt_shape(input_shape)}")
    if not layers:
        raise ConfigError(f"prototxt {path}: no layers")
    return NetSpec(path, net.name, input_name, input_shape, layers)


def _parse_error(exc: text_format.ParseError) -> str:
    """protobuf's '12:5 : Message type "ssnet.caffe.LayerParameter" has no field named "lrn_param".' in our words."""
    text = str(exc).replace("ssnet.caffe.", "")
    line, column = getattr(exc, "GetLine", lambda: None)(), getattr(exc, "GetColumn", lambda: None)()
    text = re.sub(r"^\d+:\d+\s*:\s*", "", text)
    where = f"line {line}, column {column}: " if line else ""
    hint = ""
    if "has no field named" in text:
        hint = (" (a field of a layer type the importer does not read; it reads the layers "
                f"{', '.join(SUPPORTED_LAYERS)})")
    return f"{where}{text}{hint}"


# --------------------------------------------------------------------------------------------------------
# The caffemodel
# --------------------------------------------------------------------------------------------------------

@dataclass
class Blob:
    shape: Shape
    legacy: bool  # the 4-D num/channels/height/width form
    data: np.ndarray  # float32, flat


def _blob(proto: Any, layer: str) -> Blob:
    if proto.HasField("shape"):
        shape, legacy = tuple(int(d) for d in proto.shape.dim), False
    else:
        shape, legacy = (proto.num, proto.channels, proto.height, proto.width), True
        if not any(shape):
            shape = ()
    values = proto.data if len(proto.data) else proto.double_data
    data = np.fromiter(values, dtype=np.float32, count=len(values))
    if data.size != math.prod(shape):
        raise ValueError(f"layer {layer!r}: a blob of shape {fmt_shape(shape)} holds {data.size} values")
    return Blob(shape, legacy, data)


def read_weights(caffemodel: PathLike, content: Optional[bytes] = None) -> Dict[str, List[Blob]]:
    """``{layer name: [blob, ...]}`` of a binary caffemodel, each blob's values checked against its shape."""
    path = str(caffemodel)
    data = read_file(path, "caffemodel") if content is None else content
    net = net_parameter()
    try:
        net.ParseFromString(data)
        layers = {layer.name: [_blob(b, layer.name) for b in layer.blobs] for layer in (*net.layer, *net.layers)}
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"caffemodel {path}: not a binary Caffe model (NetParameter): {exc}") from None
    if not layers or not all(layers):  # a binary model names every layer; other bytes rarely parse that way
        raise ConfigError(f"caffemodel {path}: not a binary Caffe model: no named layers found")
    return {name: blobs for name, blobs in layers.items() if blobs}


# --------------------------------------------------------------------------------------------------------
# Shapes: the rules of Caffe 1.0's Reshape methods
# --------------------------------------------------------------------------------------------------------

def spatial(param: Any, name: str, default: int) -> Tuple[int, int]:
    """kernel/stride/pad/dilation of a ConvolutionParameter or PoolingParameter, as (h, w)."""
    h_field, w_field = f"{name}_h", f"{name}_w"
    fields = param.DESCRIPTOR.fields_by_name
    if h_field in fields and (param.HasField(h_field) or param.HasField(w_field)):
        return (int(getattr(param, h_field)) if param.HasField(h_field) else default,
                int(getattr(param, w_field)) if param.HasField(w_field) else default)
    key = "kernel_size" if name == "kernel" else name
    value = getattr(param, key)
    if isinstance(value, int):  # PoolingParameter: optional scalars with defaults
        if key == "kernel_size" and not param.HasField(key):
            return default, default
        return int(value), int(value)
    values = [int(v) for v in value]
    if not values:
        return default, default
    return (values[0], values[-1]) if len(values) <= 2 else (values[-2], values[-1])


@dataclass(frozen=True)
class ConvGeometry:
    out: int
    group: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    pad: Tuple[int, int]
    dilation: Tuple[int, int]
    bias: bool


def conv_geometry(layer: Layer) -> ConvGeometry:
    conv = layer.param.convolution_param
    if conv.axis != 1 or conv.force_nd_im2col:
        raise ConfigError(f"layer {layer.name!r} ({layer.type}): only 2-D convolutions over axis 1 are supported")
    return ConvGeometry(int(conv.num_output), int(conv.group), spatial(conv, "kernel", 0), spatial(conv, "stride", 1),
                        spatial(conv, "pad", 0), spatial(conv, "dilation", 1), bool(conv.bias_term))


def _conv_shapes(layer: Layer, bottom: Shape) -> Tuple[Shape, List[Shape]]:
    if len(bottom) != 4:
        raise InputShapeError(f"layer {layer.name!r} ({layer.type}) takes a 4-D blob, got {fmt_shape(bottom)}")
    n, c, h, w = bottom
    g = conv_geometry(layer)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.pad, g.dilation
    if g.out < 1 or g.group < 1 or kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 \
            or c % g.group or g.out % g.group:
        raise ConfigError(f"layer {layer.name!r}: bad convolution_param (num_output {g.out}, group {g.group}, "
                          f"kernel {kh}x{kw}, stride {sh}x{sw}, {c} input channels)")
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if layer.type == "Convolution":
        oh, ow = (h + 2 * ph - ext_h) // sh + 1, (w + 2 * pw - ext_w) // sw + 1
        weights: Shape = (g.out, c // g.group, kh, kw)
    else:  # Deconvolution: weights are (input channels, output channels / group, kh, kw)
        oh, ow = sh * (h - 1) + ext_h - 2 * ph, sw * (w - 1) + ext_w - 2 * pw
        weights = (c, g.out // g.group, kh, kw)
    if oh < 1 or ow < 1:
        raise InputShapeError(f"layer {layer.name!r} ({layer.type}): input {fmt_shape(bottom)} is too small")
    return (n, g.out, oh, ow), [weights, (g.out,)] if g.bias else [weights]


@dataclass(frozen=True)
class PoolGeometry:
    method: int  # 0 MAX, 1 AVE
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    pad: Tuple[int, int]
    global_pooling: bool
    ceil: bool


def pool_geometry(layer: Layer) -> PoolGeometry:
    pool = layer.param.pooling_param
    if pool.pool not in (0, 1):
        raise UnsupportedLayer(f"layer {layer.name!r}: STOCHASTIC pooling is not supported (MAX and AVE are)")
    return PoolGeometry(int(pool.pool), spatial(pool, "kernel", 0), spatial(pool, "stride", 1),
                        spatial(pool, "pad", 0), bool(pool.global_pooling), pool.round_mode == 0)


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Caffe's pooled size along one axis (ceil by default; the last window must start inside when padded)."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_shape(layer: Layer, bottom: Shape) -> Shape:
    if len(bottom) != 4:
        raise InputShapeError(f"layer {layer.name!r} (Pooling) takes a 4-D blob, got {fmt_shape(bottom)}")
    n, c, h, w = bottom
    g = pool_geometry(layer)
    if g.global_pooling:
        return (n, c, 1, 1)
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.pad
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph >= kh or pw >= kw:
        raise ConfigError(f"layer {layer.name!r}: bad pooling_param (kernel {kh}x{kw}, stride {sh}x{sw}, "
                          f"pad {ph}x{pw}: the kernel must be larger than the padding)")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise InputShapeError(f"layer {layer.name!r} (Pooling): input {fmt_shape(bottom)} is smaller than its "
                              f"{kh}x{kw} kernel")
    return (n, c, pool_output_size(h, kh, sh, ph, g.ceil), pool_output_size(w, kw, sw, pw, g.ceil))


def axis_index(value: int, ndim: int) -> int:
    axis = int(value)
    return axis + ndim if axis < 0 else axis


def crop_offsets(layer: Layer, ndim: int) -> Tuple[int, List[int]]:
    """(first cropped axis, offset of each axis from it on)."""
    crop = layer.param.crop_param
    axis = axis_index(crop.axis, ndim)
    given = [int(o) for o in crop.offset] or [0]
    if len(given) not in (1, ndim - axis):
        raise ConfigError(f"layer {layer.name!r} (Crop): {len(given)} offsets for {ndim - axis} cropped axes")
    return axis, [given[0] if len(given) == 1 else given[i] for i in range(ndim - axis)]


def scale_axes(layer: Layer, bottom: Shape) -> Tuple[int, Shape]:
    """(first axis, parameter shape) of a single-bottom Scale layer."""
    scale = layer.param.scale_param
    axis = axis_index(scale.axis, len(bottom))
    shape = bottom[axis:] if scale.num_axes == -1 else bottom[axis:axis + scale.num_axes]
    return axis, tuple(shape)


def _layer_shapes(layer: Layer, bottoms: List[Shape]) -> Tuple[List[Shape], List[Shape]]:
    """(top shapes, parameter blob shapes) of one layer for the given bottom shapes."""
    kind, first = layer.type, bottoms[0] if bottoms else ()
    arity = {"Eltwise": None, "Concat": None, "Crop": 2}.get(kind, 1)
    if (arity is None and len(bottoms) < 1) or (arity is not None and len(bottoms) != arity):
        raise ConfigError(f"layer {layer.name!r} ({kind}) has {len(bottoms)} bottoms"
                          + (f", expected {arity}" if arity else ""))
    if kind != "Split" and len(layer.tops) != 1:
        raise ConfigError(f"layer {layer.name!r} ({kind}) has {len(layer.tops)} tops, expected 1")
    if kind in ("Convolution", "Deconvolution"):
        top, params = _conv_shapes(layer, first)
        return [top], params
    if kind == "Pooling":
        return [_pool_shape(layer, first)], []
    if kind == "Split":
        return [first] * len(layer.tops), []
    if kind == "Eltwise":
        eltwise = layer.param.eltwise_param
        if eltwise.coeff and (len(eltwise.coeff) != len(bottoms) or eltwise.operation != 1):
            raise ConfigError(f"layer {layer.name!r} (Eltwise): coefficients are for SUM, one per bottom")
        for other in bottoms[1:]:
            if other != first:
                raise InputShapeError(f"layer {layer.name!r} (Eltwise) cannot combine {fmt_shape(first)} and "
                                      f"{fmt_shape(other)}")
        return [first], []
    if kind == "Concat":
        concat = layer.param.concat_param
        axis = axis_index(concat.axis if concat.HasField("axis") or not concat.HasField("concat_dim")
                          else concat.concat_dim, len(first))
        total = 0
        for other in bottoms:
            if len(other) != len(first) or any(a != b for i, (a, b) in enumerate(zip(first, other)) if i != axis):
                raise InputShapeError(f"layer {layer.name!r} (Concat) cannot join "
                                      f"{' and '.join(fmt_shape(b) for b in bottoms)} along axis {axis}")
            total += other[axis]
        return [(*first[:axis], total, *first[axis + 1:])], []
    if kind == "Crop":
        axis, offsets = crop_offsets(layer, len(first))
        if len(bottoms[1]) != len(first):
            raise InputShapeError(f"layer {layer.name!r} (Crop) cannot crop {fmt_shape(first)} to "
                                  f"{fmt_shape(bottoms[1])}")
        top = first[:axis] + bottoms[1][axis:]
        for i in range(axis, len(first)):
            if first[i] < top[i] + offsets[i - axis]:
                raise InputShapeError(f"layer {layer.name!r} (Crop) cannot crop {fmt_shape(first)} to "
                                      f"{fmt_shape(bottoms[1])}")
        return [top], []
    if kind in ("ReLU", "Dropout", "Softmax", "BatchNorm", "Scale"):
        blobs: List[Shape] = []
        if kind == "BatchNorm":
            blobs = [first[1:2], first[1:2], (1,)]
        elif kind == "Scale":
            _, shape = scale_axes(layer, first)
            blobs = [shape, shape] if layer.param.scale_param.bias_term else [shape]
        elif kind == "Softmax":
            axis_index(layer.param.softmax_param.axis, len(first))
        return [first], blobs
    raise UnsupportedLayer(f"layer {layer.name!r}: type {kind} is not supported (supported: "
                           f"{', '.join(SUPPORTED_LAYERS)})")


@dataclass
class ShapePlan:
    """Every blob's shape for one input shape, and every layer's parameter blob shapes."""

    blobs: Dict[str, Shape]
    params: Dict[str, List[Shape]]


def infer_shapes(spec: NetSpec, input_shape: Shape) -> ShapePlan:
    """Propagate ``input_shape`` through the net as Caffe's Reshape would.

    InputShapeError when a layer cannot take its bottoms (Caffe would abort there), ConfigError for an
    inconsistent prototxt, UnsupportedLayer (a ConfigError) for a layer type it does not know.
    """
    blobs: Dict[str, Shape] = {spec.input_name: tuple(input_shape)}
    params: Dict[str, List[Shape]] = {}
    for layer in spec.layers:
        missing = [b for b in layer.bottoms if b not in blobs]
        if missing:
            raise ConfigError(f"prototxt {spec.path}: layer {layer.name!r} reads unknown blob {missing[0]!r}")
        tops, layer_params = _layer_shapes(layer, [blobs[b] for b in layer.bottoms])
        for top, shape in zip(layer.tops, tops):
            blobs[top] = shape
        if layer_params:
            params[layer.name] = layer_params
    return ShapePlan(blobs, params)


def check_weights(spec: NetSpec, plan: ShapePlan, weights: Dict[str, List[Blob]], path: str) -> None:
    """Every layer with parameters must find them, with the same count and shapes, in the caffemodel."""
    for name, expected in plan.params.items():
        found = weights.get(name)
        if found is None:
            raise ConfigError(f"caffemodel {path} has no weights for layer {name!r} of {spec.path}: "
                              "do the prototxt and the caffemodel belong together?")
        same = len(found) == len(expected) and all(
            blob.shape == want or (blob.legacy and blob.shape == (1,) * (4 - len(want)) + want)
            for blob, want in zip(found, expected)
        )
        if not same:
            raise ConfigError(
                f"caffemodel {path}: layer {name!r} has weights of shape "
                f"{', '.join(fmt_shape(b.shape) for b in found)} but {spec.path} needs "
                f"{', '.join(fmt_shape(s) for s in expected)}: do the prototxt and the caffemodel belong together?"
            )


@dataclass
class CaffeModel:
    """A checked network: its spec, the shapes at the declared input size, and (when read) its weights."""

    spec: NetSpec
    plan: ShapePlan
    weights: Dict[str, List[np.ndarray]]
    output: str
    prototxt_path: str
    caffemodel_path: str

    def params(self, layer: str) -> List[np.ndarray]:
        """The parameter arrays of a layer, shaped as the layer needs them."""
        return self.weights.get(layer, [])


def load_model(
    prototxt: PathLike, caffemodel: PathLike, output: str, *,
    prototxt_data: Optional[bytes] = None, caffemodel_data: Optional[bytes] = None,
) -> CaffeModel:
    """Read both files, check them against each other at the declared input size, and shape the weights."""
    spec = load_net_spec(prototxt, prototxt_data)
    blobs = read_weights(caffemodel, caffemodel_data)
    try:
        plan = infer_shapes(spec, spec.input_shape)
    except InputShapeError as exc:
        raise ConfigError(f"prototxt {spec.path}: the declared input {fmt_shape(spec.input_shape)} does not fit "
                          f"the layers: {exc}") from None
    except UnsupportedLayer as exc:
        raise UnsupportedLayer(f"prototxt {spec.path}: {exc}") from None
    if output not in plan.blobs:
        raise ConfigError(f"prototxt {spec.path}: no blob named {output!r} (the output blob)")
    check_weights(spec, plan, blobs, str(caffemodel))
    weights = {name: [blob.data.reshape(shape) for blob, shape in zip(blobs[name], shapes)]
               for name, shapes in plan.params.items()}
    return CaffeModel(spec, plan, weights, output, str(prototxt), str(caffemodel))
