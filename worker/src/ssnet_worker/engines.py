"""Inference engines for a Caffe network such as the SSNet UResNet: genuine pycaffe and OpenCV DNN.

``make_engine(name, prototxt, caffemodel, gpu=None, threads=None)`` loads the model once and returns an
:class:`Engine`; ``engine.forward(image)`` takes one ``1xCxHxW`` float32 image and returns the output blob
(``softmax`` by default) as ``1xKxHxW`` float32.

* ``caffe``: genuine Caffe 1.0 through ``import caffe`` (Debian bullseye's ``python3-caffe``), TEST phase,
  on the CPU or, with a GPU id, on that CUDA device when Caffe was built with CUDA.
* ``opencv``: ``cv2.dnn.readNetFromCaffe`` on the CPU (OpenCV 4.x; 5.x removed the Caffe importer).
* ``auto``: ``caffe`` when it can be imported, else ``opencv``.

The batch size is always 1: every BatchNorm layer of SSNet normalises with the statistics of the current batch
(``use_global_stats: false``), so batching images together would change each image's result.

Caffe aborts the whole process (glog ``CHECK``) on a missing or mismatched model file and on an input size its
layers cannot take, and OpenCV crashes on a model file that lacks a layer's weights.  So both engines first
check the files here, in Python: the prototxt is parsed, the caffemodel's blob shapes are read from its
protobuf wire format, and the blob shapes are propagated through the layers (:func:`infer_shapes`).  A bad
file is a :class:`~ssnet_common.errors.ConfigError` naming it, at load time; an input the net cannot take is
an :class:`InputShapeError` (a ``ValueError``) naming the shape and the nearest sizes that work, raised
before the engine sees it.

Thread counts: ``threads`` sets OpenCV's pool (``cv2.setNumThreads``) or OpenBLAS's
(``openblas_set_num_threads`` on the loaded library); without it the libraries keep their own settings
(``OPENBLAS_NUM_THREADS``, read when OpenBLAS loads).  ``engine.threads`` reports the count in use.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ssnet_common.errors import ConfigError

log = logging.getLogger(__name__)

Shape = Tuple[int, ...]
ENGINE_NAMES = ("caffe", "opencv")
DEFAULT_OUTPUT = "softmax"


class InputShapeError(ValueError):
    """An image the loaded net cannot take (wrong rank, batch, channels or a size its layers do not fit)."""


def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


# --------------------------------------------------------------------------------------------------------
# The prototxt: protobuf text format, read into nested dicts of lists
# --------------------------------------------------------------------------------------------------------

Message = Dict[str, List[Any]]

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*                         # blanks and comments
    |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<punct>[{}<>:\[\],;])
    |(?P<word>[-+.\w]+)""",
    re.VERBOSE,
)


