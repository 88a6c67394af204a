"""Inference engines for a Caffe network such as the SSNet UResNet.

``make_engine(name, prototxt, caffemodel, device="cpu", precision="float32", threads=None)`` loads the model once
and returns an :class:`Engine`; ``engine.forward(images)`` takes an ``N x C x H x W`` float32 array and returns the
output blob (``softmax`` by default) as ``N x K x H x W`` float32, each image's result the one it has alone.

* ``torch``: the network rebuilt by the Caffe importer (:mod:`ssnet_worker.caffe`) as a ``torch.nn.Module``, on
  the CPU or a CUDA device (``cuda:N``, among ``CUDA_VISIBLE_DEVICES``), float32 (TF32 off, so results match
  Caffe) or float16 (CUDA only).  The GPU engine.
* ``onnx``: the same network as an ONNX graph (built with ``onnx``, no torch), run by ONNX Runtime: the CPU
  provider, or the CUDA (and TensorRT, when present) provider of onnxruntime-gpu on ``cuda:N``.  The fast CPU
  engine.
* ``caffe``: genuine Caffe 1.0 through ``import caffe`` (Debian bullseye's ``python3-caffe``), the reference.
* ``opencv``: ``cv2.dnn.readNetFromCaffe`` on the CPU (OpenCV 4.x; 5.x removed the Caffe importer).
* ``auto``: ``torch`` on a CUDA device; else ``onnx`` when ONNX Runtime is installed; else ``caffe``, else
  ``opencv``.

Batches.  Every BatchNorm of SSNet normalises with the statistics of the current batch (``use_global_stats:
false``), even at test time, so genuine Caffe's result for an image depends on what else is in its batch; batch
size 1 is the reference.  ``torch`` and ``onnx`` compute those statistics per image (:attr:`Engine.per_image`),
which is exactly Caffe's batch-1 result for every image of a batch, so they run a batch as one forward pass.
``caffe`` and ``opencv`` run the images of a batch one by one.

Caffe aborts the whole process (glog ``CHECK``) on a missing or mismatched model file and on an input size its
layers cannot take, and OpenCV crashes on a model file that lacks a layer's weights.  So every engine first
checks the files with the importer: a bad file is a :class:`~ssnet_common.errors.ConfigError` naming it and
the layer, at load time; an input the net cannot take is an :class:`InputShapeError` (a ``ValueError``) naming
the shape and the nearest sizes that work, raised before the engine sees it.

Thread counts: ``threads`` sets the engine's CPU pool (torch's intra-op threads, ONNX Runtime's intra-op
threads, OpenCV's pool, OpenBLAS's for Caffe); without it the libraries keep their own settings.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ssnet_common.errors import ConfigError
from ssnet_worker.caffe.model import (
    CaffeModel,
    InputShapeError,
    NetSpec,
    Shape,
    UnsupportedLayer,
    fmt_shape,
    infer_shapes,
    load_model,
    load_net_spec,
    read_file,
    read_weights,
)

log = logging.getLogger(__name__)

ENGINE_NAMES = ("torch", "onnx", "caffe", "opencv")
PRECISIONS = ("float32", "float16")
DEFAULT_OUTPUT = "softmax"
PathLike = Union[str, Path]

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(text: str) -> str:
    """``cpu`` or ``cuda:N`` (``cuda`` alone is ``cuda:0``); anything else is a ConfigError."""
    match = _DEVICE.match(text.strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigError(f"device {text!r}: expected cpu or cuda:N (N among the visible CUDA devices)")
    return "cpu" if match.group(1) == "cpu" else f"cuda:{int(match.group(2) or 0)}"


def gpu_index(device: str) -> Optional[int]:
    """N of ``cuda:N``; None for the CPU."""
    return None if device == "cpu" else int(device.split(":")[1])


class Engine(ABC):
    """One loaded network.  ``forward`` takes a batch of images and is not thread-safe."""

    name: str = ""
    #: True when a batch of N images gives each image its batch-1 result (per-image normalisation).
    per_image: bool = False
    #: The output must have the input's H x W (a segmentation net such as SSNet); False for any other net.
    same_size: bool = True

    def __init__(self, spec: NetSpec, output: str, checked: bool, device: str = "cpu",
                 precision: str = "float32") -> None:
        self.spec = spec
        self.output = output
        self._checked = checked  # False: a layer type the shape check does not know (a warning was logged)
        self._device = device
        self.precision = precision
        self._plans: Dict[Shape, Shape] = {}
        self.output_channels = 0
        if checked:
            self.output_channels = self.expected_output((1, *spec.input_shape[1:]))[1]

    @classmethod
    @abstractmethod
    def load(
        cls, prototxt: PathLike, caffemodel: PathLike, *, device: str = "cpu", precision: str = "float32",
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> Engine:
        """Load the model once; a missing, unreadable or mismatched file is a ConfigError naming it."""

    @property
    def device(self) -> str:
        """Where forward runs: ``cpu`` or ``cuda:N``."""
        return self._device

    @property
    @abstractmethod
    def threads(self) -> Optional[int]:
        """The CPU threads the engine's compute library uses (None where it cannot be told)."""

    @abstractmethod
    def _forward(self, images: np.ndarray) -> np.ndarray:
        """Run the net on checked N x C x H x W float32 C-contiguous images (N == 1 unless ``per_image``)."""

    def describe(self) -> str:
        threads = ""
        if self.device == "cpu":
            threads = f", {self.threads} threads" if self.threads else f", {self.name}'s default threads"
        return f"{self.name} on {self.device}, {self.precision}{threads}, output {self.output!r}"

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

    def check_input(self, images: Any) -> np.ndarray:
        """The images as a C-contiguous float32 NxCxHxW array whose output is NxKxHxW, or InputShapeError."""
        if not isinstance(images, np.ndarray):
            raise InputShapeError(f"expected a numpy array, got {type(images).__name__}")
        if images.dtype.kind not in "fiu":
            raise InputShapeError(f"expected float32 pixels, got dtype {images.dtype}")
        channels = self.spec.input_shape[1]
        if images.ndim != 4 or images.shape[1] != channels:
            raise InputShapeError(f"images of shape {fmt_shape(images.shape)}: expected Nx{channels}xHxW")
        if min(images.shape) < 1:
            raise InputShapeError(f"images of shape {fmt_shape(images.shape)}: empty")
        if self._checked:
            h, w = images.shape[2:]
            one = (1, *images.shape[1:])
            try:
                out = self.expected_output(one)
            except InputShapeError as exc:
                raise InputShapeError(f"image of shape {fmt_shape(one)}: {exc}; {self._size_hint(h, w)}") from None
            if self.same_size and (out[0] != 1 or out[2:] != (h, w)):
                raise InputShapeError(f"image of shape {fmt_shape(one)}: the output {self.output!r} would be "
                                      f"{fmt_shape(out)}, not 1xKx{h}x{w}; {self._size_hint(h, w)}")
        return np.ascontiguousarray(images, dtype=np.float32)

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

    def forward(self, images: np.ndarray) -> np.ndarray:
        """The output blob (default ``softmax``) for N x C x H x W images, as a new N x K x H x W float32 array.

        Each image's result is the one it has alone (batch size 1), whatever else is in the batch.
        """
        x = self.check_input(images)
        if self.per_image or x.shape[0] == 1:
            out = self._forward(x)
        else:
            out = np.concatenate([self._forward(x[i:i + 1]) for i in range(x.shape[0])])
        if self._checked:
            expected = (x.shape[0], *self.expected_output((1, *x.shape[1:]))[1:])
            if out.shape != expected:
                raise RuntimeError(f"{self.name}: output {self.output!r} for input {fmt_shape(x.shape)} has shape "
                                   f"{fmt_shape(out.shape)}, expected {fmt_shape(expected)}")
        return out


