"""``SSNetWorker``: the SSNet UResNet (one Caffe model per wire plane) on LArCV1 images.

It serves ``ssnet`` (any plane: the plane is read from each image's meta) or ``ssnet_plane<p>`` (one plane, so an
operator can put each plane's net on its own GPU and load one net per process).  Per received image it applies
the production preprocessing (pixels below ``threshold`` ADC set to 0, above ``clip`` clipped; switchable off),
runs the plane's net, and replies, per received image product, two triplets: ``[ssnet_shower, meta, scores]`` and
``[ssnet_track, meta, scores]`` (softmax classes 1 and 2; background dropped), with scores zeroed where the input
is below ``threshold``, float16 by default, metas and run/subrun/event echoed; every reply ends with the worker's
provenance record (prototxt and weights by name and sha256, engine, device, precision, software version: see
:mod:`ssnet_data.provenance`).

Models: a prototxt and one caffemodel per plane, named by a ``models.json`` in the model directory::

    {"prototxt": "dllee_ssnet2018.prototxt",
     "weights": {"0": "plane0.caffemodel", "1": "plane1.caffemodel", "2": "plane2.caffemodel"}}

or by ``--ssnet-prototxt`` / ``--ssnet-weights plane0.caffemodel plane1.caffemodel plane2.caffemodel`` (one file:
every plane).

Batching.  SSNet's BatchNorm layers use the statistics of the current batch, so genuine Caffe's result for an image
depends on its batch: batch 1 is the reference.  The per-image engines (``torch``, ``onnx``) compute those statistics
per image, so the worker runs every image of one plane and shape in a request (K events with ``ssnet-client
--batch-size K``, and the products of one event) as one forward pass of at most ``max_batch`` images, each with its
batch-1 result; ``caffe`` and ``opencv`` run them one by one.  With ``--slots M`` the worker holds M requests at
once (M broker sessions, :class:`ssnet_worker.base.Worker`), and the images of all of them share those forward passes;
each reply still holds only its own request's scores, equal to what ``--slots 1`` gives.  Replies are encoded in the
codec of the request (:mod:`ssnet_data.ndarray`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from prometheus_client import Gauge, Histogram

from ssnet_common.config import version_text
from ssnet_common.errors import ConfigError
from ssnet_common.metrics import LATENCY_BUCKETS
from ssnet_data.larcv1msg import ImageProduct, decode_images, encode_images, message_codec
from ssnet_data.preprocess import threshold_clip
from ssnet_data.provenance import file_digest
from ssnet_data.services import PLANE, parse_sub_service
from ssnet_worker.base import Worker, WorkerConfig
from ssnet_worker.engines import gpu_index, make_engine, parse_device
from ssnet_worker.metrics import register_gpu_metrics
from ssnet_worker.tiling import STITCH_MODES, Stitcher, Tile, tile_grid

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ssnet_common.protocol import Frame
    from ssnet_worker.engines import Engine

log = logging.getLogger(__name__)

MODEL_CONFIG = "models.json"
SHOWER, TRACK = 1, 2  # softmax classes (0 is background)


@dataclass(frozen=True)
class ModelSet:
    """The network description and the weights of each plane."""

    prototxt: Path
    weights: Dict[int, Path]

    @classmethod
    def from_options(cls, model_dir: Optional[str], prototxt: Optional[str], weights: Optional[Sequence[str]]
                     ) -> ModelSet:
        """From ``--ssnet-model-dir`` (with its ``models.json`` when present), ``--ssnet-prototxt`` and
        ``--ssnet-weights`` (one file per plane, or one for every plane)."""
        base = Path(model_dir) if model_dir else Path()
        if model_dir and not base.is_dir():
            raise ConfigError(f"model directory {model_dir!r} does not exist")
        spec: Dict[str, Any] = {}
        config_file = base / MODEL_CONFIG
        if model_dir and config_file.is_file() and not (prototxt and weights):
            try:
                spec = json.loads(config_file.read_text())
                if not isinstance(spec, dict) or not isinstance(spec.get("weights"), dict):
                    raise ValueError('expected {"prototxt": "...", "weights": {"0": "...", ...}}')
            except ValueError as exc:
                raise ConfigError(f"{config_file}: {exc}") from None
        proto = prototxt or spec.get("prototxt")
        if not proto:
            found = sorted(base.glob("*.prototxt")) if model_dir else []
            if len(found) != 1:
                raise ConfigError(f"name the network with --ssnet-prototxt (found {len(found)} .prototxt files in "
                                  f"{model_dir or 'no model directory'})")
            proto = found[0].name
        if weights:
            names = [w.strip() for w in weights if w.strip()]
            table = dict(enumerate(names * 3 if len(names) == 1 else names))  # one file serves every plane
        elif spec:
            try:
                table = {int(plane): str(name) for plane, name in spec["weights"].items()}
            except ValueError:
                raise ConfigError(f"{config_file}: weights keys must be plane numbers") from None
        else:
            raise ConfigError("name the weights with --ssnet-weights plane0.caffemodel plane1... plane2... "
                              f"or a {MODEL_CONFIG} in --ssnet-model-dir")
        resolved = {plane: _existing(base / name, f"weights of plane {plane}") for plane, name in table.items()}
        return cls(_existing(base / proto, "network description"), resolved)


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    return path


def planes_for_service(service: str, planes: Optional[Sequence[int]], available: Sequence[int]) -> Tuple[int, ...]:
    """The planes a worker for ``service`` loads: ``<name>_plane<p>`` means p; otherwise ``planes`` or all."""
    try:
        per_plane = parse_sub_service(service, PLANE)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if per_plane is not None:
        wanted: Tuple[int, ...] = (per_plane[1],)
        if planes and tuple(planes) != wanted:
            raise ConfigError(f"service {service!r} serves plane {wanted[0]}, but --ssnet-planes says {list(planes)}")
    else:
        wanted = tuple(planes) if planes else tuple(sorted(available))
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ConfigError(f"no weights for plane(s) {missing} (weights are given for {sorted(available)})")
    return wanted


@dataclass(frozen=True)
class Preprocessing:
    """The original production settings: below ``threshold`` ADC → 0, above ``clip`` → ``clip``."""

    enabled: bool = True
    threshold: float = 10.0
    clip: float = 500.0

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A float32 copy of ``image`` ready for the net."""
        out = np.array(image, dtype=np.float32)
        return threshold_clip(out, self.threshold, self.clip, out=out) if self.enabled else out


