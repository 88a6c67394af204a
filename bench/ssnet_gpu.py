"""SSNet on a GPU: fidelity of torch float32/float16 (and onnx with the CUDA provider) against torch float32 on the
CPU of the same machine, images/s at several batch sizes, and GPU memory.

    python3 bench/ssnet_gpu.py --prototxt dllee_ssnet2018.prototxt [--weights W.caffemodel] [--device cuda:0]

Made for a lent GPU machine, where genuine Caffe does not run and the 62 MB random-weight caffemodel may not
travel: without ``--weights`` the script draws weights for the prototxt (He-normal convolutions, Scale near 1)
and writes them as a caffemodel with the importer's own message classes, so the engines load exactly what a user's
file would give them.  The CPU run of the torch engine is the reference (it matches genuine Caffe to ~3e-5, see
tests/container/test_fidelity.py).  Needs numpy, protobuf and torch (onnxruntime-gpu optional); not pyzmq.
Prints a table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for folder in ("common/src", "data/src", "worker/src", "tests/fidelity"):
    sys.path.insert(0, str(REPO / folder))
from layer_nets import sparse_adc_image  # noqa: E402

from ssnet_worker.caffe.model import infer_shapes, load_net_spec  # noqa: E402
from ssnet_worker.caffe.proto import net_parameter  # noqa: E402
from ssnet_worker.engines import engine_available, make_engine  # noqa: E402


def random_weights(prototxt: Path, out: Path, seed: int) -> None:
    """A caffemodel with weights drawn for every layer that has parameters."""
    spec = load_net_spec(prototxt)
    plan = infer_shapes(spec, spec.input_shape)
    types = {layer.name: layer.type for layer in spec.layers}
    rng = np.random.RandomState(seed)
    model = net_parameter()
    for name, shapes in plan.params.items():
        layer = model.layer.add(name=name, type=types[name])
        for index, shape in enumerate(shapes):
            if types[name] in ("Convolution", "Deconvolution") and index == 0:
                fan_in = math.prod(shape[1:]) if types[name] == "Convolution" else shape[0] * math.prod(shape[2:])
                values = rng.normal(0, math.sqrt(2.0 / fan_in), shape)
            elif types[name] == "Scale" and index == 0:
                values = 1 + rng.normal(0, 0.1, shape)
            elif types[name] == "BatchNorm":
                values = np.ones(shape) if index > 0 else np.zeros(shape)
            else:
                values = rng.normal(0, 0.05, shape)
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(values.astype(np.float32).ravel().tolist())
    out.write_bytes(model.SerializeToString())


def throughput(engine: Any, images: np.ndarray, batch: int, seconds: float) -> Dict[str, float]:
    import torch

    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    chunk = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    engine.forward(chunk)  # warm up (cuDNN autotuning for this shape)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.forward(chunk)  # includes host->device and device->host copies, as in the worker
        count += batch
    elapsed = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return {"images_per_s": count / elapsed, "peak_gpu_mib": memory}


def compare(out: np.ndarray, ref: np.ndarray, images: np.ndarray, threshold: float) -> Dict[str, float]:
    above = np.broadcast_to(images[:, :1] >= threshold, (out.shape[0], 1, *out.shape[2:]))[:, 0]
    same = out.argmax(axis=1) == ref.argmax(axis=1)
    return {"max_abs_diff": float(np.abs(out - ref).max()), "mean_abs_diff": float(np.abs(out - ref).mean()),
            "top_class_agreement_above_threshold": float(same[above].mean()) if above.any() else float("nan")}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prototxt", type=Path, required=True)
    parser.add_argument("--weights", type=Path, help="a caffemodel (default: drawn here, see above)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--size", type=int, default=512, help="image height and width (default: 512)")
    parser.add_argument("--images", type=int, default=4, help="images compared (default: 4)")
    parser.add_argument("--batches", default="1,4,16", help="batch sizes timed (default: 1,4,16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per batch size (default: 5)")
    parser.add_argument("--threshold", type=float, default=10.0, help="ADC threshold for the agreement")
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = np.random.RandomState(args.seed)
    images = np.stack([sparse_adc_image(rng, args.size, args.size)[None] for _ in range(args.images)])
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = Path(tmp) / "random.caffemodel"
            random_weights(args.prototxt, weights, args.seed)
        reference = make_engine("torch", args.prototxt, weights, device="cpu").forward(images)
        runs = [("torch", "float32"), ("torch", "float16")]
        if engine_available("onnx"):
            runs.append(("onnx", "float32"))
        results: Dict[str, Any] = {"device": args.device, "size": args.size}
        print(f"SSNet {args.size}x{args.size}, {args.images} images, reference: torch float32 on the CPU")
        print(f"{'engine':16} {'max|diff|':>10} {'mean|diff|':>11} {'top class':>10}  images/s at batch "
              f"{args.batches} (peak GPU MiB)")
        for name, precision in runs:
            key = f"{name} {precision}"
            try:
                engine = make_engine(name, args.prototxt, weights, device=args.device, precision=precision)
            except Exception as exc:  # report and go on: one engine's absence must not hide the others
                print(f"{key:16} not run: {exc}")
                results[key] = {"error": str(exc)}
                continue
            fidelity = compare(engine.forward(images), reference, images, args.threshold)
            speed = {int(b): throughput(engine, images, int(b), args.seconds) for b in args.batches.split(",")}
            results[key] = {**fidelity, "throughput": speed, "describe": engine.describe()}
            rates = ", ".join(f"{v['images_per_s']:.1f} ({v['peak_gpu_mib']:.0f})" for v in speed.values())
            print(f"{key:16} {fidelity['max_abs_diff']:10.2e} {fidelity['mean_abs_diff']:11.2e} "
                  f"{100 * fidelity['top_class_agreement_above_threshold']:9.4f}%  {rates}")
            del engine
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
