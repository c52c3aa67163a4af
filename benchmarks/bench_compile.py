"""Benchmark of `fleetc compile` (issue 7's "Done when" figures). Prints; asserts nothing.

Part 1 - digits fixture on host-ort-1t (onnxruntime, 1 thread): for budgets of 0.5x and 0.7x
the measured fp32 latency, compile, then measure - side by side in one run, same timer - the
latency and accuracy drop of the compiled plan and of the plans the exact solver alone, the
evolutionary search alone, the greedy baseline and uniform int8 / uniform pruning (every
prunable kernel at width 0.75 and 0.5) give. Accuracy: top-1 on the calibration set (what the
optimizer sees) and on the held-out test set.

Part 2 - MobileNetV2-style 224x224 (toolchain.measure.zoo, seeded weights, synthetic calibration):
compile for host-ort-1t (model.so for this CPU, run against onnxruntime by emit_tvm) and rpi4
(cross artifact architecture; the host predictor stands in, labelled), report with the Pareto
front and the chosen point.

    .venv/bin/python benchmarks/bench_compile.py [--part 1|2|all] [--out build/bench_compile]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolchain.compile.driver import compile_model, prepare  # noqa: E402
from toolchain.measure.ort_backend import time_ort  # noqa: E402
from toolchain.measure.timing import TimingConfig  # noqa: E402
from toolchain.space import Choice, Plan  # noqa: E402

logger = logging.getLogger("bench_compile")

FIXTURE = ROOT / "tests" / "fixtures"
TIMING = TimingConfig(warmup=5, repeats=25, max_seconds=15.0)


def say(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def _latency(model) -> tuple[float, float]:
    t = time_ort(model, threads=1, config=TIMING)
    return t.median_ms, t.spread_pct


def _test_accuracy(model, test) -> float:
    from toolchain.predict.accuracy import AccuracyEstimator

    est = AccuracyEstimator(model, {"input": test["inputs"]}, test["labels"])
    return est.baseline.top1


def _uniform(prep, precision: str = "fp32", width: float = 1.0) -> Plan:
    """Every kernel at `precision` where legal, every prunable kernel at `width`."""
    kernels = {}
    for name, opts in prep.space.options.items():
        p = precision if precision in opts.get("precision", ["fp32"]) else "fp32"
        w = width if width in opts.get("width", [1.0]) else 1.0
        if Choice(p, w) != Choice():
            kernels[name] = Choice(p, w)
    return Plan(kernels=kernels, target="host-ort-1t")


def _solver_plans(result) -> dict[str, Plan]:
    out = {}
    for c in result.candidates:
        out.setdefault(c.solver, c.plan)
    return out


def part1(outdir: Path) -> None:
    model, calib, test = (FIXTURE / "digits_mbv2.onnx", FIXTURE / "digits_calib.npz",
                          FIXTURE / "digits_test.npz")
    test_data = dict(np.load(test))
    t0 = time.perf_counter()
    prep = prepare(model, calib, progress=say)
    prep.sensitivity(("fp32", "int8"), say)
    print(f"shared work (import, fp32 score, sensitivity): {time.perf_counter() - t0:.1f} s")
    fp32_ms, fp32_spread = _latency(prep.model)
    base_test = _test_accuracy(prep.model, test_data)
    print(f"fp32: {fp32_ms:.3f} ms (spread {fp32_spread:.1f}%), calib top-1 "
          f"{prep.estimator.baseline.value:.2f}%, test top-1 {base_test:.2f}%")
    for factor in (0.7, 0.5):
        budget = round(fp32_ms * factor, 4)
        print(f"\n== budget {factor}x fp32 = {budget:.3f} ms ==")
        t0 = time.perf_counter()
        res = compile_model(prep, "host-ort-1t", outdir / f"digits_{factor}x",
                            latency_ms=budget, progress=say)
        print(f"compile: {time.perf_counter() - t0:.1f} s, chosen by {res.manifest['solver']}")
        plans = {"compiled (chosen)": res.plan}
        plans.update({f"{k} alone": v for k, v in _solver_plans(res).items()})
        plans["uniform int8"] = _uniform(prep, "int8")
        plans["uniform prune w0.75"] = _uniform(prep, width=0.75)
        plans["uniform prune w0.5"] = _uniform(prep, width=0.5)
        plans["uniform int8 + w0.75"] = _uniform(prep, "int8", 0.75)
        rows = []
        for label, plan in plans.items():
            m = prep.rewrite(plan)
            ms, spread = _latency(m)
            drop = prep.estimator.baseline.value - prep.estimator.score(m).value
            tdrop = base_test - _test_accuracy(m, test_data)
            rows.append((label, ms, spread, ms <= budget * 1.05, drop, tdrop))
        print(f"{'plan':<24} {'latency ms':>10} {'spread%':>8} {'meets':>6} "
              f"{'calib drop':>10} {'test drop':>9}")
        for label, ms, spread, ok, drop, tdrop in rows:
            print(f"{label:<24} {ms:>10.3f} {spread:>8.1f} {'yes' if ok else 'no':>6} "
                  f"{drop:>10.2f} {tdrop:>9.2f}")
        feasible = [r for r in rows[1:] if r[3]]
        best_other = min((r[4] for r in feasible), default=None)
        chosen = rows[0]
        print(f"chosen meets budget within 5%: {chosen[3]} ({chosen[1] / budget:.3f}x budget); "
              f"least calib drop among the others that meet it: {best_other}; chosen: "
              f"{chosen[4]:.2f}")


def part2(outdir: Path) -> None:
    from toolchain.measure.zoo import mobilenet_v2

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mbv2_224.onnx"
        path.write_bytes(mobilenet_v2(224).SerializeToString())
        t0 = time.perf_counter()
        prep = prepare(path, None, progress=say)
        prep.sensitivity(("fp32", "int8"), say)
        print(f"\nMobileNetV2 224: shared work {time.perf_counter() - t0:.1f} s")
        from toolchain.compile.pricing import predictor_cost
        from toolchain.target import load_target

        host_cost, host_name, _ = predictor_cost(load_target("host-ort-1t"), prep)
        for target in ("host-ort-1t", "rpi4"):
            # rpi4 has no measured predictor here: the host one stands in, named as such in
            # the manifest (and its predictions are marked unvalidated there).
            cost, name = host_cost, host_name if target == "host-ort-1t" else \
                f"{host_name} (proxy for rpi4, uncalibrated)"
            budget = round(cost(Plan()).latency_ms * 0.7, 3)
            t0 = time.perf_counter()
            res = compile_model(prep, target, outdir / f"mbv2_{target}", latency_ms=budget,
                                cost=cost, predictor_name=name, progress=say)
            m = res.manifest
            html = (outdir / f"mbv2_{target}" / "report.html").read_text()
            print(f"{target}: budget {budget} ms predicted; plan by {m['solver']}, predicted "
                  f"{m['predicted']['latency_ms']} ms, measured drop "
                  f"{m['measured']['accuracy_drop']} ({m['measured']['metric']}); "
                  f"{time.perf_counter() - t0:.1f} s")
            print(f"  tvm: arch {m['tvm']['arch']}, checked vs onnxruntime "
                  f"{m['tvm']['checked_against_onnxruntime']}, max abs error "
                  f"{m['tvm']['max_abs_error']}; artifacts "
                  f"{[(a['path'], a['arch']) for a in m['artifacts']]}")
            print(f"  report: {html.count('<svg')} svg plot, front points "
                  f"{html.count('Pareto front') and html.count('>front:')}, chosen marker "
                  f"{'chosen:' in html}")
            print("  warnings:", json.dumps(m["warnings"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["1", "2", "all"])
    ap.add_argument("--out", default="build/bench_compile")
    args = ap.parse_args()
    out = Path(args.out)
    if args.part in ("1", "all"):
        part1(out)
    if args.part in ("2", "all"):
        part2(out)


if __name__ == "__main__":
    main()