@dataclass(frozen=True)
class Tiling:
    """How images larger than a tile run: ``tile`` ``(rows, cols)``, ``"net"`` (the prototxt's input size) or
    None (whole images); ``overlap`` in pixels; ``stitch`` (see :mod:`ssnet_worker.tiling`)."""

    tile: Union[Tuple[int, int], str, None] = "net"
    overlap: int = 0
    stitch: str = "center"

    def __post_init__(self) -> None:
        if self.stitch not in STITCH_MODES:
            raise ConfigError(f"stitch mode must be one of {', '.join(STITCH_MODES)}, got {self.stitch!r}")
        if isinstance(self.tile, str) and self.tile != "net":
            raise ConfigError(f"tile must be (rows, cols), 'net' or None, got {self.tile!r}")
        if self.overlap < 0:
            raise ConfigError(f"tile overlap must be 0 or more, got {self.overlap}")
        if isinstance(self.tile, tuple) and self.overlap >= min(self.tile):
            raise ConfigError(f"tile overlap {self.overlap} must be smaller than the tile "
                              f"{self.tile[0]}x{self.tile[1]}")

    def grid(self, shape: Tuple[int, int], net_input: Tuple[int, int]) -> List[Tile]:
        """The tiles of an image of ``shape`` (one tile, the whole image, when it fits or tiling is off)."""
        if self.tile is None:
            return [Tile(0, 0, *shape)]
        size = net_input if isinstance(self.tile, str) else self.tile
        return tile_grid(shape, size, (self.overlap, self.overlap))


