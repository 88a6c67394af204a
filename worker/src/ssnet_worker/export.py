"""``ssnet-export``: write a Caffe network (prototxt + caffemodel) as an ONNX model.

    ssnet-export --prototxt dllee_ssnet2018.prototxt --weights plane0.caffemodel -o ssnet_plane0.onnx

The graph is the one the ``onnx`` engine runs (see :mod:`ssnet_worker.caffe`): input ``N x C x H x W`` with N, H
and W dynamic, output the chosen blob (``softmax``), BatchNorm with ``use_global_stats: false`` as
InstanceNormalization (each image's own statistics: Caffe's batch-1 result for every image of a batch).  Any
runtime that reads ONNX (ONNX Runtime, Triton, TensorRT, OpenVINO) can serve it.  Needs ``onnx`` only (no torch,
no ONNX Runtime).  Exit status: 0 success; 2 a bad option or model file (one line on stderr, no output file);
1 a failure while writing.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from typing import Optional, Sequence

from ssnet_common.config import ArgumentParser, EnvOptions, configure_logging, exit_status, log_level
from ssnet_common.errors import ConfigError
from ssnet_common.files import check_output, write_atomically
from ssnet_worker.engines import DEFAULT_OUTPUT

log = logging.getLogger("ssnet_worker.export")
PROG = "ssnet-export"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, package="ssnet-worker",
                            description="Write a Caffe net (prototxt + caffemodel) as ONNX.")
    options = EnvOptions(parser, prefix="SSNET_EXPORT_")
    options.add("--prototxt", default=None, help="the net's .prototxt (required)")
    options.add("--weights", default=None, help="the net's .caffemodel (required)")
    options.add("--output", "-o", default=None, help="the .onnx file to write (required)")
    options.add_flag("--force", help="replace the output file if it exists (else refuse to start)")
    options.add("--output-blob", default=DEFAULT_OUTPUT, help="the blob the ONNX model outputs")
    options.add("--log-level", default="INFO", type=log_level, help="logging level (DEBUG, INFO, WARNING, ERROR)")
    return parser


def export(prototxt: str, weights: str, output: str, output_blob: str = DEFAULT_OUTPUT, force: bool = True
           ) -> bytes:
    """The serialized ONNX model of the net, also written atomically to ``output``."""
    try:
        from ssnet_worker.caffe.graph import lower
        from ssnet_worker.caffe.model import load_model
        from ssnet_worker.caffe.onnxnet import build_onnx
    except ImportError as exc:
        raise ConfigError(f"{exc.name} cannot be imported: pip install 'ssnet-worker[onnx]'") from None
    target = check_output(output, force)
    model = load_model(prototxt, weights, output_blob)
    data: bytes = build_onnx(lower(model), model.spec.name or "caffe_net", output_name=output_blob).SerializeToString()
    write_atomically(target, data)
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("prototxt", "weights", "output"):
        if getattr(args, name) is None:
            parser.error(f"--{name} is required (or SSNET_EXPORT_{name.upper()})")
    configure_logging(args.log_level, PROG)
    try:
        data = export(args.prototxt, args.weights, args.output, args.output_blob, args.force)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exit_status(exc)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: cannot write {args.output}: {exc.strerror or exc}\n")
        return exit_status(exc)
    log.info("wrote %s (%d bytes, sha256 %s)", args.output, len(data), hashlib.sha256(data).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
