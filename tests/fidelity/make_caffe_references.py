"""Genuine Caffe's outputs for the fidelity tests, made inside the worker image (the one place pycaffe runs).

    python3 tests/fidelity/make_caffe_references.py OUTDIR [--ssnet DIR] [--ssnet-images N]

For every net of ``layer_nets.NETS`` it writes ``OUTDIR/<name>.prototxt``, ``<name>.caffemodel`` (weights drawn by
Caffe's fillers, BatchNorm statistics set to random values) and ``<name>.npz`` (``inputs``: N x C x H x W,
``outputs``: what Caffe computes for each image alone, batch size 1).  With ``--ssnet DIR`` (holding
``dllee_ssnet2018.prototxt`` and ``ssnet_random_plane0.caffemodel``) it also writes ``ssnet.npz``: sparse 512x512
wire-plane-like images and Caffe's softmax for each.  The host compares the torch and onnx engines with these
(``tests/container/test_fidelity.py``): torch is not in the worker image.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_nets import IMAGES, NETS, SEED, _net, sparse_adc_image


def run_one_by_one(net, inputs: np.ndarray, output: str) -> np.ndarray:
    outs = []
    for image in inputs:
        net.blobs["data"].reshape(1, *image.shape)
        net.reshape()
        net.blobs["data"].data[...] = image
        net.forward()
        outs.append(np.array(net.blobs[output].data[0], dtype=np.float32, copy=True))
    return np.stack(outs)


def layer_references(caffe, out: Path) -> None:
    rng = np.random.RandomState(SEED)
    for name, (shape, layers) in sorted(NETS.items()):
        prototxt = out / f"{name}.prototxt"
        prototxt.write_text(_net(name, shape, layers))
        net = caffe.Net(str(prototxt), caffe.TEST)
        for layer, blobs in net.params.items():
            if net.layer_dict[layer].type == "BatchNorm":  # Caffe zero-fills the statistics: give real ones
                channels = blobs[0].data.shape[0]
                blobs[0].data[...] = rng.normal(0, 1, channels) * 2.0  # sums, divided by the factor below
                blobs[1].data[...] = rng.uniform(0.2, 3.0, channels) * 2.0
                blobs[2].data[...] = 2.0
        net.save(str(out / f"{name}.caffemodel"))
        inputs = rng.normal(0, 1.5, (IMAGES, *shape[1:])).astype(np.float32)
        outputs = run_one_by_one(net, inputs, "out")
        np.savez(out / f"{name}.npz", inputs=inputs, outputs=outputs)
        sys.stdout.write(f"{name}: {shape} -> {outputs.shape[1:]}\n")


def ssnet_references(caffe, models: Path, out: Path, count: int) -> None:
    rng = np.random.RandomState(2018)
    inputs = np.stack([sparse_adc_image(rng)[None] for _ in range(count)])
    net = caffe.Net(str(models / "dllee_ssnet2018.prototxt"), caffe.TEST,
                    weights=str(models / "ssnet_random_plane0.caffemodel"))
    outputs = run_one_by_one(net, inputs, "softmax")
    np.savez(out / "ssnet.npz", inputs=inputs, outputs=outputs)
    sys.stdout.write(f"ssnet: {inputs.shape} -> {outputs.shape}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--ssnet", type=Path, default=None)
    parser.add_argument("--ssnet-images", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe

    caffe.set_mode_cpu()
    caffe.set_random_seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    layer_references(caffe, args.out)
    if args.ssnet is not None:
        ssnet_references(caffe, args.ssnet, args.out, args.ssnet_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