def _check_files(
    prototxt: PathLike, caffemodel: PathLike, output: str,
    prototxt_data: Optional[bytes] = None, caffemodel_data: Optional[bytes] = None,
) -> Tuple[NetSpec, bool]:
    """For the engines that read the files themselves (caffe, opencv): (spec, shapes checked?).

    A layer type the importer does not know is only a warning here: Caffe and OpenCV may still run it.
    """
    try:
        model = load_model(prototxt, caffemodel, output, prototxt_data=prototxt_data, caffemodel_data=caffemodel_data)
    except UnsupportedLayer as exc:
        log.warning("%s: weights and input sizes are not checked before the engine sees them", exc)
        read_weights(caffemodel, caffemodel_data)
        return load_net_spec(prototxt, prototxt_data), False
    return model.spec, True


def _load_importer_model(prototxt: PathLike, caffemodel: PathLike, output: str) -> CaffeModel:
    """For the engines built by the importer (torch, onnx): every layer must be one it knows."""
    return load_model(prototxt, caffemodel, output)


def _cpu_only(name: str, device: str, precision: str) -> None:
    if device != "cpu":
        raise ConfigError(f"the {name} engine runs on the CPU only ({device} requested): use the torch engine "
                          "for a GPU")
    _float32_only(name, precision)


