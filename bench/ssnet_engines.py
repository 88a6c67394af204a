"""SSNet 512x512 forward time and peak memory of each engine, against genuine Caffe in the same run.

    python3 bench/ssnet_engines.py [--engines caffe,opencv] [--threads 2] [--repeat 5]

Each engine runs in a fresh subprocess, so its peak memory (VmHWM) is its own; all of them take the same
seeded sparse ADC-like image, one image at a time (batch size 1).  Reported per engine: model load time, the
first forward (which allocates every blob), then the median and best of ``--repeat`` forwards in wall and CPU
seconds, peak RSS, the ratio of the median to genuine Caffe's, and the max/mean |difference| and top-class
agreement with genuine Caffe's softmax.  The code measured is the checkout's (common/src and worker/src go on
PYTHONPATH).  Both engines exist only in the worker image:

    docker run --rm -v "$PWD:/repo:ro" -v "$PWD/../shared:/shared:ro" -w /repo ssnet-worker:cpu \\
        python3 bench/ssnet_engines.py --shared /shared
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


def sparse_adc_image(seed: int, height: int, width: int) -> np.ndarray:
    """A 1x1xHxW image like a wire plane: mostly zeros, a few tracks and shower blobs of 10-500 ADC."""
    rng = np.random.RandomState(seed)
    image = np.zeros((height, width), np.float32)
    for _ in range(rng.randint(3, 7)):
        y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
        angle, length = rng.uniform(0, np.pi), rng.uniform(40, 300)
        steps = np.linspace(0, length, int(length) * 2)
        ys = np.clip((y0 + steps * np.sin(angle)).astype(int), 0, height - 1)
        xs = np.clip((x0 + steps * np.cos(angle)).astype(int), 0, width - 1)
        image[ys, xs] = rng.uniform(20, 120, ys.size)
        image[np.clip(ys + 1, 0, height - 1), xs] = rng.uniform(10, 60, ys.size)
    for _ in range(rng.randint(1, 4)):
        cy, cx, spread = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 25)
        n = rng.randint(100, 600)
        ys = np.clip(rng.normal(cy, spread, n).astype(int), 0, height - 1)
        xs = np.clip(rng.normal(cx, spread, n).astype(int), 0, width - 1)
        image[ys, xs] = rng.uniform(10, 500, n)
    return image[None, None]


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
        sys.stdout.write(json.dumps({"engine": args.child, "available": False}) + "\n")
        return 0
    image = sparse_adc_image(args.seed, args.size, args.size)
    start = time.perf_counter()
    engine = make_engine(args.child, args.prototxt, args.weights, threads=args.threads)
    load = time.perf_counter() - start
    walls: List[float] = []
    cpus: List[float] = []
    out = None
    for _ in range(args.repeat + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        out = engine.forward(image)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    assert out is not None
    np.save(args.out, out)
    sys.stdout.write(json.dumps({
        "engine": args.child, "available": True, "describe": engine.describe(), "threads": engine.threads,
        "load_s": load, "first_s": walls[0], "wall_s": walls[1:], "cpu_s": cpus[1:], "peak_rss_mib": vm_hwm_mib(),
    }) + "\n")
    return 0


def run_engine(name: str, args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    env = dict(os.environ)
    if args.threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "common/src"), str(REPO / "worker/src"),
                                                      env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", name, "--out", str(out), "--prototxt", str(args.prototxt),
               "--weights", str(args.weights), "--repeat", str(args.repeat), "--size", str(args.size),
               "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        return {"engine": name, "available": True, "error": result.stderr.strip().splitlines()[-1:]}
    report: Dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("SSNET_SHARED") or REPO.parent / "shared")
    parser.add_argument("--shared", type=Path, default=shared, help="the shared material (default: %(default)s)")
    parser.add_argument("--engines", default="caffe,opencv", help="comma-separated (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for every engine (default: all cores, %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="timed forwards after the first (default: 5)")
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
    print(f"SSNet {args.size}x{args.size}, batch size 1, seed {args.seed}; {os.cpu_count()} CPUs, "
          f"--threads {args.threads} (OPENBLAS_NUM_THREADS={args.threads}, cv2.setNumThreads({args.threads})); "
          f"load average before: {os.getloadavg()[0]:.2f}")
    results: Dict[str, Dict[str, Any]] = {}
    outputs: Dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.engines.split(","):
            out = Path(tmp) / f"{name}.npy"
            results[name] = run_engine(name, args, out)
            if out.is_file():
                outputs[name] = np.load(out)
    base = results.get("caffe", {})
    base_median = statistics.median(base["wall_s"]) if "wall_s" in base else None
    print(f"{'engine':8} {'load s':>7} {'first s':>8} {'median s':>9} {'best s':>7} {'cpu s':>6} {'peak MiB':>9} "
          f"{'vs caffe':>9} {'max|diff|':>10} {'mean|diff|':>11} {'top class':>10}")
    for name, report in results.items():
        if not report.get("available"):
            print(f"{name:8} not available here")
            continue
        if "error" in report:
            print(f"{name:8} failed: {report['error']}")
            continue
        median = statistics.median(report["wall_s"])
        report["median_s"] = median
        ratio = f"{median / base_median:.2f}x" if base_median else "-"
        diff_max = diff_mean = agree = "-"
        if "caffe" in outputs and name in outputs:
            diff = np.abs(outputs[name] - outputs["caffe"])
            same = float((outputs[name].argmax(1) == outputs["caffe"].argmax(1)).mean())
            diff_max, diff_mean, agree = f"{diff.max():.2e}", f"{diff.mean():.2e}", f"{100 * same:.4f}%"
            report.update(ratio_to_caffe=median / base_median if base_median else None, max_abs_diff=float(diff.max()),
                          mean_abs_diff=float(diff.mean()), top_class_agreement=same)
        print(f"{name:8} {report['load_s']:7.2f} {report['first_s']:8.2f} {median:9.3f} {min(report['wall_s']):7.3f} "
              f"{statistics.median(report['cpu_s']):6.2f} {report['peak_rss_mib']:9.0f} {ratio:>9} {diff_max:>10} "
              f"{diff_mean:>11} {agree:>10}")
        print(f"{'':8} {report['describe']}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (timings on a busy machine are not comparable)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
