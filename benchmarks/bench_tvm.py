"""onnxruntime vs TVM as fleetc ships it, per model, side by side in one run. Prints; asserts
nothing.

Columns, per model and thread count (1 thread, then all cores of this process's affinity):
- `ort`: onnxruntime fp32, CPU provider, all graph optimizations, intra-op threads = threads;
- `tvm default`: the `model.so` fleetc builds (`passes.emit_tvm.build_module`: default
  schedules of `passes/tvm_schedules`), relax VM, `TVM_NUM_THREADS` = threads;
- `tvm tuned`: the same build with the tuning database applied (`records=True`), when that
  build reports tuned functions ("-" otherwise); its ratio to onnxruntime in brackets.

Pinning: each (model, threads) runs in a fresh worker process started with `TVM_NUM_THREADS`
set and, for 1 thread, under `taskset -c CPU` (the last CPU of the affinity mask); onnxruntime
gets the same thread count, TVM's pool is sized as fleetc's timing sizes it (`set_tvm_threads`).
With 1 thread both runtimes are timed in alternating rounds in the worker (warm-up first; each
round is one block of back-to-back runs of each), so slow phases of the machine hit both; with
more threads one runtime after the other (each warmed up again), because a thread pool that
just ran keeps spinning and takes a core from the other runtime. Figures are medians over
rounds of wall time per run, the ratio is the median of per-round ratios (the i-th blocks),
spread = interquartile range of the per-round ratios in % of their median.
Also printed: the TVM build time (import, schedule, compile, export) of each model.

`--int8`: the all-int8 plan instead (every kernel int8 where legal, the model `compile --plan`
ships: `toolchain.compile.rewrite.apply_plan`, synthetic calibration data for the zoo models;
model `digits` = the accuracy fixture with its calibration split, also prints the test-split
accuracy of the int8 model.so and of onnxruntime int8),
1 thread, pinned as above, in alternating rounds: onnxruntime running that QDQ `model.onnx`
(its integer kernels), the int8 `model.so` (integer compute, passes/tvm_int8) and the fp32
`model.so` of the same model; ratios int8 TVM / onnxruntime int8 and int8 TVM / fp32 TVM
(median of per-round ratios, spread = IQR in %), and the int8 build's agreement with
onnxruntime's integer output on seeded random inputs (cosine per output, minimum) and how
many int8 kernels stayed float.

    .venv/bin/python benchmarks/bench_tvm.py [--models mbv2-160,mbv2-224,resnet50]
        [--rounds 15] [--threads 1,all] [--int8]
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

LIGHT = ROOT / ".venv/lib/python3.11/site-packages/onnx/backend/test/data/light"
MODELS = ("mbv2-160", "mbv2-224", "resnet50")
FIXTURES = ROOT / "tests/fixtures"


def load(name: str):
    """The benchmark's models: the zoo's MobileNetV2-style nets and the onnx package's light
    ResNet-50 (opset 9, constant-fill weights)."""
    import onnx

    from toolchain.measure import zoo

    if name.startswith("mbv2-"):
        return zoo.mobilenet_v2(int(name.split("-")[1]))
    if name == "resnet50":
        return onnx.load(str(LIGHT / "light_resnet50.onnx"))
    if name == "digits":   # --int8 only: the accuracy fixture
        return onnx.load(str(FIXTURES / "digits_mbv2.onnx"))
    raise SystemExit(f"unknown model {name!r} (known: {', '.join(MODELS)})")


def worker(name: str, threads: int, rounds: int) -> dict:
    """Build, then time onnxruntime and the TVM module in alternating rounds, this process."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from passes.emit_tvm import build_module
    from toolchain.measure.tvm_backend import input_arrays, set_tvm_threads
    from toolchain.target import load_target

    model = load(name)
    tgt = load_target("host-tvm").tvm()
    set_tvm_threads(threads)   # as fleetc's timing sizes the pool (threads bound to cores)
    dev = tvm.cpu()
    vms, build_s, tuned = {}, 0.0, 0
    for key, records in (("tvm", False), ("tuned", True)):
        start = time.perf_counter()
        executable, kinds, _ = build_module(model, tgt, records=records)
        with tempfile.TemporaryDirectory() as tmp:
            executable.export_library(str(Path(tmp) / "model.so"))
            if key == "tvm":
                build_s = time.perf_counter() - start
            lib = tvm.runtime.load_module(str(Path(tmp) / "model.so"))
        tuned = sum(v == "tuned" for v in kinds.values())
        if key == "tvm" or tuned:
            vms[key] = relax.VirtualMachine(lib, dev)
    arrays = input_arrays(model)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), arrays, strict=True)}
    runners = {"ort": lambda: sess.run(None, feeds)}
    runners.update({k: (lambda vm=vm: vm["main"](*args)) for k, vm in vms.items()})
    per_run = {k: _calibrate(f) for k, f in runners.items()}
    samples: dict[str, list[float]] = {k: [] for k in runners}
    if threads == 1:
        for _ in range(rounds):
            for key, run in runners.items():
                samples[key].append(_block(run, per_run[key]))
    else:
        # One runtime at a time: a thread pool that just ran keeps spinning on the other
        # core and took it from the other runtime (alternating blocks in one process,
        # MobileNetV2-160, 2 threads: TVM 9.6 ms, 4.0 with onnxruntime's spinning off; TVM
        # alone 4.5 ms). Each phase warms up again first.
        for key, run in runners.items():
            _calibrate(run)
            samples[key] = [_block(run, per_run[key]) for _ in range(rounds)]
    out = {"model": name, "threads": threads, "build_s": build_s, "tuned_functions": tuned,
           "ort_ms": float(np.median(samples["ort"]))}
    for key in vms:
        ratios = np.array(samples[key]) / np.array(samples["ort"])
        out[f"{key}_ms"] = float(np.median(samples[key]))
        out[f"{key}_ratio"] = float(np.median(ratios))
        out[f"{key}_spread_pct"] = float(100 * np.subtract(*np.percentile(ratios, [75, 25]))
                                         / np.median(ratios))
    return out


