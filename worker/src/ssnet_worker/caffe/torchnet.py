"""The lowered Caffe graph as a ``torch.nn.Module`` (needs torch; imported only by the torch engine)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ssnet_worker.caffe.graph import MAX, PROD, SUM, Graph, Op, last_uses
from ssnet_worker.caffe.model import pool_output_size

# What Caffe's MAX pooling leaves in a window that lies wholly outside the image.
_CAFFE_MAX_EMPTY = -float(np.finfo(np.float32).max)


class CaffeNet(torch.nn.Module):
    """Runs a :class:`~ssnet_worker.caffe.graph.Graph`: N x C x H x W in, the output blob out.

    Weights are buffers (no gradients).  Each intermediate value is dropped after its last use, and ReLUs run
    in place where nothing else reads their input, so peak memory stays near two layers' activations.
    """

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self._last = last_uses(graph)
        self._arrays: List[Dict[str, str]] = []
        for index, op in enumerate(graph.ops):
            names = {}
            for key, array in op.arrays.items():
                name = f"op{index}_{key}"
                self.register_buffer(name, torch.from_numpy(np.array(array, dtype=np.float32)), persistent=True)
                names[key] = name
            self._arrays.append(names)

    def _param(self, index: int, key: str) -> torch.Tensor:
        return getattr(self, self._arrays[index][key])  # type: ignore[no-any-return]

    def _optional(self, index: int, key: str) -> Optional[torch.Tensor]:
        return self._param(index, key) if key in self._arrays[index] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: Dict[str, torch.Tensor] = {self.graph.input: x}
        for index, op in enumerate(self.graph.ops):
            inputs = [values[name] for name in op.inputs]
            values[op.output] = self._run(index, op, inputs)
            for name in set(op.inputs):
                if self._last.get(name, -1) <= index and name != self.graph.output:
                    del values[name]
        return values[self.graph.output]

    def _exclusive(self, index: int, op: Op) -> bool:
        """Whether op ``index`` is the last reader of its (single) input, which may then be overwritten."""
        return len(op.inputs) == 1 and self._last.get(op.inputs[0], -1) == index and op.inputs[0] != self.graph.input

    def _run(self, index: int, op: Op, inputs: List[torch.Tensor]) -> torch.Tensor:
        a = op.attrs
        x = inputs[0]
        if op.kind == "conv":
            return F.conv2d(x, self._param(index, "weight"), self._optional(index, "bias"), a["stride"], a["pad"],
                            a["dilation"], a["group"])
        if op.kind == "deconv":
            return F.conv_transpose2d(x, self._param(index, "weight"), self._optional(index, "bias"), a["stride"],
                                      a["pad"], 0, a["group"], a["dilation"])
        if op.kind == "norm":  # per image, per channel: instance normalisation with the Scale as affine
            return F.instance_norm(x, weight=self._param(index, "scale"), bias=self._param(index, "bias"),
                                   eps=a["eps"])
        if op.kind == "affine":
            scale, bias = self._param(index, "scale"), self._optional(index, "bias")
            y = x * scale
            return y if bias is None else y.add_(bias)
        if op.kind == "relu":
            inplace = self._exclusive(index, op)
            if a["slope"]:
                return F.leaky_relu(x, a["slope"], inplace=inplace)
            return F.relu(x, inplace=inplace)
        if op.kind == "pool":
            return _pool(x, a)
        if op.kind == "eltwise":
            return _eltwise(a["operation"], a["coeffs"], inputs)
        if op.kind == "concat":
            return torch.cat(inputs, dim=a["axis"])
        if op.kind == "crop":
            ref = inputs[1]
            slices = [slice(None)] * x.dim()
            for axis, offset in enumerate(a["offsets"], start=a["axis"]):
                slices[axis] = slice(offset, offset + ref.shape[axis])
            return x[tuple(slices)]
        if op.kind == "softmax":
            return torch.softmax(x, dim=a["axis"])
        raise ValueError(f"unknown operation {op.kind!r}")


def _eltwise(operation: int, coeffs: List[float], inputs: List[torch.Tensor]) -> torch.Tensor:
    if operation == SUM:
        out = inputs[0] * coeffs[0] if coeffs[0] != 1 else inputs[0].clone()
        for coeff, other in zip(coeffs[1:], inputs[1:]):
            out.add_(other, alpha=coeff)
        return out
    out = inputs[0].clone()
    for other in inputs[1:]:
        if operation == PROD:
            out.mul_(other)
        elif operation == MAX:
            out = torch.maximum(out, other)
    return out


def _pool(x: torch.Tensor, a: Dict[str, Any]) -> torch.Tensor:
    if a["global"]:
        return torch.amax(x, dim=(2, 3), keepdim=True) if a["method"] == "max" else x.mean(dim=(2, 3), keepdim=True)
    kernel: Tuple[int, int] = a["kernel"]
    stride: Tuple[int, int] = a["stride"]
    pad: Tuple[int, int] = a["pad"]
    if a["method"] == "max":
        y = F.max_pool2d(x, kernel, stride, pad, ceil_mode=a["ceil"])
    else:  # Caffe divides by the window clipped to the padded image, as torch does with count_include_pad
        y = F.avg_pool2d(x, kernel, stride, pad, ceil_mode=a["ceil"], count_include_pad=True)
    # torch drops a last window that starts in the right/bottom padding even without padding; Caffe keeps it
    # when there is none (a window wholly outside the image: -FLT_MAX for MAX, 0 for AVE).
    want = [pool_output_size(x.shape[2 + i], kernel[i], stride[i], pad[i], a["ceil"]) for i in (0, 1)]
    extra_h, extra_w = want[0] - y.shape[2], want[1] - y.shape[3]
    if extra_h > 0 or extra_w > 0:
        fill = _CAFFE_MAX_EMPTY if a["method"] == "max" else 0.0
        y = F.pad(y, (0, max(extra_w, 0), 0, max(extra_h, 0)), value=fill)
    return y
