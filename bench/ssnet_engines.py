"""SSNet 512x512: seconds per plane, peak memory and fidelity of every engine, against genuine Caffe in the same run.

    python3 bench/ssnet_engines.py [--engines caffe,opencv,onnx,torch] [--threads 2] [--rounds 2] [--repeat 3]

Each engine runs in a fresh process of its own (so its peak memory, VmHWM, is its own): genuine Caffe in the
worker image (``docker run ssnet-worker:cpu``, the one place it runs), the others on the host where they are
installed; ``NAME@image`` runs an engine in the worker image instead (``opencv@image`` is OpenCV 4.5,
``onnx@image`` ONNX Runtime 1.19.2 on Python 3.9).  The engines take turns, ``--rounds`` times, so that drift
of this shared machine hits all alike; the figures are the medians over rounds.  Every process measures the
same seeded sparse wire-plane-like images: the first forward (allocation, autotuning), ``--repeat`` forwards at
batch 1, and one forward of 4 images (torch and onnx: one pass; caffe and opencv: one by one).  Reported: seconds
per plane at batch 1 and 4, peak RSS, max/mean |diff| and top-class agreement with genuine Caffe's softmax, and
the ratio of each engine's batch-1 time to genuine Caffe's.  The code measured is the checkout's (common/src, data/src
and worker/src on PYTHONPATH, mounted into the image).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE = "ssnet-worker:cpu"
IN_IMAGE = {"caffe"}  # engines that run only in the worker image
sys.path.insert(0, str(REPO / "tests" / "fidelity"))
from layer_nets import sparse_adc_image  # noqa: E402  (one home for the test image)


def images(seed: int, count: int, size: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return np.stack([sparse_adc_image(rng, size, size)[None] for _ in range(count)])


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> int:
    """Measure one engine in this (fresh) process; print one JSON line."""
    from ssnet_worker.engines import engine_available, make_engine

    if not engine_available(args.child):
        sys.stdout.write(json.dumps({"available": False}) + "\n")
        return 0
    batch = images(args.seed, 4, args.size)
    start = time.perf_counter()
    engine = make_engine(args.child, args.prototxt, args.weights, threads=args.threads)
    load = time.perf_counter() - start
    walls: List[float] = []
    out = None
    for _ in range(args.repeat + 1):
        began = time.perf_counter()
        out = engine.forward(batch[:1])
        walls.append(time.perf_counter() - began)
    began = time.perf_counter()
    engine.forward(batch)
    batch4 = (time.perf_counter() - began) / len(batch)
    assert out is not None
    np.save(args.out, out)
    sys.stdout.write(json.dumps({
        "available": True, "describe": engine.describe(), "load_s": load, "first_s": walls[0],
        "batch1_s": statistics.median(walls[1:]), "batch4_s": batch4, "peak_rss_mib": vm_hwm_mib(),
    }) + "\n")
    return 0


def run_engine(spec: str, args: argparse.Namespace, tmp: Path) -> Dict[str, Any]:
    name, _, where = spec.partition("@")
    in_image = where == "image" or name in IN_IMAGE
    out = tmp / f"{spec.replace('@', '_')}.npy"
    options = ["--child", name, "--repeat", str(args.repeat), "--size", str(args.size), "--seed", str(args.seed),
               "--threads", str(args.threads)]
    env = {"OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("common/src", "data/src", "worker/src"))}
    if in_image:
        tmp.chmod(0o777)
        command = ["docker", "run", "--rm", "--network", "none", "-v", f"{REPO}:/repo:ro",
                   "-v", f"{args.shared}:/shared:ro", "-v", f"{tmp}:/out", "-w", "/repo",
                   "-e", "PYTHONPATH=/repo/common/src:/repo/data/src:/repo/worker/src",
                   "-e", f"OPENBLAS_NUM_THREADS={args.threads}", "-e", f"OMP_NUM_THREADS={args.threads}", IMAGE,
                   "python3", "bench/ssnet_engines.py", *options, "--out", f"/out/{out.name}",
                   "--prototxt", "/shared/models/ssnet/dllee_ssnet2018.prototxt",
                   "--weights", "/shared/models/ssnet/ssnet_random_plane0.caffemodel"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    else:
        command = [sys.executable, __file__, *options, "--out", str(out), "--prototxt", str(args.prototxt),
                   "--weights", str(args.weights)]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if result.returncode != 0:
        return {"available": True, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    report: Dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    if out.is_file():
        report["output"] = np.load(out)
    return report


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    good = [r for r in runs if "batch1_s" in r]
    if not good:
        return runs[-1]
    keys = ("load_s", "first_s", "batch1_s", "batch4_s", "peak_rss_mib")
    summary: Dict[str, Any] = {key: statistics.median(r[key] for r in good) for key in keys}
    summary.update(available=True, describe=good[-1]["describe"], output=good[-1].get("output"),
                   batch1_rounds=[r["batch1_s"] for r in good])
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("SSNET_SHARED") or REPO.parent / "shared")
    parser.add_argument("--shared", type=Path, default=shared.resolve(), help="the shared material (%(default)s)")
    parser.add_argument("--engines", default="caffe,opencv,onnx,torch",
                        help="comma-separated; NAME@image runs NAME in the worker image (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for every engine (default: all cores, %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="turns each engine takes (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed batch-1 forwards per turn (default: 3)")
    parser.add_argument("--size", type=int, default=512, help="image height and width (default: 512)")
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--prototxt", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    args.prototxt = args.shared / "models/ssnet/dllee_ssnet2018.prototxt"
    args.weights = args.shared / "models/ssnet/ssnet_random_plane0.caffemodel"
    if not args.weights.is_file():
        parser.error(f"SSNet model not found under {args.shared} (use --shared)")
    engines = args.engines.split(",")
    print(f"SSNet {args.size}x{args.size}, seed {args.seed}; {os.cpu_count()} CPUs, --threads {args.threads}; "
          f"{args.rounds} rounds of {', '.join(engines)}; load average before: {os.getloadavg()[0]:.2f}")
    runs: Dict[str, List[Dict[str, Any]]] = {spec: [] for spec in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for spec in engines:
                runs[spec].append(run_engine(spec, args, Path(tmp)))
                last = runs[spec][-1]
                detail = f"{last['batch1_s']:.3f} s per plane" if "batch1_s" in last else last.get("error", "n/a")
                print(f"  round {round_ + 1}: {spec}: {detail}", flush=True)
    results = {spec: summarise(r) for spec, r in runs.items()}
    base = results.get("caffe", {})
    print(f"{'engine':12} {'load s':>7} {'first s':>8} {'batch 1 s':>10} {'batch 4 s':>10} {'peak MiB':>9} "
          f"{'vs caffe':>9} {'max|diff|':>10} {'mean|diff|':>11} {'top class':>10}")
    for spec, report in results.items():
        if not report.get("available"):
            print(f"{spec:12} not available here")
            continue
        if "error" in report:
            print(f"{spec:12} failed: {report['error']}")
            continue
        ratio = diff_max = diff_mean = agree = "-"
        if "batch1_s" in base:
            report["ratio_to_caffe"] = report["batch1_s"] / base["batch1_s"]
            ratio = f"{report['ratio_to_caffe']:.2f}x"
        if base.get("output") is not None and report.get("output") is not None:
            diff = np.abs(report["output"] - base["output"])
            same = float((report["output"].argmax(1) == base["output"].argmax(1)).mean())
            report.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), top_class_agreement=same)
            diff_max, diff_mean, agree = f"{diff.max():.2e}", f"{diff.mean():.2e}", f"{100 * same:.4f}%"
        print(f"{spec:12} {report['load_s']:7.2f} {report['first_s']:8.2f} {report['batch1_s']:10.3f} "
              f"{report['batch4_s']:10.3f} {report['peak_rss_mib']:9.0f} {ratio:>9} {diff_max:>10} {diff_mean:>11} "
              f"{agree:>10}")
        print(f"{'':12} {report['describe']}; batch-1 s per round: "
              f"{', '.join(f'{s:.3f}' for s in report['batch1_rounds'])}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (timings on a busy machine are not comparable)")
    if args.json:
        clean = {spec: {k: v for k, v in r.items() if k != "output"} for spec, r in results.items()}
        args.json.write_text(json.dumps(clean, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