def all_int8(model, calib=None):
    """`model` rewritten by its all-int8 plan (every kernel int8 where legal), as
    `compile --plan` rewrites it (`calib`: a .npz path, else synthetic data)."""
    from passes import analyze
    from passes.import_onnx import import_onnx
    from toolchain.compile.rewrite import apply_plan
    from toolchain.space import Choice, Plan

    graph = import_onnx(model)
    analyze(graph)
    kernels = {k: Choice("int8") for k in graph.space.options
               if Choice("int8") in graph.space.choices(k, ("fp32", "int8"))}
    return apply_plan(model, Plan(kernels=kernels), calib)


def int8_worker(name: str, rounds: int) -> dict:
    """Build the int8 and fp32 model.so, then time onnxruntime int8, TVM int8 and TVM fp32 in
    alternating rounds, this process (1 thread)."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from passes.emit_tvm import _cosine, build_module
    from toolchain.measure.tvm_backend import input_arrays
    from toolchain.target import load_target

    fp32 = load(name)
    int8_model = all_int8(fp32, FIXTURES / "digits_calib.npz" if name == "digits" else None)
    tgt = load_target("host-tvm").tvm()
    dev = tvm.cpu()
    vms, report = {}, []
    for key, model in (("tvm8", int8_model), ("tvm32", fp32)):
        executable, _, _ = build_module(model, tgt, int8=report if key == "tvm8" else None)
        with tempfile.TemporaryDirectory() as tmp:
            executable.export_library(str(Path(tmp) / "model.so"))
            vms[key] = relax.VirtualMachine(tvm.runtime.load_module(str(Path(tmp) / "model.so")),
                                            dev)
    arrays = input_arrays(int8_model)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(int8_model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), arrays, strict=True)}
    got = vms["tvm8"]["main"](*args)
    got = [got] if hasattr(got, "numpy") else list(got)
    cosine = min(_cosine(g.numpy(), w) for g, w in zip(got, sess.run(None, feeds), strict=True))
    runners = {"ort8": lambda: sess.run(None, feeds)}
    runners.update({k: (lambda vm=vm: vm["main"](*args)) for k, vm in vms.items()})
    per_run = {k: _calibrate(f) for k, f in runners.items()}
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            samples[key].append(_block(run, per_run[key]))
    out = {"model": name, "cosine": cosine, "integer": report[0].integer,
           "left_float": len(report[0].left)}
    if name == "digits":
        out.update(_accuracy(vms["tvm8"], sess))
    out.update({f"{k}_ms": float(np.median(v)) for k, v in samples.items()})
    for key, base in (("vs_ort8", "ort8"), ("vs_tvm32", "tvm32")):
        ratios = np.array(samples["tvm8"]) / np.array(samples[base])
        out[f"{key}_ratio"] = float(np.median(ratios))
        out[f"{key}_spread_pct"] = float(100 * np.subtract(*np.percentile(ratios, [75, 25]))
                                         / np.median(ratios))
    return out


def _accuracy(vm, sess) -> dict:
    """Top-1 accuracy (%) on the digits test split: the int8 model.so and onnxruntime int8."""
    import tvm

    test = np.load(FIXTURES / "digits_test.npz")
    name = sess.get_inputs()[0].name
    tvm_hits = ort_hits = 0
    for x, y in zip(test["inputs"], test["labels"], strict=True):
        x = x[None]
        tvm_hits += int(vm["main"](tvm.runtime.tensor(x)).numpy().argmax() == y)
        ort_hits += int(sess.run(None, {name: x})[0].argmax() == y)
    n = len(test["labels"])
    return {"tvm8_acc": 100 * tvm_hits / n, "ort8_acc": 100 * ort_hits / n}


def int8_main(models: list[str], rounds: int) -> None:
    print(f"{'model':10} {'ort int8 ms':>11} {'tvm int8 ms':>11} {'tvm fp32 ms':>11} "
          f"{'int8/ort8':>9} {'spread':>7} {'int8/fp32':>9} {'spread':>7} {'cosine':>7} "
          f"{'int/float kernels':>17}")
    for name in models:
        r = spawn(name, 1, rounds, int8=True)
        print(f"{name:10} {r['ort8_ms']:11.2f} {r['tvm8_ms']:11.2f} {r['tvm32_ms']:11.2f} "
              f"{r['vs_ort8_ratio']:8.2f}x {r['vs_ort8_spread_pct']:6.1f}% "
              f"{r['vs_tvm32_ratio']:8.2f}x {r['vs_tvm32_spread_pct']:6.1f}% "
              f"{r['cosine']:7.4f} {r['integer']:>8}/{r['left_float']}", flush=True)
        if "tvm8_acc" in r:
            print(f"{'':10} digits test accuracy: int8 model.so {r['tvm8_acc']:.2f}%, "
                  f"onnxruntime int8 {r['ort8_acc']:.2f}%", flush=True)


def _calibrate(run) -> int:
    """Warm up; runs per block so one block lasts about 50 ms."""
    for _ in range(3):
        run()
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-5)
    return max(1, int(0.05 / once))


def _block(run, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        run()
    return (time.perf_counter() - start) / number * 1e3


def spawn(name: str, threads: int, rounds: int, int8: bool = False) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--worker", name, "--worker-threads", str(threads),
           "--rounds", str(rounds)] + (["--int8"] if int8 else [])
    if threads == 1:
        cmd = ["taskset", "-c", str(cpus[-1])] + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"worker {name} x{threads} failed: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", default="1,all", help="comma list of counts or 'all'")
    ap.add_argument("--int8", action="store_true",
                    help="the all-int8 plan: onnxruntime int8 vs TVM int8 vs TVM fp32, 1 thread")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        result = int8_worker(a.worker, a.rounds) if a.int8 else \
            worker(a.worker, a.worker_threads, a.rounds)
        print(json.dumps(result))
        return
    if a.int8:
        int8_main(a.models.split(","), a.rounds)
        return
    cores = len(os.sched_getaffinity(0))
    counts = [cores if t == "all" else int(t) for t in a.threads.split(",")]
    print(f"{'model':10} {'threads':>7} {'ort ms':>8} {'tvm default ms':>15} "
          f"{'tvm/ort':>8} {'spread':>7} {'tvm tuned ms':>16} {'build s':>8}")
    for name in a.models.split(","):
        for threads in counts:
            r = spawn(name, threads, a.rounds)
            tuned = (f"{r['tuned_ms']:.2f} ({r['tuned_ratio']:.2f}x)" if "tuned_ms" in r
                     else "-")
            print(f"{name:10} {threads:>7} {r['ort_ms']:8.2f} {r['tvm_ms']:15.2f} "
                  f"{r['tvm_ratio']:7.2f}x {r['tvm_spread_pct']:6.1f}% {tuned:>16} "
                  f"{r['build_s']:8.1f}", flush=True)


if __name__ == "__main__":
    main()
