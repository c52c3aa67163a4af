"""Quality of the fleet's vectorized pick (toolchain/fleet/plan.py) against a per-device exact
solve, on generated devices of the digits model. Prints figures; asserts nothing.

Devices: the shipped host-ort-1t predictor with every kernel kind's weights scaled by a
per-device factor per kernel class (dense conv, depthwise conv, 1x1 conv, gemm, int8 vs fp32,
memory-bound ops), drawn log-normal with sigma SIGMA - GENERATED spreads, not drawn from the
published device tables - so the devices differ in ranking, not only in scale; latency budgets
between the device's fastest and slowest candidate.

Per device, "exact" is compile's exact path on the device's own additive table: the MILP
(toolchain/optimize/exact.py) per input resolution, re-linearized around its solution
(RELINEARIZE rounds), whole-plan prediction checked against the budget. "pick" is the fleet's
pick among the fleet-wide candidates (least predicted drop within the budget). Regret = the
pick's predicted drop minus exact's (points; negative: the pick is better, since exact is
exact for the additive model only). Seconds per device are reported for both (unlocked runs on
a shared machine are not timing figures: use flock -x).

    .venv/bin/python benchmarks/bench_fleet_pick.py --devices 200 [--calib-samples 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SIGMA = 0.4
RELINEARIZE = 3


def _class(kind: str) -> str:
    cls, _, prec = kind.partition("/")
    if cls in ("conv", "dwconv", "gemm"):
        return f"{cls}/{'int8' if prec.startswith('int8') else 'float'}"
    return "memory"


def devices(base, n: int, seed: int) -> list:
    from toolchain.predict.kernel import KernelPredictor

    rng = np.random.default_rng(seed)
    classes = sorted({_class(k) for k in base.weights})
    out = []
    for i in range(n):
        f = dict(zip(classes, np.exp(rng.normal(0.0, SIGMA, len(classes))), strict=True))
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(4.0))))
        weights = {k: {name: v * f[_class(k)] * scale for name, v in w.items()}
                   for k, w in base.weights.items()}
        model = {k: v * scale for k, v in base.model.items()}
        out.append(KernelPredictor(weights, model, {"name": f"gen{i}"}))
    return out


def exact_plan(prep, cache, predictor, precisions, budget_ms):
    """compile's exact path for one device (module doc); (plan, whole-plan drop) or None."""
    from toolchain.compile.tables import Context, build_table, plan_metrics, plan_of
    from toolchain.errors import InfeasibleError
    from toolchain.fleet.plan import linear_cost
    from toolchain.optimize.costs import Budget
    from toolchain.optimize.exact import solve_exact

    sens = prep.sensitivity(precisions)
    ctx = Context(prep.kernels, prep.space, precisions, linear_cost(cache, predictor), sens,
                  prep.input_shape)
    budget = Budget(latency_ms=budget_ms)
    best = None
    for r in ctx.resolutions():
        table = build_table(ctx, r)
        for _ in range(RELINEARIZE):
            try:
                sol = solve_exact(table, budget, "drop")
            except InfeasibleError:
                break
            plan = plan_of(ctx, table, r, sol.picks)
            m = plan_metrics(ctx, plan)
            if m.latency_ms <= budget_ms * (1 + 1e-9) and (best is None or m.drop < best[1]):
                best = (plan, m.drop)
            table = build_table(ctx, r, replace(plan, target=None))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault("FLEETC_HOME", tempfile.mkdtemp(prefix="bench_pick_"))
    from toolchain.compile.driver import prepare
    from toolchain.fleet.plan import FeatureCache, _matrix, _weights, candidates_for, pick
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import builtin_predictors_dir

    data = np.load(ROOT / "tests" / "fixtures" / "digits_calib.npz")
    calib = Path(tempfile.mkdtemp()) / "calib.npz"
    np.savez_compressed(calib, inputs=data["inputs"][:a.calib_samples],
                        labels=data["labels"][:a.calib_samples])
    prep = prepare(ROOT / "tests" / "fixtures" / "digits_mbv2.onnx", calib)
    precisions = ("fp32", "int8")
    base = KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t")
    devs = devices(base, a.devices, a.seed)
    cache = FeatureCache(prep.graph)
    start = time.perf_counter()
    plans = candidates_for(prep, cache, precisions, [base], devs, lambda m: None)
    t_cand = time.perf_counter() - start
    sens = prep.sensitivity(precisions)
    r0 = prep.input_shape[2]
    drops = np.array([sens.plan(p, r0) for p in plans])
    X, columns, _ = _matrix(cache, plans)
    W, const = _weights(devs, columns)
    L = X @ W.T + const
    rng = np.random.default_rng(a.seed + 1)
    budgets = [float(rng.uniform(L[:, d].min() * 1.05, np.median(L[:, d])))
               for d in range(len(devs))]
    start = time.perf_counter()
    chosen = pick(L, np.zeros_like(L), drops, np.zeros_like(L, dtype=bool),
                  [{"latency_ms": b} for b in budgets])
    t_pick = time.perf_counter() - start
    regrets, t_exact = [], 0.0
    for d, dev in enumerate(devs):
        start = time.perf_counter()
        ex = exact_plan(prep, cache, dev, precisions, budgets[d])
        t_exact += time.perf_counter() - start
        if ex is None or chosen[d] < 0:
            continue
        regrets.append(float(drops[chosen[d]] - ex[1]))
    r = np.array(regrets)
    print(f"{len(devs)} generated devices (per-class factors, sigma {SIGMA}), "
          f"{len(plans)} candidates ({t_cand:.1f} s once)")
    print(f"regret of the pick vs per-device exact (predicted drop, points): median "
          f"{np.median(r):.4f}, p90 {np.percentile(r, 90):.4f}, max {r.max():.4f}, "
          f"share <= 0: {np.mean(r <= 1e-9):.2f} ({len(r)} devices with both)")
    print(f"seconds per device: pick {t_pick / len(devs) * 1e3:.3f} ms, exact "
          f"{t_exact / len(devs) * 1e3:.1f} ms (ratio {t_exact / max(t_pick, 1e-12):.0f}x)")


if __name__ == "__main__":
    main()
