"""Does `fleetc compile` for host-tvm ship a model.so that meets its latency budget? Prints;
asserts nothing.

1. the fp32 model.so latency F of the model (built and timed exactly as compile times its
   result: `toolchain.measure.tvm_backend.time_tvm_local`, 1 thread, thread clock);
2. B = `--fraction` x F (default 0.7);
3. `fleetc compile MODEL -t host-tvm --calib CALIB --max-accuracy-drop 2 --latency-ms B
   --retry -o OUT` from an empty FLEETC_HOME (a temporary one), random calibration data
   (seeded normal inputs: the agreement metric);
4. the shipped OUT/model.so timed here on its own: loaded, relax VM, one TVM thread, the process
   pinned to one CPU, 5 warm-up runs, median of 15 blocks of back-to-back runs, wall clock.

Printed: F, B, the manifest's measured latency and this script's, each / B.

    taskset -c 1 .venv/bin/python benchmarks/host_tvm_budget.py [--resolution 160] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def own_timing(so: Path, shape: list[int]) -> float:
    """Median ms per run of `so` over 15 blocks (one TVM thread, this process pinned)."""
    import tvm
    from tvm import relax

    from toolchain.measure.tvm_backend import set_tvm_threads

    set_tvm_threads(1)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    for _ in range(5):
        vm["main"](x)
    blocks = []
    for _ in range(15):
        start = time.perf_counter()
        for _ in range(10):
            vm["main"](x)
        blocks.append((time.perf_counter() - start) / 10 * 1e3)
    return float(np.median(blocks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=160)
    ap.add_argument("--fraction", type=float, default=0.7)
    ap.add_argument("--out", default=None, help="compile output folder (default: temporary)")
    args = ap.parse_args()
    import onnx

    from toolchain.measure import zoo
    from toolchain.measure.tvm_backend import time_tvm_local
    from toolchain.target import load_target

    work = Path(tempfile.mkdtemp(prefix="host-tvm-budget-"))
    model = zoo.mobilenet_v2(args.resolution)
    onnx.save(model, str(work / "model.onnx"))
    shape = [1, 3, args.resolution, args.resolution]
    np.savez(work / "calib.npz", inputs=np.random.default_rng(0).standard_normal(
        [64, *shape[1:]]).astype(np.float32))
    fp32 = time_tvm_local(model, load_target("host-tvm").tvm(), threads=1).median_ms
    budget = round(args.fraction * fp32, 3)
    print(f"fp32 model.so {fp32:.3f} ms; budget B = {args.fraction} x = {budget:.3f} ms",
          flush=True)
    out = Path(args.out) if args.out else work / "out"
    env = dict(os.environ, FLEETC_HOME=str(work / "home"), PYTHONPATH=str(ROOT))
    cmd = [str(Path(sys.executable).parent / "fleetc"), "compile", str(work / "model.onnx"), "-t",
           "host-tvm", "--calib", str(work / "calib.npz"), "--max-accuracy-drop", "2",
           "--latency-ms", str(budget), "--retry", "-o", str(out)]
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    print(f"compile exit {run.returncode} in {time.perf_counter() - start:.0f} s: "
          f"{(run.stdout.strip().splitlines() or ['?'])[-1]}", flush=True)
    if run.returncode != 0:
        print(run.stderr[-2000:])
        return
    manifest = json.loads((out / "manifest.json").read_text())
    shipped = manifest["measured"]["latency_ms"]
    mine = own_timing(out / "model.so", [1, 3, *_resolution(manifest, args.resolution)])
    print(f"plan: {json.dumps(manifest['plan'])}")
    print(f"predicted {manifest['predicted']['latency_ms']:.3f} ms; manifest measured "
          f"{shipped:.3f} ms = {shipped / budget:.3f} x B; this script's timing "
          f"{mine:.3f} ms = {mine / budget:.3f} x B; budget_met {manifest['budget_met']}, "
          f"retries {manifest.get('latency_retries')}")


def _resolution(manifest: dict, default: int) -> list[int]:
    shape = (manifest["plan"].get("model") or {}).get("input_shape") or {}
    dims = next(iter(shape.values()), None)
    return list(dims[-2:]) if dims else [default, default]


if __name__ == "__main__":
    main()
