"""onnxruntime latency of rewrites on a MobileNetV2-style model (prints figures, asserts nothing).

Variants: fp32 as built, all compute kernels int8 (QDQ), every prunable kernel at width 0.75
(with reconstruction), and both. One intra-op thread, full graph optimisation, batch 1;
variants are timed round-robin (so drift hits them alike); median and interquartile range of
the repeats, and the ratio of each median to fp32's.

    .venv/bin/python benchmarks/bench_rewrites.py [--resolution 224] [--repeats 40]

Calibration is 16 random inputs (the zoo model's weights are random too): latency does not
depend on it, accuracy is measured on the digits fixture instead
(tests/predict/test_digits_accuracy.py).
"""
from __future__ import annotations

import argparse
import logging
import platform
import time

import numpy as np
import onnxruntime as ort

from passes import load_and_analyze
from toolchain.calib import synthetic_calib
from toolchain.compile.rewrite import rewrite
from toolchain.measure import zoo


def _plans(space) -> dict[str, dict]:
    compute = sorted(space.options)
    prunable = [k for k in compute if 0.75 in space.options[k].get("width", [])]
    doc = {"version": 1, "target": None, "model": {"input_shape": {}}, "skip_blocks": []}
    return {
        "fp32": {**doc, "kernels": {}},
        "int8": {**doc, "kernels": {k: {"precision": "int8"} for k in compute}},
        "pruned-0.75": {**doc, "kernels": {k: {"precision": "fp32", "width": 0.75}
                                           for k in prunable}},
        "int8+pruned-0.75": {**doc, "kernels": {k: {"precision": "int8",
                                                    **({"width": 0.75} if k in prunable else {})}
                                                for k in compute}},
    }


def _session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # onnxruntime.quantization's pre-processing advice

    model = zoo.mobilenet_v2(args.resolution, args.width, 1000)
    graph = load_and_analyze(model)
    calib = synthetic_calib(graph, n=16, warn=False)
    sessions, macs = {}, {}
    for name, plan in _plans(graph.space).items():
        start = time.perf_counter()
        result = rewrite(model, plan, calib=calib)
        macs[name] = sum(c.macs for c in result.after.values())
        sessions[name] = _session(result.model)
        print(f"built {name}: {time.perf_counter() - start:.1f} s, {macs[name] / 1e6:.0f} MMACs")
    x = np.random.default_rng(0).normal(
        size=(1, 3, args.resolution, args.resolution)).astype(np.float32)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for i in range(args.warmup + args.repeats):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"input": x})
            if i >= args.warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    base = float(np.median(times["fp32"]))
    print(f"\nMobileNetV2-style {args.resolution}x{args.resolution} width {args.width}, "
          f"onnxruntime {ort.__version__}, 1 thread, {args.repeats} repeats, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'variant':<18} {'MMACs':>7} {'median ms':>10} {'IQR ms':>14} {'x fp32':>7}")
    for name, t in times.items():
        q1, med, q3 = np.percentile(t, [25, 50, 75])
        print(f"{name:<18} {macs[name] / 1e6:>7.0f} {med:>10.2f} {q1:>6.2f}-{q3:<7.2f} "
              f"{med / base:>7.2f}")


if __name__ == "__main__":
    main()