def _float32_only(name: str, precision: str) -> None:
    if precision != "float32":
        raise ConfigError(f"the {name} engine computes in float32 only ({precision} requested): float16 runs on "
                          "the torch engine on a CUDA device")


class TorchEngine(Engine):
    """The importer's network as a ``torch.nn.Module``; per-image BatchNorm statistics, so batches are exact."""

    name = "torch"
    per_image = True

    def __init__(self, model: CaffeModel, device: str, precision: str, torch: Any) -> None:
        super().__init__(model.spec, model.output, True, device, precision)
        from ssnet_worker.caffe.graph import lower
        from ssnet_worker.caffe.torchnet import CaffeNet

        self._torch = torch
        self._torch_device = torch.device(device)
        self._net = CaffeNet(lower(model)).eval().to(self._torch_device)
        # channels_last only where tensor cores take float16; on the CPU contiguous NCHW measured faster.
        self._channels_last = device != "cpu" and precision == "float16"
        if self._channels_last:
            self._net = self._net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def load(
        cls, prototxt: PathLike, caffemodel: PathLike, *, device: str = "cpu", precision: str = "float32",
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> TorchEngine:
        torch = import_torch()
        if device != "cpu":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ConfigError(f"{device} requested, but torch sees no CUDA device (torch {torch.__version__}, "
                                  f"CUDA build: {torch.version.cuda or 'no'}; CUDA_VISIBLE_DEVICES="
                                  f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
            if gpu_index(device) >= count:  # type: ignore[operator]
                raise ConfigError(f"{device} requested, but torch sees {count} CUDA device(s)")
            # float32 must stay float32: TF32 would change results by ~1e-3.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True  # autotune per input shape (a worker sees few shapes)
        elif precision != "float32":
            raise ConfigError(f"precision {precision} needs a CUDA device: on the CPU the torch engine computes in "
                              "float32")
        if threads is not None:
            torch.set_num_threads(threads)
        return cls(_load_importer_model(prototxt, caffemodel, output), device, precision, torch)

    @property
    def threads(self) -> Optional[int]:
        return int(self._torch.get_num_threads())

    def _forward(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if not images.flags.writeable:  # a memory-mapped input: torch wants writable memory
                images = images.copy()
            x = torch.from_numpy(images).to(self._torch_device, non_blocking=True)
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.precision == "float16":
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    y = self._net(x)
            else:
                y = self._net(x)
            return np.ascontiguousarray(y.float().cpu().numpy())


class OnnxEngine(Engine):
    """The importer's network as an ONNX graph run by ONNX Runtime; per-image statistics, batches are exact."""

    name = "onnx"
    per_image = True

    def __init__(self, model: CaffeModel, device: str, session: Any, threads: Optional[int], ort: Any) -> None:
        super().__init__(model.spec, model.output, True, device, "float32")
        self._session = session
        self._threads = threads
        self._ort = ort
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(
        cls, prototxt: PathLike, caffemodel: PathLike, *, device: str = "cpu", precision: str = "float32",
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> OnnxEngine:
        _float32_only("onnx", precision)
        ort = import_onnxruntime()
        from ssnet_worker.caffe.graph import lower
        from ssnet_worker.caffe.onnxnet import build_onnx

        providers: List[Any] = ["CPUExecutionProvider"]
        if device != "cpu":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise ConfigError(f"{device} requested, but this ONNX Runtime has no CUDA provider (it has "
                                  f"{', '.join(available)}): install onnxruntime-gpu, or use the torch engine")
            options = {"device_id": gpu_index(device)}
            providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
            if "TensorrtExecutionProvider" in available:
                providers.insert(0, ("TensorrtExecutionProvider", options))
        model = _load_importer_model(prototxt, caffemodel, output)
        graph = build_onnx(lower(model), model.spec.name or "caffe_net", output_name=output)
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3  # errors only
        if threads is not None:
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(graph.SerializeToString(), session_options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own (pybind) types
            raise ConfigError(f"ONNX Runtime cannot load the net from {prototxt}: {exc}") from None
        return cls(model, device, session, threads, ort)

    @property
    def threads(self) -> Optional[int]:
        return self._threads

    def describe(self) -> str:
        return f"{super().describe()}, ONNX Runtime {self._ort.__version__} ({self._session.get_providers()[0]})"

    def _forward(self, images: np.ndarray) -> np.ndarray:
        out = self._session.run([self.output], {self._input: images})[0]
        return np.ascontiguousarray(out, dtype=np.float32)


def _blas_libraries() -> List[Dict[str, Any]]:
    """The BLAS libraries loaded in this process, as threadpoolctl describes them (internal_api, num_threads)."""
    from threadpoolctl import threadpool_info

    return [info for info in threadpool_info() if info.get("user_api") == "blas"]


def _cuda_device_count() -> Optional[int]:
    """CUDA devices seen through the libcudart this process loaded (with a CUDA Caffe); None without one.

    By hand: no maintained library asks a CUDA runtime that another library (Caffe) loaded, without CUDA bindings.
    """
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

    def __init__(self, spec: NetSpec, output: str, checked: bool, net: Any, device: str) -> None:
        super().__init__(spec, output, checked, device)
        self._net = net
        self._gpu = gpu_index(device)

    @classmethod
    def load(
        cls, prototxt: PathLike, caffemodel: PathLike, *, device: str = "cpu", precision: str = "float32",
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> CaffeEngine:
        _float32_only("caffe", precision)
        spec, checked = _check_files(prototxt, caffemodel, output)
        caffe = import_caffe()
        gpu = gpu_index(device)
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
        if threads is not None:  # after import caffe, which loads the BLAS
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads, user_api="blas")
        net = caffe.Net(str(prototxt), caffe.TEST, weights=str(caffemodel))
        if output not in net.blobs:
            raise ConfigError(f"prototxt {prototxt}: no blob named {output!r} (the output blob)")
        return cls(spec, output, checked, net, device)

    @property
    def threads(self) -> Optional[int]:
        if self._gpu is not None:
            return None
        counts = {int(library["num_threads"]) for library in _blas_libraries()}
        return counts.pop() if len(counts) == 1 else None

    def describe(self) -> str:
        openblas = any(library.get("internal_api") == "openblas" for library in _blas_libraries())
        blas = "OpenBLAS" if openblas else "BLAS: not OpenBLAS (check libblas.so.3)"
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
    # OpenCV 4.x DNN kills the process (SIGSEGV, no Python error) on wide inputs.  Measured on the tiny net with
    # OpenCV 4.14 for 64 to 2016 rows: every size with rows x cols^2 >= 2^33 crashes, every smaller one runs
    # (1008 rows: 2912 columns run, 2920 crash; a whole MicroBooNE plane 2 is 1008x3456).  Such inputs are
    # refused before OpenCV sees them: an error for that image, and the worker stays up.
    MAX_ROWS_COLS2 = 2**33

    def __init__(self, spec: NetSpec, output: str, checked: bool, cv2: Any, model: Tuple[bytes, bytes]) -> None:
        super().__init__(spec, output, checked, "cpu")
        self._cv2 = cv2
        self._model = model
        self._nets: OrderedDict[Shape, Any] = OrderedDict()
        # forward() names a layer: the last one that writes the output blob.
        self._output_layer = next((lay.name for lay in reversed(spec.layers) if output in lay.tops), output)
        self._nets[spec.input_shape] = self._new_net()  # now, so that a file OpenCV rejects fails the load

    @classmethod
    def load(
        cls, prototxt: PathLike, caffemodel: PathLike, *, device: str = "cpu", precision: str = "float32",
        threads: Optional[int] = None, output: str = DEFAULT_OUTPUT,
    ) -> OpenCVEngine:
        _cpu_only("opencv", device, precision)
        model = (read_file(str(prototxt), "prototxt"), read_file(str(caffemodel), "caffemodel"))
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
    def threads(self) -> Optional[int]:
        return int(self._cv2.getNumThreads())

    def describe(self) -> str:
        return f"{super().describe()}, OpenCV {self._cv2.__version__}"

    def check_input(self, images: Any) -> np.ndarray:
        checked = super().check_input(images)
        rows, cols = checked.shape[2:]
        if rows * cols * cols >= self.MAX_ROWS_COLS2:
            raise InputShapeError(f"image of {rows}x{cols} pixels: OpenCV's DNN module crashes the process on "
                                  f"inputs with rows x columns^2 >= 2^33; tile the image (ssnet-worker "
                                  f"--ssnet-tile) or use another engine")
        return checked

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


def import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigError("engine 'torch' is not available here: torch cannot be imported "
                          "(pip install 'ssnet-worker[torch]')") from None
    return torch


def import_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401  (the graph is built with it)
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"engine 'onnx' is not available here: {exc.name} cannot be imported "
                          "(pip install 'ssnet-worker[onnx]')") from None
    return onnxruntime


ENGINES: Dict[str, Any] = {"torch": TorchEngine, "onnx": OnnxEngine, "caffe": CaffeEngine, "opencv": OpenCVEngine}

_MODULES = {"torch": ("torch",), "onnx": ("onnx", "onnxruntime"), "caffe": ("caffe",), "opencv": ("cv2",)}


def engine_available(name: str) -> bool:
    """Whether the engine's libraries can be imported here (OpenCV: 4.x only)."""
    try:
        if name == "caffe":
            import_caffe()
        elif name == "opencv":
            return int(import_cv2().__version__.split(".")[0]) < 5
        elif name in _MODULES:
            for module in _MODULES[name]:
                __import__(module)
        else:
            return False
    except ImportError:
        return False
    return True


def resolve_engine(name: str, device: str) -> str:
    """``auto`` -> torch on a CUDA device; else onnx when installed; else caffe, else opencv."""
    if name != "auto":
        if name not in ENGINES:
            raise ConfigError(f"unknown engine {name!r}: choose one of {', '.join((*ENGINE_NAMES, 'auto'))}")
        return name
    order = ["torch", "caffe"] if device != "cpu" else ["onnx", "caffe", "opencv", "torch"]
    for candidate in order:
        if engine_available(candidate):
            return candidate
    raise ConfigError(f"no engine for {device} is installed here (tried {', '.join(order)}): "
                      "pip install 'ssnet-worker[onnx]' (CPU) or 'ssnet-worker[torch]' (GPU)")


def make_engine(
    name: str, prototxt: PathLike, caffemodel: PathLike, *, device: str = "cpu", precision: str = "float32",
    threads: Optional[int] = None, output: str = DEFAULT_OUTPUT, same_size: bool = True,
) -> Engine:
    """Load ``torch``, ``onnx``, ``caffe``, ``opencv`` or ``auto`` (see the module docstring).

    ``same_size``: refuse inputs whose output would not have their H x W (SSNet's contract); False for other nets.
    """
    device = parse_device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    name = resolve_engine(name, device)
    if name in ("caffe", "opencv") and not engine_available(name):
        library = "pycaffe ('import caffe')" if name == "caffe" else "OpenCV 4.x ('import cv2')"
        raise ConfigError(f"engine {name!r} is not available here: {library} cannot be imported")
    engine: Engine = ENGINES[name].load(prototxt, caffemodel, device=device, precision=precision, threads=threads,
                                        output=output)
    engine.same_size = same_size
    log.debug("loaded %s with %s (%s)", prototxt, caffemodel, engine.describe())
    return engine


__all__ = [
    "DEFAULT_OUTPUT", "ENGINES", "ENGINE_NAMES", "PRECISIONS", "CaffeEngine", "Engine", "InputShapeError", "NetSpec",
    "OnnxEngine", "OpenCVEngine", "TorchEngine", "engine_available", "infer_shapes", "load_net_spec", "make_engine",
    "parse_device", "resolve_engine",
]