@dataclass(eq=False)
class _Piece:
    """A tile of one received image, on its way through the net."""

    where: str
    request: int  # which of the requests in hand
    plane: int
    product: int
    index: int
    tile: Tile
    pixels: np.ndarray
    stitcher: Optional[Stitcher]


@dataclass(eq=False)
class _Request:
    """One request in hand: its products, the codec it came in, the score arrays its pieces fill, and the
    preprocessed images (product, index, pixels) whose below-threshold pixels get zero scores."""

    products: List[ImageProduct]
    codec: Optional[str]
    shower: List[np.ndarray]
    track: List[np.ndarray]
    inputs: List[Tuple[int, int, np.ndarray]]


class SSNetWorker(Worker):
    """SSNet inference on LArCV1 image messages; see the module docstring."""

    def __init__(
        self,
        config: WorkerConfig,
        models: ModelSet,
        *,
        engine: str = "auto",
        device: str = "cpu",
        precision: str = "float32",
        max_batch: int = 8,
        planes: Optional[Sequence[int]] = None,
        threads: Optional[int] = None,
        preprocessing: Preprocessing = Preprocessing(),
        output_names: Tuple[str, str] = ("ssnet_shower", "ssnet_track"),
        output_dtype: str = "float16",
        tiling: Tiling = Tiling(),
        registry: Optional[CollectorRegistry] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, registry=registry, **kwargs)
        self.models = models
        self.engine_name = engine
        self.device = parse_device(device)
        self.precision = precision
        if max_batch < 1:
            raise ConfigError(f"max_batch must be 1 or more, got {max_batch}")
        self.max_batch = max_batch
        self.threads = threads
        self.planes = planes_for_service(config.service, planes, list(models.weights))
        self.preprocessing = preprocessing
        self.output_names = output_names
        self.output_dtype = np.dtype(output_dtype)
        self.tiling = tiling
        self.engines: Dict[int, Engine] = {}
        self.provenance: Dict[str, Any] = {}
        metrics_registry = self.metrics.registry
        index = gpu_index(self.device)
        if index is not None:  # the GPU's utilisation and memory beside the worker's own metrics
            register_gpu_metrics(metrics_registry, index)
        labels = ["plane", "engine", "device"]
        self.load_seconds = Gauge("ssnet_worker_model_load_seconds",
                                  "Time taken to load each plane's network and run a first forward pass",
                                  labels, registry=metrics_registry)
        self.inference = Histogram("ssnet_worker_inference_seconds",
                                   "Forward-pass time per image or tile (a batch's time shared by its images), "
                                   "by plane",
                                   labels, buckets=LATENCY_BUCKETS, registry=metrics_registry)
        self.batch_images = Histogram("ssnet_worker_forward_batch_images", "Images per forward pass, by plane",
                                      labels, buckets=(1, 2, 4, 8, 16, 32, 64), registry=metrics_registry)
        self.engine_info = Gauge("ssnet_worker_engine_info", "The engine of each plane (value 1)",
                                 [*labels, "precision"], registry=metrics_registry)

    def setup(self) -> None:
        """Load every plane's network once, before registering with the broker."""
        for plane in self.planes:
            start = time.monotonic()
            engine = make_engine(self.engine_name, self.models.prototxt, self.models.weights[plane],
                                 device=self.device, precision=self.precision, threads=self.threads)
            # warm up: Caffe allocates on its first pass, cuDNN autotunes
            engine.forward(np.zeros((1, *engine.input_shape[1:]), np.float32))
            self.engines[plane] = engine
            seconds = time.monotonic() - start
            self.load_seconds.labels(**self._labels(plane)).set(seconds)
            self.engine_info.labels(**self._labels(plane), precision=engine.precision).set(1)
            log.info("plane %d: %s with %s loaded in %.2f s (%s)", plane, self.models.prototxt.name,
                     self.models.weights[plane].name, seconds, self.engines[plane].describe())
        whole = [plane for plane, engine in self.engines.items() if not engine.per_image]
        if self.config.slots > 1 and whole:
            engine = self.engines[whole[0]]
            raise ConfigError(f"--slots {self.config.slots} needs a per-image engine (torch or onnx): "
                              f"{engine.name} normalises over the whole batch, so it takes one request at a time "
                              "(--slots 1)")
        self._check_tile()
        self.provenance = self._describe()

    def _describe(self) -> Dict[str, Any]:
        """The provenance record every reply carries (the same for every request: computed once)."""
        engine = next(iter(self.engines.values()))
        tiling = self.tiling
        return {
            "software": version_text("ssnet-worker"),
            "engine": engine.name,
            "device": engine.device.split(":")[0],  # which GPU does not change the numbers; CPU or GPU may
            "precision": engine.precision,
            "output_dtype": self.output_dtype.name,
            "prototxt": {"file": self.models.prototxt.name, "sha256": file_digest(self.models.prototxt)},
            "weights": {str(plane): {"file": self.models.weights[plane].name,
                                     "sha256": file_digest(self.models.weights[plane])} for plane in self.planes},
            "preprocessing": ({"threshold": self.preprocessing.threshold, "clip": self.preprocessing.clip}
                              if self.preprocessing.enabled else None),
            "tiling": None if tiling.tile is None else {"tile": list(tiling.tile) if isinstance(tiling.tile, tuple)
                                                        else tiling.tile, "overlap": tiling.overlap,
                                                        "stitch": tiling.stitch},
        }

    def _check_tile(self) -> None:
        tiling = self.tiling
        if tiling.tile is None:
            log.info("tiling off: every image goes to the net whole")
            return
        if isinstance(tiling.tile, tuple):
            size = tiling.tile
        else:
            shape = next(iter(self.engines.values())).input_shape
            size = (shape[2], shape[3])
        if tiling.overlap >= min(size):
            raise ConfigError(f"tile overlap {tiling.overlap} must be smaller than the tile {size[0]}x{size[1]}")
        log.info("images larger than %dx%d run as tiles of that size (overlap %d, stitch %s)", size[0], size[1],
                 tiling.overlap, tiling.stitch)

    def _labels(self, plane: int) -> Dict[str, str]:
        engine = self.engines.get(plane)
        return {"plane": str(plane), "engine": engine.name if engine else self.engine_name,
                "device": engine.device if engine else self.device}

    def handle(self, payload: list[Frame]) -> Sequence[Frame]:
        outcome = self.handle_many([payload])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def handle_many(self, payloads: List[List[Frame]]) -> List[Union[Sequence[Frame], BaseException]]:
        """The requests in hand on every slot at once: their images (or tiles), grouped by plane and shape across
        requests, run as forward passes of at most ``max_batch`` (per-image engines; ``caffe`` and ``opencv`` one
        by one).  A request that fails (bad images, a forward pass that raised) fails alone."""
        outcomes: List[Union[Sequence[Frame], BaseException, None]] = [None] * len(payloads)
        requests: Dict[int, _Request] = {}
        groups: Dict[Tuple[int, Tuple[int, ...]], List[_Piece]] = defaultdict(list)
        for r, payload in enumerate(payloads):
            try:
                request, pieces = self._prepare(r, payload)
            except Exception as exc:
                outcomes[r] = exc
                continue
            requests[r] = request
            for piece in pieces:
                groups[(piece.plane, piece.pixels.shape)].append(piece)
        for (plane, _), pieces in groups.items():
            engine = self.engines[plane]
            size = self.max_batch if engine.per_image else 1
            for start in range(0, len(pieces), size):
                chunk = [piece for piece in pieces[start:start + size] if outcomes[piece.request] is None]
                if not chunk:
                    continue
                try:
                    self._forward(plane, engine, chunk, requests)
                except Exception as exc:
                    for piece in chunk:
                        outcomes[piece.request] = exc
        for r, request in requests.items():
            if outcomes[r] is None:
                try:
                    outcomes[r] = self._reply(request)
                except Exception as exc:
                    outcomes[r] = exc
        return [outcome if outcome is not None else RuntimeError("request left unanswered")
                for outcome in outcomes]

    def _prepare(self, r: int, payload: List[Frame]) -> Tuple[_Request, List[_Piece]]:
        """Request ``r`` decoded, preprocessed and cut into the pieces (whole images or tiles) the net sees."""
        products = decode_images(payload)
        codec = message_codec(payload)
        shower = [np.empty(product.array.shape, dtype=self.output_dtype) for product in products]
        track = [np.empty_like(s) for s in shower]
        request = _Request(products, codec, shower, track, [])
        pieces: List[_Piece] = []
        for p, product in enumerate(products):
            for index, (meta, ids) in enumerate(product.items):
                where = f"image {index} of product {product.name!r} (plane {meta.plane}, event {ids})"
                if meta.plane not in self.engines:
                    raise ValueError(f"{where}: this worker serves plane(s) {list(self.planes)}")
                image = self.preprocessing.apply(product.array[index])
                request.inputs.append((p, index, image))
                net_input = self.engines[meta.plane].input_shape[2:]
                try:
                    tiles = self.tiling.grid(image.shape, (net_input[0], net_input[1]))
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                stitcher = None if len(tiles) == 1 else Stitcher([shower[p][index], track[p][index]],
                                                                 self.tiling.stitch)
                for tile in tiles:
                    pieces.append(_Piece(where, r, meta.plane, p, index, tile, image[tile.region], stitcher))
        return request, pieces

    def _reply(self, request: _Request) -> List[Frame]:
        """The reply of a request whose every piece has been through the net, in the codec it came in."""
        shower, track = request.shower, request.track
        for p, index, image in request.inputs:
            below = image < self.preprocessing.threshold
            shower[p][index][below] = 0
            track[p][index][below] = 0
        replies = []
        for p, product in enumerate(request.products):
            replies += [ImageProduct(self.output_names[0], product.items, shower[p]),
                        ImageProduct(self.output_names[1], product.items, track[p])]
        return encode_images(replies, request.codec, provenance=self.provenance)

    def _forward(self, plane: int, engine: Engine, chunk: List[_Piece], requests: Dict[int, _Request]) -> None:
        """One forward pass of ``chunk``'s pieces (of one shape); their scores go into their requests' outputs."""
        first = chunk[0]
        tiled = f" (tile at row {first.tile.row}, column {first.tile.col})" if first.stitcher else ""
        batch = np.stack([piece.pixels for piece in chunk])[:, np.newaxis]
        began = time.monotonic()
        try:
            scores = engine.forward(batch)
        except ValueError as exc:
            raise ValueError(f"{first.where}{tiled}: {exc}") from None
        seconds = time.monotonic() - began
        labels = self._labels(plane)
        self.batch_images.labels(**labels).observe(len(chunk))
        for _ in chunk:
            self.inference.labels(**labels).observe(seconds / len(chunk))
        if scores.shape[1] <= TRACK:
            raise ValueError(f"{first.where}: the net gives {scores.shape[1]} classes, SSNet has 3")
        for piece, score in zip(chunk, scores):
            if piece.stitcher is None:
                request = requests[piece.request]
                request.shower[piece.product][piece.index] = score[SHOWER]
                request.track[piece.product][piece.index] = score[TRACK]
            else:
                piece.stitcher.paint(piece.tile, [score[SHOWER], score[TRACK]])
