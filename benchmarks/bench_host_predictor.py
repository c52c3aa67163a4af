"""Benchmark of the host predictor on this CPU (issue 22). Prints; asserts nothing.

Part 1 - another CPU's package calibrated to this one: the shipped host-ort-1t package (fitted
on an AMD EPYC, records no CPU) predicts the onnx package's light ResNet-50 as shipped and after
`load_predictor` calibrated it to this CPU from an empty FLEETC_HOME (the fingerprint probes,
timed); a second load is served from the cache (timed). The model is timed in onnxruntime (1
thread, the target's back end) before and after the calibration, median of the runs; the
figures are predicted / measured ratios from the same run.

Part 2 - the price of an int8 Concat: the light SqueezeNet (opset 9, upgraded on import) with
every kernel int8 (the uniform-int8 plan, rewritten as compile does), its Concat nodes timed by
onnxruntime's profiler (1 thread, per-node kernel time, median over the runs) against their
predicted price (Concat/int8 has no measurements: the memory-traffic fallback, shipped package,
before calibration, whose error meta.json gives), and the whole model predicted vs measured.

Run under the exclusive CPU lock (timings):

    flock -x /work/notes/cpu.lock .venv/bin/python benchmarks/bench_host_predictor.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIGHT = Path(__import__("onnx").__file__).parent / "backend/test/data/light"


def _time_model(model, rounds: int = 3) -> tuple[float, float]:
    """(median, spread %) of `rounds` timings (each a median) in the target's back end."""
    from toolchain.measure.backend import measure_model
    from toolchain.measure.timing import TimingConfig
    from toolchain.target import load_target

    cfg = TimingConfig(warmup=3, repeats=15, max_seconds=10.0)
    runs = [measure_model(load_target("host-ort-1t"), model, cfg).median_ms
            for _ in range(rounds)]
    med = statistics.median(runs)
    return med, 100 * (max(runs) - min(runs)) / med


def part1() -> None:
    import onnx

    from toolchain.predict.latency import load_predictor, predict_model, predictor_error
    from toolchain.target import load_target

    target = load_target("host-ort-1t")
    model = onnx.load(str(LIGHT / "light_resnet50.onnx"))
    before, spread_before = _time_model(model)
    shipped = load_predictor(target, calibrate=False)
    start = time.perf_counter()
    calibrated = load_predictor(target)
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    again = load_predictor(target)
    cached_s = time.perf_counter() - start
    after, spread_after = _time_model(model)
    measured = statistics.median([before, after])
    p_shipped = predict_model(shipped, model).latency_ms
    p_cal = predict_model(calibrated, model).latency_ms
    print("Part 1: light ResNet-50 on host-ort-1t (onnxruntime, 1 thread)")
    print(f"  measured: {before:.2f} ms before the calibration (spread {spread_before:.1f}% over "
          f"3 timings), {after:.2f} ms after ({spread_after:.1f}%); median {measured:.2f} ms")
    print(f"  shipped package (AMD EPYC, no CPU recorded): predicted {p_shipped:.2f} ms, "
          f"predicted / measured {p_shipped / measured:.3f}")
    print(f"  calibrated to this CPU: predicted {p_cal:.2f} ms, predicted / measured "
          f"{p_cal / measured:.3f} (its error: {predictor_error(calibrated.meta)})")
    print(f"  calibration {calibrate_s:.1f} s from an empty FLEETC_HOME; second load "
          f"{cached_s:.2f} s (cache; same weights: {again.weights == calibrated.weights})")
    print(f"  this CPU: {json.dumps({k: calibrated.meta['cpu'][k] for k in ('vendor', 'model')})}"
          f", {len(calibrated.meta['cpu']['isa'])} ISA flags")


def _profile_nodes(model, runs: int = 200, warmup: int = 20) -> dict[str, list[float]]:
    """Per-node kernel time (ms) of each timed run, from onnxruntime's profiler (1 thread,
    all graph optimizations, the warm-up runs dropped)."""
    import onnxruntime as ort

    from toolchain.measure.ort_backend import random_feed

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        feed = random_feed(sess)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    out: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = f"{e['args'].get('op_name')}:{e['name'][:-len('_kernel_time')]}"
            out.setdefault(key, []).append(e["dur"] / 1000.0)
    return {k: v[-runs:] for k, v in out.items()}


def part2() -> None:
    import onnx

    from passes import load_and_analyze
    from toolchain.compile.rewrite import apply_plan
    from toolchain.predict.latency import load_predictor, predict_model, predict_plan
    from toolchain.space import Choice, Plan
    from toolchain.target import load_target

    target = load_target("host-ort-1t")
    source = onnx.load(str(LIGHT / "light_squeezenet.onnx"))
    graph = load_and_analyze(source)
    plan = Plan(kernels={k.name: Choice("int8") for k in graph.kernels if k.is_compute
                         and "int8" in graph.space.options.get(k.name, {}).get("precision", [])})
    predictor = load_predictor(target, calibrate=False)
    pred = predict_plan(predictor, graph, plan)
    concat_pred = {k.name: k.latency_ms for k in pred.kernels if k.kind == "Concat/int8"}
    model = apply_plan(source, plan, None, target)
    nodes = _profile_nodes(model)
    concat_meas = {k: statistics.median(v) for k, v in nodes.items()
                   if k.split(":")[0] in ("Concat", "QLinearConcat")}
    print("\nPart 2: light SqueezeNet, every kernel int8 (uniform-int8 plan), host-ort-1t")
    print(f"  Concat/int8 kernels predicted (fallback: {predictor.fallback_error}): "
          f"{len(concat_pred)}; QLinearConcat nodes in onnxruntime's optimized int8 model: "
          f"{len(concat_meas)}")
    for name, ms in sorted(concat_pred.items()):
        hit = next((v for k, v in concat_meas.items() if k.split(":", 1)[1] == name), None)
        ratio = f"{ms / hit:.2f}" if hit else "-"
        print(f"    {name:<24} predicted {1000 * ms:7.1f} us  measured "
              f"{'-' if hit is None else f'{1000 * hit:7.1f} us'}  predicted / measured {ratio}")
    total_pred, total_meas = sum(concat_pred.values()), sum(concat_meas.values())
    print(f"  all concats: predicted {1000 * total_pred:.1f} us, measured (profiler) "
          f"{1000 * total_meas:.1f} us, ratio {total_pred / total_meas:.2f}")
    measured, spread = _time_model(model)
    whole = predict_model(predictor, model).latency_ms
    print(f"  whole int8 model: measured {measured:.3f} ms (spread {spread:.1f}%), predicted "
          f"under the plan {pred.latency_ms:.3f} ms ({pred.latency_ms / measured:.3f}), "
          f"predicted from the rewritten model {whole:.3f} ms ({whole / measured:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("1", "2", "all"), default="all")
    args = ap.parse_args()
    os.environ["FLEETC_HOME"] = tempfile.mkdtemp(prefix="bench_host_predictor_")
    os.environ["FLEETC_CALIBRATE"] = "1"
    if args.part in ("2", "all"):
        part2()
    if args.part in ("1", "all"):
        part1()


if __name__ == "__main__":
    main()
