"""``ssnet-infer``: run one engine over the images of a ``.npy`` file, offline, with no broker.

    ssnet-infer --engine caffe --prototxt net.prototxt --weights net.caffemodel --input in.npy --output out.npy

The input is an N x C x H x W array (C as the net declares, 1 for SSNet); the images go through the net
``--batch-size`` at a time (torch and onnx run them as one forward pass with each image's batch-1 result; caffe and
opencv one by one) and the N x K x H x W output blob (``softmax``) is written to ``--output`` atomically (a
temporary file beside it, renamed when complete).  Exit status: 0 success; 2 a bad option, model file or input
(one line on stderr, no output file); 1 a failure while running.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, cast

import numpy as np

from ssnet_common.config import (
    ArgumentParser,
    EnvOptions,
    configure_logging,
    exit_status,
    log_level,
    non_negative_int,
    positive_int,
)
from ssnet_common.errors import ConfigError, DataError, SSNetError
from ssnet_common.files import check_output, put_in_place, temporary_beside
from ssnet_worker.engines import DEFAULT_OUTPUT, ENGINE_NAMES, PRECISIONS, InputShapeError, make_engine

log = logging.getLogger("ssnet_worker.infer")


class InputError(DataError):
    """The input file cannot be used (missing, not a .npy array, wrong shape)."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="ssnet-infer", package="ssnet-worker",
        description="Run a Caffe net (SSNet) on each image of an N x C x H x W .npy file and save the output blob.",
    )
    options = EnvOptions(parser, prefix="SSNET_INFER_")
    options.add("--engine", default="auto", choices=(*ENGINE_NAMES, "auto"),
                help="inference engine (auto: torch on a CUDA device, else onnx when installed, else caffe, "
                     "else opencv)")
    options.add("--prototxt", default=None, help="the net's .prototxt (required)")
    options.add("--weights", default=None, help="the net's .caffemodel (required)")
    options.add("--input", default=None, help="input .npy file: N x C x H x W float32 (required)")
    options.add("--output", default=None, help="output .npy file for the N x K x H x W output blob (required)")
    options.add_flag("--force", help="replace the output file if it exists (else refuse to start)")
    options.add("--output-blob", default=DEFAULT_OUTPUT, help="name of the blob to save")
    options.add("--device", default="cpu", help="cpu or cuda:N")
    options.add("--gpu", default=None, type=non_negative_int, help="CUDA device id: the same as --device cuda:N")
    options.add("--precision", default="float32", choices=PRECISIONS,
                help="arithmetic of the net (float16: torch engine on a CUDA device only)")
    options.add("--batch-size", default=1, type=positive_int,
                help="images per forward pass (torch, onnx; caffe and opencv run them one by one)")
    options.add("--threads", default=None, type=positive_int,
                help="CPU threads for the engine's compute library (unset: the library's own setting)")
    options.add("--log-level", default="INFO", type=log_level, help="logging level (DEBUG, INFO, WARNING, ERROR)")
    return parser


def load_input(path: str) -> np.ndarray:
    """The input array, memory-mapped: N x C x H x W with N >= 1 and real-valued pixels."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"input {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"input {path}: is a directory, not a .npy file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"input {path}: not a readable .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"input {path}: holds several arrays (.npz); give one N x C x H x W .npy array")
    if array.ndim != 4 or array.shape[0] < 1:
        raise InputError(f"input {path}: shape {'x'.join(map(str, array.shape)) or 'scalar'} is not "
                         "N x C x H x W with N >= 1")
    if array.dtype.kind not in "fiu":
        raise InputError(f"input {path}: dtype {array.dtype} is not a real number type (float32 expected)")
    return array


def run(args: argparse.Namespace) -> None:
    output = check_output(args.output, args.force)
    inputs = load_input(args.input)
    device = args.device if args.gpu is None else f"cuda:{args.gpu}"
    engine = make_engine(args.engine, args.prototxt, args.weights, device=device, precision=args.precision,
                         threads=args.threads, output=args.output_blob)
    try:  # every image has this shape: check it once, before any work
        engine.check_input(np.zeros((1, *inputs.shape[1:]), dtype=np.float32))
    except InputShapeError as exc:
        raise InputError(f"input {args.input} ({'x'.join(map(str, inputs.shape))}): {exc}") from None
    n = inputs.shape[0]
    log.info("engine %s; %d image(s) of %s from %s", engine.describe(), n,
             "x".join(map(str, inputs.shape[1:])), args.input)

    tmp_name = str(temporary_beside(output))
    try:
        result: Optional[np.memmap[Any, Any]] = None
        times: List[float] = []
        for i in range(0, n, args.batch_size):
            start = time.perf_counter()
            out = engine.forward(np.asarray(inputs[i:i + args.batch_size]))
            times.append(time.perf_counter() - start)
            if result is None:
                result = cast("np.memmap[Any, Any]", np.lib.format.open_memmap(
                    tmp_name, mode="w+", dtype=np.float32, shape=(n, *out.shape[1:])))
            result[i:i + len(out)] = out
            images = f"image {i + 1}" if len(out) == 1 else f"images {i + 1}-{i + len(out)}"
            log.info("%s/%d: %.3f s", images, n, times[-1])
        assert result is not None
        result.flush()
        del result
        put_in_place(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("wrote %s: %d image(s) in %.3f s (%.3f s per image, first batch %.3f s)", output, n, sum(times),
             sum(times) / n, times[0])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("prototxt", "weights", "input", "output"):
        if getattr(args, name) is None:
            parser.error(f"--{name} is required (or SSNET_INFER_{name.upper()})")
    configure_logging(args.log_level, "ssnet-infer")
    try:
        run(args)
    except (ConfigError, SSNetError, ValueError, RuntimeError, OSError) as exc:  # 2: bad options, models, input
        sys.stderr.write(f"ssnet-infer: error: {exc}\n")
        return exit_status(exc)
    except KeyboardInterrupt as exc:
        sys.stderr.write("ssnet-infer: interrupted\n")
        return exit_status(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