def _tokens(text: str, path: str) -> List[Tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise ConfigError(f"prototxt {path}: line {line}: unexpected character {text[pos]!r}")
        kind = match.lastgroup
        if kind is not None:
            tokens.append((kind, match.group(kind), text.count("\n", 0, pos) + 1))
        pos = match.end()
    return tokens


def _scalar(kind: str, text: str) -> Any:
    if kind == "str":
        body = text[1:-1]
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in body else body
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text  # an enum value (MAX, TEST) or a boolean (true/false)


def parse_prototxt_text(text: str, path: str = "<text>") -> Message:
    """Parse protobuf text format (what a ``.prototxt`` holds) into ``{field: [values]}``, messages as dicts."""
    tokens = _tokens(text, path)
    pos = 0

    def fail(message: str) -> ConfigError:
        line = tokens[pos][2] if pos < len(tokens) else (tokens[-1][2] if tokens else 1)
        return ConfigError(f"prototxt {path}: line {line}: {message}")

    def message(end: Optional[str]) -> Message:
        nonlocal pos
        fields: Message = {}
        while True:
            if pos >= len(tokens):
                if end is None:
                    return fields
                raise fail(f"missing {end!r}")
            kind, text_, _ = tokens[pos]
            if kind == "punct" and text_ == end:
                pos += 1
                return fields
            if kind == "punct" and text_ in ",;":
                pos += 1
                continue
            if kind != "word":
                raise fail(f"expected a field name, found {text_!r}")
            name, pos = text_, pos + 1
            colon = pos < len(tokens) and tokens[pos][1] == ":"
            pos += colon
            if pos >= len(tokens):
                raise fail(f"field {name!r} has no value")
            kind, text_, _ = tokens[pos]
            if text_ in ("{", "<"):
                pos += 1
                fields.setdefault(name, []).append(message("}" if text_ == "{" else ">"))
            elif not colon:
                raise fail(f"expected ':' or '{{' after {name!r}")
            elif text_ == "[":
                pos += 1
                while pos < len(tokens) and tokens[pos][1] != "]":
                    if tokens[pos][1] != ",":
                        if tokens[pos][0] not in ("str", "word"):
                            raise fail(f"bad list value {tokens[pos][1]!r}")
                        fields.setdefault(name, []).append(_scalar(*tokens[pos][:2]))
                    pos += 1
                pos += 1
            elif kind == "str":  # adjacent strings concatenate
                value = ""
                while pos < len(tokens) and tokens[pos][0] == "str":
                    value += _scalar("str", tokens[pos][1])
                    pos += 1
                fields.setdefault(name, []).append(value)
            elif kind == "word":
                fields.setdefault(name, []).append(_scalar(kind, text_))
                pos += 1
            else:
                raise fail(f"bad value {text_!r} for {name!r}")

    return message(None)


def _one(msg: Message, name: str, default: Any = None) -> Any:
    values = msg.get(name)
    return values[-1] if values else default


def _sub(msg: Message, name: str) -> Message:
    values = msg.get(name)
    return values[-1] if values else {}


@dataclass
class Layer:
    name: str
    type: str
    bottoms: List[str]
    tops: List[str]
    params: Message


@dataclass
class NetSpec:
    """What the engines need from a prototxt: the input and the TEST-phase layers in order."""

    path: str
    name: str
    input_name: str
    input_shape: Shape
    layers: List[Layer] = field(default_factory=list)


def _in_test_phase(layer: Message) -> bool:
    def matches(rule: Message) -> bool:
        phase = _one(rule, "phase")
        return phase is None or str(phase) in ("TEST", "1")

    includes = layer.get("include", [])
    if includes and not any(matches(rule) for rule in includes):
        return False
    return not any(matches(rule) for rule in layer.get("exclude", []))


def load_net_spec(prototxt: Union[str, Path], data: Optional[bytes] = None) -> NetSpec:
    """Read and check a prototxt (new ``layer {}`` format, one input); any problem is a ConfigError."""
    path = str(prototxt)
    if data is None:
        data = _read_file(path, "prototxt")
    if b"\0" in data:
        raise ConfigError(f"prototxt {path}: binary data, not a text prototxt (is it the caffemodel?)")
    text = data.decode("utf-8", errors="replace")
    msg = parse_prototxt_text(text, path)
    if "layers" in msg:
        raise ConfigError(f"prototxt {path}: V1 'layers' entries are not supported; upgrade the file with "
                          "Caffe's upgrade_net_proto_text")
    inputs: List[Tuple[str, Shape]] = []
    names = [str(n) for n in msg.get("input", [])]
    if names:
        if "input_shape" in msg:
            dims = [tuple(int(d) for d in s.get("dim", [])) for s in msg["input_shape"]]
        else:
            flat = [int(d) for d in msg.get("input_dim", [])]
            dims = [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]
        if len(dims) != len(names):
            raise ConfigError(f"prototxt {path}: {len(names)} inputs but {len(dims)} input shapes")
        inputs = list(zip(names, dims))
    layers: List[Layer] = []
    for raw in msg.get("layer", []):
        if not _in_test_phase(raw):
            continue
        name, type_ = str(_one(raw, "name", "")), str(_one(raw, "type", ""))
        if not type_:
            raise ConfigError(f"prototxt {path}: layer {name!r} has no type")
        tops = [str(t) for t in raw.get("top", [])]
        if type_ == "Input":
            shapes = _sub(raw, "input_param").get("shape", [])
            for i, top in enumerate(tops):
                shape = shapes[min(i, len(shapes) - 1)] if shapes else {}
                inputs.append((top, tuple(int(d) for d in shape.get("dim", []))))
            continue
        layers.append(Layer(name, type_, [str(b) for b in raw.get("bottom", [])], tops, raw))
    if len(inputs) != 1:
        raise ConfigError(f"prototxt {path}: the engines take a net with exactly one input, found "
                          f"{[n for n, _ in inputs] or 'none'}")
    input_name, input_shape = inputs[0]
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ConfigError(f"prototxt {path}: input {input_name!r} must be NxCxHxW, got {fmt_shape(input_shape)}")
    if not layers:
        raise ConfigError(f"prototxt {path}: no layers")
    return NetSpec(path, str(_one(msg, "name", "")), input_name, input_shape, layers)


def _read_file(path: str, what: str) -> bytes:
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


# --------------------------------------------------------------------------------------------------------
# The caffemodel: blob shapes read straight from the protobuf wire format (the float data is skipped)
# --------------------------------------------------------------------------------------------------------

class _WireError(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _WireError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> List[Tuple[int, int, Union[int, memoryview]]]:
    """The (field number, wire type, value) of one message: ints for varints, views for the rest."""
    out: List[Tuple[int, int, Union[int, memoryview]]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        value: Union[int, memoryview]
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise _WireError("truncated message")
        out.append((number, wire, value))
    return out


def _blob_info(buf: memoryview) -> Tuple[Shape, bool, int]:
    """BlobProto -> (shape, legacy 4-D shape?, number of data values)."""
    dims: List[int] = []
    legacy = [0, 0, 0, 0]  # num, channels, height, width
    count = 0
    has_shape = has_legacy = False
    for number, wire, value in _fields(buf):
        if number == 7 and isinstance(value, memoryview):  # BlobShape shape
            has_shape = True
            for sub_number, sub_wire, dim in _fields(value):
                if sub_number != 1:
                    continue
                if sub_wire == 2 and isinstance(dim, memoryview):  # packed
                    pos = 0
                    while pos < len(dim):
                        d, pos = _varint(dim, pos)
                        dims.append(d)
                elif isinstance(dim, int):
                    dims.append(dim)
        elif number in (1, 2, 3, 4) and isinstance(value, int):
            has_legacy = True
            legacy[number - 1] = value
        elif number in (5, 8):  # data (float), double_data
            size = 4 if number == 5 else 8
            count += len(value) // size if wire == 2 and isinstance(value, memoryview) else 1
    if has_shape:
        return tuple(dims), False, count
    if has_legacy:
        return tuple(legacy), True, count
    return (), False, count


def read_caffemodel_shapes(
    caffemodel: Union[str, Path], content: Optional[bytes] = None,
) -> Dict[str, List[Tuple[Shape, bool]]]:
    """``{layer name: [(blob shape, legacy?), ...]}`` of a binary caffemodel, checked for consistency."""
    path = str(caffemodel)
    data = memoryview(_read_file(path, "caffemodel") if content is None else content)
    layers: Dict[str, List[Tuple[Shape, bool]]] = {}
    try:
        for number, _, value in _fields(data):
            if number not in (100, 2) or not isinstance(value, memoryview):  # layer / V1 layers
                continue
            name_field, blobs_field = (1, 7) if number == 100 else (4, 6)
            name, blobs = "", []
            for sub_number, _, sub_value in _fields(value):
                if sub_number == name_field and isinstance(sub_value, memoryview):
                    name = bytes(sub_value).decode("utf-8")
                elif sub_number == blobs_field and isinstance(sub_value, memoryview):
                    shape, legacy, count = _blob_info(sub_value)
                    if count != math.prod(shape):
                        raise _WireError(f"layer {name!r}: a blob of shape {fmt_shape(shape)} holds {count} values")
                    blobs.append((shape, legacy))
            if blobs:
                layers[name] = blobs
    except (_WireError, UnicodeDecodeError) as exc:
        raise ConfigError(f"caffemodel {path}: not a binary Caffe model (NetParameter): {exc}") from None
    if not layers:
        raise ConfigError(f"caffemodel {path}: not a binary Caffe model: no layer with weights found")
    return layers


# --------------------------------------------------------------------------------------------------------
# Shape propagation through the layers (the rules of Caffe 1.0's Reshape methods)
# --------------------------------------------------------------------------------------------------------

class UnsupportedLayer(Exception):
    """A layer type :func:`infer_shapes` does not know; its shapes cannot be checked in advance."""


# Layers whose single top has the shape of their first bottom, and whose parameter shapes are listed in
# _param_shapes (none for most).
_SAME_SHAPE = frozenset({
    "ReLU", "Sigmoid", "TanH", "AbsVal", "BNLL", "ELU", "Exp", "Log", "Power", "Threshold", "Dropout",
    "Softmax", "MVN", "LRN", "BatchNorm", "Scale", "Bias", "PReLU", "Swish", "Clip",
})


def _spatial(conv: Message, name: str, default: int) -> Tuple[int, int]:
    """kernel/stride/pad/dilation of a convolution_param or pooling_param, as (h, w)."""
    h, w = _one(conv, f"{name}_h"), _one(conv, f"{name}_w")
    if h is not None or w is not None:
        return int(h if h is not None else default), int(w if w is not None else default)
    key = "kernel_size" if name == "kernel" else name
    values = [int(v) for v in conv.get(key, [])]
    if not values:
        return default, default
    return (values[0], values[-1]) if len(values) <= 2 else (values[-2], values[-1])


def _conv_shapes(layer: Layer, bottom: Shape) -> Tuple[Shape, List[Shape]]:
    conv = _sub(layer.params, "convolution_param")
    if len(bottom) != 4:
        raise InputShapeError(f"layer {layer.name!r} ({layer.type}) takes a 4-D blob, got {fmt_shape(bottom)}")
    n, c, h, w = bottom
    out = int(_one(conv, "num_output", 0))
    group = int(_one(conv, "group", 1))
    (kh, kw), (sh, sw) = _spatial(conv, "kernel", 0), _spatial(conv, "stride", 1)
    (ph, pw), (dh, dw) = _spatial(conv, "pad", 0), _spatial(conv, "dilation", 1)
    if out < 1 or group < 1 or kh < 1 or kw < 1 or c % group or out % group:
        raise ConfigError(f"layer {layer.name!r}: bad convolution_param (num_output {out}, group {group}, "
                          f"kernel {kh}x{kw}, {c} input channels)")
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if layer.type == "Convolution":
        oh, ow = (h + 2 * ph - ext_h) // sh + 1, (w + 2 * pw - ext_w) // sw + 1
        weights: Shape = (out, c // group, kh, kw)
    else:  # Deconvolution
        oh, ow = sh * (h - 1) + ext_h - 2 * ph, sw * (w - 1) + ext_w - 2 * pw
        weights = (c, out // group, kh, kw)
    if oh < 1 or ow < 1:
        raise InputShapeError(f"layer {layer.name!r} ({layer.type}): input {fmt_shape(bottom)} is too small")
    params = [weights, (out,)] if str(_one(conv, "bias_term", "true")).lower() in ("true", "1") else [weights]
    return (n, out, oh, ow), params


def _pool_shape(layer: Layer, bottom: Shape) -> Shape:
    pool = _sub(layer.params, "pooling_param")
    if len(bottom) != 4:
        raise InputShapeError(f"layer {layer.name!r} (Pooling) takes a 4-D blob, got {fmt_shape(bottom)}")
    n, c, h, w = bottom
    if str(_one(pool, "global_pooling", "false")).lower() in ("true", "1"):
        return (n, c, 1, 1)
    (kh, kw), (sh, sw), (ph, pw) = _spatial(pool, "kernel", 0), _spatial(pool, "stride", 1), _spatial(pool, "pad", 0)
    floor = str(_one(pool, "round_mode", "CEIL")) in ("FLOOR", "1")
    padded = bool(ph or pw)

    def size(x: int, k: int, s: int, p: int) -> int:
        span = x + 2 * p - k
        if span < 0:
            raise InputShapeError(f"layer {layer.name!r} (Pooling): input {fmt_shape(bottom)} is smaller "
                                  f"than its {kh}x{kw} kernel")
        out = span // s + 1 if floor else -(-span // s) + 1
        if padded and (out - 1) * s >= x + p:  # Caffe: the last window must start inside the image
            out -= 1
        return out

    return (n, c, size(h, kh, sh, ph), size(w, kw, sw, pw))


def _axis(value: Any, ndim: int) -> int:
    axis = int(value)
    return axis + ndim if axis < 0 else axis


def _layer_shapes(layer: Layer, bottoms: List[Shape]) -> Tuple[List[Shape], List[Shape]]:
    """(top shapes, parameter blob shapes) of one layer for the given bottom shapes."""
    kind, first = layer.type, bottoms[0] if bottoms else ()
    if kind in ("Convolution", "Deconvolution"):
        top, params = _conv_shapes(layer, first)
        return [top], params
    if kind == "Pooling":
        return [_pool_shape(layer, first)] * max(1, len(layer.tops)), []
    if kind == "Split":
        return [first] * len(layer.tops), []
    if kind == "Eltwise":
        for other in bottoms[1:]:
            if other != first:
                raise InputShapeError(f"layer {layer.name!r} (Eltwise) cannot add {fmt_shape(first)} and "
                                      f"{fmt_shape(other)}")
        return [first], []
    if kind == "Concat":
        concat = _sub(layer.params, "concat_param")
        axis = _axis(_one(concat, "axis", _one(concat, "concat_dim", 1)), len(first))
        total = 0
        for other in bottoms:
            if len(other) != len(first) or any(a != b for i, (a, b) in enumerate(zip(first, other)) if i != axis):
                raise InputShapeError(f"layer {layer.name!r} (Concat) cannot join "
                                      f"{' and '.join(fmt_shape(b) for b in bottoms)} along axis {axis}")
            total += other[axis]
        return [(*first[:axis], total, *first[axis + 1:])], []
    if kind == "Crop":
        crop = _sub(layer.params, "crop_param")
        axis = _axis(_one(crop, "axis", 2), len(first))
        offsets = [int(o) for o in crop.get("offset", [])] or [0]
        top = first[:axis] + bottoms[1][axis:]
        for i in range(axis, len(first)):
            offset = offsets[0] if len(offsets) == 1 else offsets[i - axis]
            if first[i] < top[i] + offset:
                raise InputShapeError(f"layer {layer.name!r} (Crop) cannot crop {fmt_shape(first)} to "
                                      f"{fmt_shape(bottoms[1])}")
        return [top], []
    if kind in _SAME_SHAPE:
        channels: Shape = first[1:2]
        blobs: List[Shape] = []
        if kind == "BatchNorm":
            blobs = [channels, channels, (1,)]
        elif kind in ("Scale", "Bias") and len(bottoms) == 1:
            sub = _sub(layer.params, "scale_param" if kind == "Scale" else "bias_param")
            axis = _axis(_one(sub, "axis", 1), len(first))
            num_axes = int(_one(sub, "num_axes", 1))
            shape = first[axis:] if num_axes == -1 else first[axis:axis + num_axes]
            blobs = [shape]
            if kind == "Scale" and str(_one(sub, "bias_term", "false")).lower() in ("true", "1"):
                blobs.append(shape)
        elif kind == "PReLU":
            shared = str(_one(_sub(layer.params, "prelu_param"), "channel_shared", "false")).lower()
            blobs = [(1,) if shared in ("true", "1") else channels]
        return [first] * max(1, len(layer.tops)), blobs
    raise UnsupportedLayer(kind)


@dataclass
class ShapePlan:
    """Every blob's shape for one input shape, and every layer's parameter blob shapes."""

    blobs: Dict[str, Shape]
    params: Dict[str, List[Shape]]


def infer_shapes(spec: NetSpec, input_shape: Shape) -> ShapePlan:
    """Propagate ``input_shape`` through the net as Caffe's Reshape would.

    Raises :class:`InputShapeError` when a layer cannot take its bottoms (Caffe would abort there),
    ConfigError for an inconsistent prototxt, and :class:`UnsupportedLayer` for a layer type it does not know.
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


def check_weights(spec: NetSpec, plan: ShapePlan, model: Dict[str, List[Tuple[Shape, bool]]], path: str) -> None:
    """Every layer with parameters must find them, with the same count and shapes, in the caffemodel."""
    for name, expected in plan.params.items():
        found = model.get(name)
        if found is None:
            raise ConfigError(f"caffemodel {path} has no weights for layer {name!r} of {spec.path}: "
                              "do the prototxt and the caffemodel belong together?")
        shapes = [shape for shape, _ in found]
        same = len(found) == len(expected) and all(
            shape == want or (legacy and shape == (1,) * (4 - len(want)) + want)
            for (shape, legacy), want in zip(found, expected)
        )
        if not same:
            raise ConfigError(
                f"caffemodel {path}: layer {name!r} has weights of shape "
                f"{', '.join(fmt_shape(s) for s in shapes)} but {spec.path} needs "
                f"{', '.join(fmt_shape(s) for s in expected)}: do the prototxt and the caffemodel belong together?"
            )


# --------------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------------

class Engine(ABC):
    """One loaded network.  ``forward`` takes one image at a time (batch size 1) and is not thread-safe."""

    name: str = ""

    def __init__(self, spec: NetSpec, output: str, checked: bool) -> None:
        self.spec = spec
        self.output = output
        self._checked = checked  # False: a layer type the shape check does not know (a warning was logged)
        self._plans: Dict[Shape, Shape] = {}
        self.output_channels = 0
        if checked:
            self.output_channels = self.expected_output((1, *spec.input_shape[1:]))[1]

    @classmethod
    @abstractmethod
    def load(
        cls, prototxt: Union[str, Path], caffemodel: Union[str, Path], gpu: Optional[int] = None, *,
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> Engine:
        """Load the model once; a missing, unreadable or mismatched file is a ConfigError naming it."""

    @property
    @abstractmethod
    def device(self) -> str:
        """Where forward runs: ``cpu`` or ``cuda:N``."""

    @property
    @abstractmethod
    def threads(self) -> Optional[int]:
        """The CPU threads the engine's compute library uses (None where it cannot be told)."""

    @abstractmethod
    def _forward(self, image: np.ndarray) -> np.ndarray:
        """Run the net on a checked 1xCxHxW float32 C-contiguous image."""

    def describe(self) -> str:
        return f"{self.name} on {self.device}, {self.threads or '?'} threads, output {self.output!r}"

    @property
    def input_shape(self) -> Shape:
        """The input shape the prototxt declares (any size the layers can take works, see ``check_input``)."""
        return self.spec.input_shape

    def expected_output(self, input_shape: Shape) -> Shape:
        """The output blob's shape for an input shape; InputShapeError when the net cannot take it."""
        shape = tuple(int(d) for d in input_shape)
        if shape not in self._plans:
            if len(self._plans) >= 1024:  # a long-running worker fed many sizes
                self._plans.clear()
            self._plans[shape] = infer_shapes(self.spec, shape).blobs[self.output]
        return self._plans[shape]

    def check_input(self, image: Any) -> np.ndarray:
        """The image as a C-contiguous float32 1xCxHxW array whose output is 1xKxHxW, or InputShapeError."""
        if not isinstance(image, np.ndarray):
            raise InputShapeError(f"expected a numpy array, got {type(image).__name__}")
        if image.dtype.kind not in "fiu":
            raise InputShapeError(f"expected float32 pixels, got dtype {image.dtype}")
        channels = self.spec.input_shape[1]
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != channels:
            raise InputShapeError(
                f"image of shape {fmt_shape(image.shape)}: expected 1x{channels}xHxW (one image: the batch size "
                "is always 1 because BatchNorm uses the statistics of the batch)"
            )
        if min(image.shape) < 1:
            raise InputShapeError(f"image of shape {fmt_shape(image.shape)} is empty")
        if self._checked:
            h, w = image.shape[2:]
            try:
                out = self.expected_output(image.shape)
            except InputShapeError as exc:
                raise InputShapeError(f"image of shape {fmt_shape(image.shape)}: {exc}; {self._size_hint(h, w)}") \
                    from None
            if out[0] != 1 or out[2:] != (h, w):
                raise InputShapeError(f"image of shape {fmt_shape(image.shape)}: the output {self.output!r} would be "
                                      f"{fmt_shape(out)}, not 1xKx{h}x{w}; {self._size_hint(h, w)}")
        return np.ascontiguousarray(image, dtype=np.float32)

    def _size_ok(self, size: int) -> bool:
        try:
            out = self.expected_output((1, self.spec.input_shape[1], size, size))
        except InputShapeError:
            return False
        return out[2:] == (size, size)

    def _size_hint(self, h: int, w: int) -> str:
        hints = []
        for axis, size in (("H", h), ("W", w)):
            if self._size_ok(size):
                continue
            below = next((s for s in range(size - 1, max(size - 257, 0), -1) if self._size_ok(s)), None)
            above = next((s for s in range(size + 1, size + 257) if self._size_ok(s)), None)
            near = " or ".join(str(s) for s in (below, above) if s is not None) or "none within 256"
            hints.append(f"{axis}={size} does not fit the net (nearest sizes that do: {near})")
        return "; ".join(hints) or "the net cannot take this size"

    def forward(self, image: np.ndarray) -> np.ndarray:
        """The output blob (default ``softmax``) for one 1xCxHxW image, as a new 1xKxHxW float32 array."""
        x = self.check_input(image)
        out = self._forward(x)
        if out.ndim != 4 or out.shape[0] != 1 or out.shape[2:] != x.shape[2:]:
            raise RuntimeError(f"{self.name}: output {self.output!r} for input {fmt_shape(x.shape)} has shape "
                               f"{fmt_shape(out.shape)}, expected 1xKx{x.shape[2]}x{x.shape[3]}")
        return out


def _check_files(
    prototxt: Union[str, Path], caffemodel: Union[str, Path], output: str,
    prototxt_data: Optional[bytes] = None, caffemodel_data: Optional[bytes] = None,
) -> Tuple[NetSpec, bool]:
    """Everything that can be checked before an engine touches the files: (spec, shapes checked?)."""
    spec = load_net_spec(prototxt, prototxt_data)
    model = read_caffemodel_shapes(caffemodel, caffemodel_data)
    try:
        plan = infer_shapes(spec, spec.input_shape)
    except UnsupportedLayer as exc:
        log.warning("prototxt %s: layer type %s is unknown to the shape check: weights and input sizes are not "
                    "checked before the engine sees them", spec.path, exc)
        return spec, False
    except InputShapeError as exc:
        raise ConfigError(f"prototxt {spec.path}: the declared input {fmt_shape(spec.input_shape)} does not fit "
                          f"the layers: {exc}") from None
    if output not in plan.blobs:
        raise ConfigError(f"prototxt {spec.path}: no blob named {output!r} (the output blob)")
    check_weights(spec, plan, model, str(caffemodel))
    return spec, True


def _open_blas_libraries() -> List[Any]:
    """The OpenBLAS libraries loaded in this process (ctypes handles exporting openblas_set_num_threads)."""
    paths = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split()
                if len(parts) >= 6 and "openblas" in os.path.basename(parts[-1]):
                    paths.add(os.path.realpath(parts[-1]))
    except OSError:
        return []
    libraries = []
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
            library.openblas_get_num_threads.restype = ctypes.c_int
            library.openblas_set_num_threads.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            continue
        libraries.append(library)
    return libraries


def _cuda_device_count() -> Optional[int]:
    """CUDA devices seen through the libcudart this process loaded (with a CUDA Caffe); None without one."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libcudart.so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            count = ctypes.c_int(0)
            if ctypes.CDLL(path).cudaGetDeviceCount(ctypes.byref(count)) == 0:
                return count.value
            return 0
        except (OSError, AttributeError):
            continue
    return None


class CaffeEngine(Engine):
    """Genuine Caffe 1.0 through pycaffe (``import caffe``), TEST phase."""

    name = "caffe"

    def __init__(self, spec: NetSpec, output: str, checked: bool, net: Any, gpu: Optional[int]) -> None:
        super().__init__(spec, output, checked)
        self._net = net
        self._gpu = gpu

    @classmethod
    def load(
        cls, prototxt: Union[str, Path], caffemodel: Union[str, Path], gpu: Optional[int] = None, *,
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> CaffeEngine:
        spec, checked = _check_files(prototxt, caffemodel, output)
        caffe = import_caffe()
        if gpu is None:
            caffe.set_mode_cpu()
        else:
            count = _cuda_device_count()
            if count is None:
                raise ConfigError(f"GPU {gpu} requested, but this Caffe is a CPU-only build (no CUDA runtime "
                                  "loaded); run without a GPU id")
            if not 0 <= gpu < count:
                raise ConfigError(f"GPU {gpu} requested, but CUDA sees {count} device(s)")
            caffe.set_mode_gpu()
            caffe.set_device(gpu)
        if threads is not None:
            for library in _open_blas_libraries():
                library.openblas_set_num_threads(threads)
        net = caffe.Net(str(prototxt), caffe.TEST, weights=str(caffemodel))
        if output not in net.blobs:
            raise ConfigError(f"prototxt {prototxt}: no blob named {output!r} (the output blob)")
        return cls(spec, output, checked, net, gpu)

    @property
    def device(self) -> str:
        return "cpu" if self._gpu is None else f"cuda:{self._gpu}"

    @property
    def threads(self) -> Optional[int]:
        if self._gpu is not None:
            return None
        counts = {int(library.openblas_get_num_threads()) for library in _open_blas_libraries()}
        return counts.pop() if len(counts) == 1 else None

    def describe(self) -> str:
        blas = "OpenBLAS" if _open_blas_libraries() else "BLAS: not OpenBLAS (check libblas.so.3)"
        return f"{super().describe()}, {blas}"

    def _forward(self, image: np.ndarray) -> np.ndarray:
        blob = self._net.blobs[self.spec.input_name]
        if tuple(blob.data.shape) != image.shape:
            blob.reshape(*image.shape)
            self._net.reshape()
        blob.data[...] = image
        self._net.forward()
        return np.array(self._net.blobs[self.output].data, dtype=np.float32, copy=True)


def import_cv2() -> Any:
    import cv2  # type: ignore[import-not-found,unused-ignore]

    return cv2


def import_caffe() -> Any:
    """``import caffe``, with glog's INFO and WARNING lines (the whole net at every load) off by default."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe  # type: ignore[import-not-found,unused-ignore]

    return caffe


class OpenCVEngine(Engine):
    """OpenCV 4.x DNN (``cv2.dnn.readNetFromCaffe``) on the CPU.

    One ``cv2.dnn.Net`` per input size: OpenCV 4.5 and 4.14 alike return wrong outputs (off by up to 0.67 on
    the tiny net) once a net that ran at one size runs at another, for that and every later image, unless
    layer fusion is off.  Fusion is kept (it is the fast path) and each size gets its own net, built from the
    model bytes read once at load; the ``NETS_KEPT`` most recently used sizes are kept.
    """

    name = "opencv"
    NETS_KEPT = 3

    def __init__(self, spec: NetSpec, output: str, checked: bool, cv2: Any, model: Tuple[bytes, bytes]) -> None:
        super().__init__(spec, output, checked)
        self._cv2 = cv2
        self._model = model
        self._nets: OrderedDict[Shape, Any] = OrderedDict()
        # forward() names a layer: the last one that writes the output blob.
        self._output_layer = next((lay.name for lay in reversed(spec.layers) if output in lay.tops), output)
        self._nets[spec.input_shape] = self._new_net()  # now, so that a file OpenCV rejects fails the load

    @classmethod
    def load(
        cls, prototxt: Union[str, Path], caffemodel: Union[str, Path], gpu: Optional[int] = None, *,
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> OpenCVEngine:
        if gpu is not None:
            raise ConfigError(f"the opencv engine runs on the CPU only (GPU {gpu} requested): use the caffe "
                              "engine for a GPU")
        model = (_read_file(str(prototxt), "prototxt"), _read_file(str(caffemodel), "caffemodel"))
        spec, checked = _check_files(prototxt, caffemodel, output, *model)
        cv2 = import_cv2()
        if int(cv2.__version__.split(".")[0]) >= 5:
            raise ConfigError(f"OpenCV {cv2.__version__} has no Caffe importer: the opencv engine needs OpenCV 4.x")
        if threads is not None:
            cv2.setNumThreads(threads)
        try:
            return cls(spec, output, checked, cv2, model)
        except cv2.error as exc:
            raise ConfigError(f"OpenCV cannot load {prototxt} with {caffemodel}: {_cv_message(exc)}") from None

    def _new_net(self) -> Any:
        dnn = self._cv2.dnn
        net = dnn.readNetFromCaffe(*(np.frombuffer(data, dtype=np.uint8) for data in self._model))
        net.setPreferableBackend(dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(dnn.DNN_TARGET_CPU)
        return net

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def threads(self) -> Optional[int]:
        return int(self._cv2.getNumThreads())

    def describe(self) -> str:
        return f"{super().describe()}, OpenCV {self._cv2.__version__}"

    def _forward(self, image: np.ndarray) -> np.ndarray:
        try:
            net = self._nets.pop(image.shape, None)
            if net is None:
                net = self._new_net()
                while len(self._nets) >= self.NETS_KEPT:
                    self._nets.popitem(last=False)
            self._nets[image.shape] = net
            net.setInput(image)
            out = net.forward(self._output_layer)
        except self._cv2.error as exc:
            raise RuntimeError(f"opencv forward failed for input {fmt_shape(image.shape)}: {_cv_message(exc)}") \
                from None
        return np.ascontiguousarray(out, dtype=np.float32)


def _cv_message(exc: BaseException) -> str:
    """The useful line of a cv2.error ('... error: (-215:Assertion failed) ... in function ...')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[0] if lines else repr(exc))


ENGINES: Dict[str, Any] = {"caffe": CaffeEngine, "opencv": OpenCVEngine}


def engine_available(name: str) -> bool:
    """Whether the engine's library can be imported here (``caffe`` or OpenCV 4.x ``cv2``)."""
    try:
        if name == "caffe":
            import_caffe()
        elif name == "opencv":
            return int(import_cv2().__version__.split(".")[0]) < 5
        else:
            return False
    except ImportError:
        return False
    return True


def make_engine(
    name: str, prototxt: Union[str, Path], caffemodel: Union[str, Path], gpu: Optional[int] = None, *,
    threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
) -> Engine:
    """Load ``caffe``, ``opencv`` or ``auto`` (caffe when importable, else opencv)."""
    if name == "auto":
        name = "caffe" if engine_available("caffe") else "opencv"
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}: choose one of {', '.join((*ENGINE_NAMES, 'auto'))}")
    if not engine_available(name):
        library = "pycaffe ('import caffe')" if name == "caffe" else "OpenCV 4.x ('import cv2')"
        raise ConfigError(f"engine {name!r} is not available here: {library} cannot be imported")
    engine: Engine = ENGINES[name].load(prototxt, caffemodel, gpu, threads=threads, output=output)
    log.debug("loaded %s with %s (%s)", prototxt, caffemodel, engine.describe())
    return engine


__all__ = [
    "DEFAULT_OUTPUT", "ENGINES", "ENGINE_NAMES", "CaffeEngine", "Engine", "InputShapeError", "NetSpec",
    "OpenCVEngine", "check_weights", "engine_available", "infer_shapes", "load_net_spec", "make_engine",
    "parse_prototxt_text", "read_caffemodel_shapes",
]
