"""The additive-table planner of toolchain/optimize/amortized.py (the fleet's `--planner`):
the per-device exact solve equals exhaustive search, the repair makes plans fit, and the
trained network's plans (ONNX, onnxruntime) fit their budgets and are never better than
exact."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from toolchain.optimize.amortized import (
    TableFamily,
    TrainConfig,
    budget_range,
    exact_tables,
    plan_costs,
    repair_tables,
    train_table_planner,
)


def _family(seed: int = 0) -> TableFamily:
    """2 resolutions, 4 decisions of 3 options (the first the original: zero features and
    drop), 6 features, positive latencies for positive weights."""
    rng = np.random.default_rng(seed)
    R, D, M, F = 2, 4, 3, 6
    decision = np.repeat(np.arange(D), M)
    X_opt = -rng.uniform(0.0, 0.2, (R, D * M, F))
    X_opt[:, ::M] = 0.0
    X_opt[1] *= 0.6
    X_base = np.array([np.full(F, 1.0), np.full(F, 0.6)])
    drop = rng.uniform(0.0, 3.0, D * M)
    drop[::M] = 0.0
    labels = tuple(f"o{i}" for i in range(D * M))
    return TableFamily(X_base, X_opt, np.array([0.0, 1.5]), drop, decision, labels,
                       tuple(f"d{d}" for d in range(D)))


def _exhaustive(fam, base, opt, budget):
    best = None
    for r in range(2):
        for combo in itertools.product(*[range(a, b) for a, b in
                                         zip(fam.starts[:-1], fam.starts[1:], strict=True)]):
            p = np.array(combo)
            lat = base[r] + opt[r, p].sum()
            drop = fam.drop_base[r] + fam.drop[p].sum()
            if lat <= budget and (best is None or drop < best - 1e-12):
                best = drop
    return best


def _devices(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 2.0, (n, 6)), rng.uniform(0.0, 0.1, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_tables_equals_exhaustive_search(seed):
    fam = _family(seed)
    W, c = _devices(6, seed + 10)
    base, opt = fam.latencies(W, c)
    lo, hi = budget_range(fam, base, opt)
    for i in range(len(W)):
        for budget in np.linspace(lo[i] * 0.9, hi[i], 7):
            want = _exhaustive(fam, base[i], opt[i], budget)
            got = exact_tables(fam, base[i], opt[i], budget)
            if want is None:
                assert got is None
                continue
            lat, drop = plan_costs(fam, base[i:i + 1], opt[i:i + 1], np.array([got[0]]),
                                   got[1][None])
            assert lat[0] <= budget * (1 + 1e-9)
            assert drop[0] == pytest.approx(want, abs=1e-6)


def test_repair_brings_the_unchanged_model_within_budget():
    fam = _family()
    W, c = _devices(20, 3)
    base, opt = fam.latencies(W, c)
    lo, hi = budget_range(fam, base, opt)
    budgets = (lo + hi) / 2
    r = np.zeros(len(W), int)
    start = np.tile(fam.starts[:-1], (len(W), 1))          # every decision unchanged
    assert (plan_costs(fam, base, opt, r, start)[0] > budgets).all()
    picks = repair_tables(fam, base, opt, budgets, r, start)
    lat, _ = plan_costs(fam, base, opt, r, picks)
    fastest = base[:, 0] + sum(opt[:, 0, a:b].min(axis=1)
                               for a, b in zip(fam.starts[:-1], fam.starts[1:], strict=True))
    reachable = fastest <= budgets
    assert reachable.sum() >= 10
    assert (lat[reachable] <= budgets[reachable] * (1 + 1e-6)).all()


def test_trained_planner_fits_budgets_and_never_beats_exact():
    fam = _family()
    W, c = _devices(40, 4)
    g = train_table_planner(fam, W, c, TrainConfig(hidden=(16,), epochs=5, batch=32))
    Wt, ct = _devices(30, 5)
    base, opt = fam.latencies(Wt, ct)
    lo, hi = budget_range(fam, base, opt)
    budgets = np.sqrt(lo * 1.05 * hi)
    r, picks = g.choose(fam, base, opt, budgets)
    lat, drop = plan_costs(fam, base, opt, r, picks)
    assert (lat <= budgets * (1 + 1e-6)).all()
    for i in range(len(Wt)):
        assert drop[i] >= _exhaustive(fam, base[i], opt[i], budgets[i]) - 1e-6
