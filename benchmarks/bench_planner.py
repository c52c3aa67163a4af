"""The fleet's amortized planner against the per-device exact solver with the same predictor, on
generated devices of the digits model (toolchain/fleet/planner.py). Prints figures; asserts
nothing.

Devices. The shipped host-ort-1t kernel predictor with its 1x1 convolutions split into a kind
of their own (same weights), and every kernel class's weights - 1x1 conv / gemm (the
reference), dense conv, depthwise conv, memory-bound kinds, and int8 kinds on top - times a
per-device factor exp(N(0, sigma_class)), sigma_class the spread the published device tables
show (targets/class_spread.json, made by benchmarks/class_spread.py; the int8 spread is not
observable there and is assumed), so devices differ in ranking, not only in scale. Draws
whose fastest plan is not predicted positive are redrawn. Budgets: log-uniform between 1.05 x
the device's fastest plan and its unchanged model (`budget_range`, the rule training uses too).

Both planners use the same tables (`table_family`: every option's features once, a device's
tables one matrix product):
- exact: per device, its tables (one product) and the MILP per resolution (`exact_tables`);
- amortized: the product for all devices, one onnxruntime call, decode and repair
  (`TablePlanner.choose`); trained as `fleetc fleet --planner amortized` trains it, on
  TRAIN_DEVICES devices drawn around the fleet's own (here: the generated devices' weights)
  at random budgets - the devices' own budgets are never seen.
Time per device: exact = median over devices (p10-p90 beside it); amortized = the whole
batch's seconds / devices, median of REPEATS runs. Training (device draws, labels, fit, ONNX
session) and the break-even fleet size (training / (exact - amortized) per device) are
reported apart. Regret = amortized's predicted drop minus exact's (points), per device.

    /work/notes/cpu time .venv/bin/python benchmarks/bench_planner.py --devices 200
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"   # pinned before numpy loads: both planners run on one thread

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REPEATS = 5


def split_vector(cache):
    """FeatureCache.vector with 1x1 convolutions as kind `conv1x1/<precision>`."""
    from toolchain.compile.pricing import _split
    from toolchain.predict.kernel import basis_of, context_of, features
    from toolchain.predict.units import structural_graph, units_under_plan

    memo: dict = {}

    def vector(plan):
        key = replace(plan, target=None).to_json()
        if key not in memo:
            skey, _ = _split(plan)
            graph = cache.graph if skey == ((), (), ()) else structural_graph(cache.graph, plan)
            rest = replace(plan, input_shape={}, skip_blocks=[],
                           kernels={k: replace(c, kernel_size=None)
                                    for k, c in plan.kernels.items()})
            units = units_under_plan(graph, rest)
            context = context_of(units)
            x: dict = {}
            for u in units:
                kind = u.kind
                if u.cls == "conv" and u.k_area == 1:
                    kind = "conv1x1/" + kind.partition("/")[2]
                f = features(u, context)
                for name in basis_of(u.cls):
                    x[(kind, name)] = x.get((kind, name), 0.0) + f[name]
            memo[key] = x
        return memo[key]
    return vector


def split_predictor(base):
    """The predictor with every `conv/<p>` kind's weights also as `conv1x1/<p>`."""
    from toolchain.predict.kernel import KernelPredictor

    weights = dict(base.weights)
    for kind, w in base.weights.items():
        if kind.startswith("conv/"):
            weights["conv1x1/" + kind.partition("/")[2]] = dict(w)
    return KernelPredictor(weights, dict(base.model), {"name": base.name + "-split"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault("FLEETC_HOME", tempfile.mkdtemp(prefix="bench_planner_"))
    from toolchain.compile.driver import prepare
    from toolchain.fleet.plan import FeatureCache, _weights
    from toolchain.fleet.planner import (
        TRAIN_DEVICES,
        TRAIN_SEED,
        plausible_devices,
        table_family,
    )
    from toolchain.optimize.amortized import (
        budget_range,
        exact_tables,
        plan_costs,
        train_table_planner,
    )
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import builtin_predictors_dir

    data = np.load(ROOT / "tests" / "fixtures" / "digits_calib.npz")
    calib = Path(tempfile.mkdtemp()) / "calib.npz"
    np.savez_compressed(calib, inputs=data["inputs"][:a.calib_samples],
                        labels=data["labels"][:a.calib_samples])
    prep = prepare(ROOT / "tests" / "fixtures" / "digits_mbv2.onnx", calib)
    precisions = ("fp32", "int8")
    base = split_predictor(KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t"))
    start = time.perf_counter()
    family, _, _, columns = table_family(prep, precisions, split_vector(FeatureCache(prep.graph)))
    t_family = time.perf_counter() - start
    W0, c0 = _weights([base], columns)
    W, const = plausible_devices(family, W0, c0, columns, a.devices, a.seed + 100)
    scale = np.exp(np.random.default_rng(a.seed + 1).uniform(np.log(0.3), np.log(5.0), len(W)))
    W, const = W * scale[:, None], const * scale
    lo, hi = budget_range(family, *family.latencies(W, const))
    rng = np.random.default_rng(a.seed + 2)
    budgets = np.exp(rng.uniform(np.log(np.minimum(1.05 * lo, hi)), np.log(hi)))

    start = time.perf_counter()
    TW, Tc = plausible_devices(family, W, const, columns, TRAIN_DEVICES, TRAIN_SEED)
    g = train_table_planner(family, TW, Tc)
    g._session   # noqa: B018 - the onnxruntime session is made once per fleet: training's
    t_train = time.perf_counter() - start

    t_amort = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        b_all, o_all = family.latencies(W, const)
        r_am, p_am = g.choose(family, b_all, o_all, budgets)
        t_amort.append(time.perf_counter() - start)
    lat_am, drop_am = plan_costs(family, b_all, o_all, r_am, p_am)

    t_exact, exact = [], []
    for i in range(len(W)):
        start = time.perf_counter()
        b_i, o_i = family.latencies(W[i:i + 1], const[i:i + 1])
        exact.append(exact_tables(family, b_i[0], o_i[0], budgets[i]))
        t_exact.append(time.perf_counter() - start)
    ok = np.array([e is not None for e in exact])
    r_ex = np.array([e[0] if e else 0 for e in exact])
    p_ex = np.array([e[1] if e else p_am[i] for i, e in enumerate(exact)])
    _, drop_ex = plan_costs(family, b_all, o_all, r_ex, p_ex)
    regret = (drop_am - drop_ex)[ok]
    fits = lat_am <= budgets * (1 + 1e-9)

    per_am = np.median(t_amort) / len(W)
    per_ex = float(np.median(t_exact))
    n_opts = family.X_opt.shape[1]
    print(f"{len(W)} generated devices of the digits model ({family.X_base.shape[0]} "
          f"resolutions, {len(family.names)} decisions, {n_opts} options each); option "
          f"features once: {t_family:.1f} s")
    print(f"exact per device: median {per_ex * 1e3:.2f} ms (p10 "
          f"{np.percentile(t_exact, 10) * 1e3:.2f}, p90 {np.percentile(t_exact, 90) * 1e3:.2f})"
          f"; exact found a plan for {ok.sum()}/{len(W)}")
    print(f"amortized per device: {per_am * 1e3:.4f} ms (batch of {len(W)}: median "
          f"{np.median(t_amort) * 1e3:.1f} ms, min {min(t_amort) * 1e3:.1f}, max "
          f"{max(t_amort) * 1e3:.1f}, {REPEATS} runs); within budget {fits.mean():.3f}")
    print(f"speed-up per device: {per_ex / per_am:.0f}x")
    print(f"regret (amortized - exact predicted drop, points): median {np.median(regret):.4f},"
          f" p75 {np.percentile(regret, 75):.4f}, p90 {np.percentile(regret, 90):.3f}, max "
          f"{regret.max():.3f}; share <= 0.1: {np.mean(regret <= 0.1):.2f}")
    print(f"training (once per model and fleet): {t_train:.1f} s on {TRAIN_DEVICES} devices; "
          f"break-even fleet size {t_train / max(per_ex - per_am, 1e-12):.0f} devices")


if __name__ == "__main__":
    main()
