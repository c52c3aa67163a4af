"""Exact means exact: `solve_exact` (MILP by HiGHS, or the DP where it is exact) against
exhaustive search on small spaces with real-valued costs and one to four constrained resources."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolchain.errors import InfeasibleError
from toolchain.optimize.costs import Budget, CostTable, Decision, Option, metrics_of
from toolchain.optimize.exact import _whole_units, solve_exact, solve_milp

FLOAT = st.floats(0, 30, allow_nan=False).map(lambda x: round(x, 6))


@st.composite
def tables(draw, costs=FLOAT):
    decisions = []
    for k in range(draw(st.integers(1, 5))):
        opts = tuple(Option(f"o{j}", latency_ms=draw(costs),
                            drop=draw(st.floats(-1, 5).map(lambda x: round(x, 5))),
                            energy_mj=draw(costs), model_bytes=draw(costs),
                            activation_bytes=draw(st.integers(0, 10)))
                     for j in range(draw(st.integers(1, 4))))
        decisions.append(Decision(f"k{k}", opts))
    return CostTable(tuple(decisions))


def exhaustive(table: CostTable, budget: Budget, objective: str):
    best = None
    for picks in itertools.product(*(range(len(d.options)) for d in table.decisions)):
        m = metrics_of(table, picks)
        if budget.allows(m) and (best is None or getattr(m, objective) < best):
            best = getattr(m, objective)
    return best


def _check(table: CostTable, budget: Budget, objective: str, solve) -> None:
    want = exhaustive(table, budget, objective)
    try:
        got = solve(table, budget, objective)
    except InfeasibleError:
        assert want is None
        return
    assert want is not None, "a plan was returned where none is feasible"
    assert budget.allows(got.metrics)
    assert getattr(got.metrics, objective) == pytest.approx(want, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(tables(), st.data())
def test_exact_equals_exhaustive_with_real_costs(table, data):
    """Latency, energy, model bytes, accuracy drop and activation limits in any combination:
    the cell DP's rounding made its optimum approximate here (60 cells with three limits)."""
    objective = data.draw(st.sampled_from(["drop", "latency_ms"]))
    budget = Budget(
        latency_ms=None if objective == "latency_ms" else data.draw(st.floats(0, 120)),
        energy_mj=data.draw(st.none() | st.floats(0, 120)),
        model_bytes=data.draw(st.none() | st.floats(0, 120)),
        peak_activation_bytes=data.draw(st.none() | st.integers(0, 10)),
        max_drop=None if objective == "drop" else data.draw(st.floats(-2, 20)))
    _check(table, budget, objective, solve_exact)
    _check(table, budget, objective, solve_milp)


@settings(max_examples=80, deadline=None)
@given(tables(costs=st.integers(0, 30).map(float)), st.integers(0, 120))
def test_the_dp_is_used_and_exact_on_whole_units(table, latency):
    budget = Budget(model_bytes=float(latency))
    _check(table, budget, "drop", solve_exact)


def test_whole_units_only_for_one_whole_resource():
    whole = CostTable((Decision("a", (Option("x", 1.0, model_bytes=2.0),
                                      Option("y", 0.5, model_bytes=5.0))),))
    assert _whole_units(whole, [("model_bytes", 10.0)]) == 8
    assert _whole_units(whole, [("latency_ms", 10.0)]) == 0          # 0.5 is not whole
    assert _whole_units(whole, [("model_bytes", 10.0), ("energy_mj", 3.0)]) == 0


def test_three_limits_where_the_cell_dp_was_wrong():
    """Three constrained resources get 60 cells each. 40 kernels, each original (1 ms, 1 mJ,
    1 byte, no drop) or int8 (half of each, 0.1 points): the budgets leave room for 24
    originals; a cell is 12/60 = 0.2 units, so each original rounds up to 3 cells (0.6, not
    0.5) and the DP keeps only 20 of them, 0.4 points worse than the optimum."""
    opts = (Option("fp32", 1.0, 0.0, 1.0, 1.0), Option("int8", 0.5, 0.1, 0.5, 0.5))
    table = CostTable(tuple(Decision(f"k{i:02d}", opts) for i in range(40)))
    budget = Budget(latency_ms=32.0, energy_mj=32.0, model_bytes=32.0)
    got = solve_exact(table, budget)
    assert got.metrics.drop == pytest.approx(1.6)             # 24 originals, 16 int8
    assert solve_exact(table, budget, cells=60).metrics.drop == pytest.approx(2.0)
