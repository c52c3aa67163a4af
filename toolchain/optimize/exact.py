"""Exact solver for the additive model: a multiple-choice knapsack.

Problem: pick one option per decision to minimize the summed value (predicted accuracy drop,
or latency) subject to summed resources (latency, energy, model bytes, accuracy drop) under
their limits; a peak-activation limit removes options first (`CostTable.restrict`).

Two methods, chosen by `solve_exact` where each is exact:

- **MILP** (the default for real-valued costs): one binary variable per option, one equality
  per decision, one row per constrained resource, solved by HiGHS (`scipy.optimize.milp`) to a
  zero relative gap. It is exact up to HiGHS's tolerances (1e-6 absolute on the objective and
  on constraint activity); a solution that misses a budget by that tolerance is solved again
  under a budget tightened by twice the miss, so every returned plan meets the real budgets.
  Ties in the value are broken toward less latency by a term of at most 1e-7 (points or ms)
  in total. Measured on the digits model (23 decisions, about 200 options): milliseconds
  per solve (benchmarks/bench_fleet.py prints the figure).
- **DP** over whole cells, exact where every constrained resource is a whole number (one
  resource, at most 4000 units of slack) and where no resource is constrained.

The DP with `cells=` is also the approximation it always was (used by the Pareto front over
every latency budget, pareto.py): each constrained resource is shifted by every decision's
cheapest option (so costs are >= 0) and measured in cells of `step = remaining budget /
cells`, each option's cost rounded **up** to whole cells. Rounding up makes every returned plan
feasible under the real costs; the returned value is no worse than the true optimum under a
budget tightened by `n_decisions * step`. Cells per resource: 4000 with one constrained
resource, 300 with two, 60 with three, 20 with four. Ties are broken deterministically: the
lowest option index (the original form first), then the least latency cell.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from toolchain.errors import InfeasibleError
from toolchain.optimize.costs import Budget, CostTable, Solution, check_feasible, metrics_of

__all__ = ["solve_exact", "DEFAULT_CELLS", "solve_milp"]

logger = logging.getLogger(__name__)

DEFAULT_CELLS = {0: 1, 1: 4000, 2: 300, 3: 60, 4: 20}
MILP_SECONDS = 20.0        # HiGHS time limit per solve; past it the DP answers (logged)
_TIE = 1e-7                # total weight of the latency tie-break in the MILP objective
_RESOURCES = ("latency_ms", "energy_mj", "model_bytes", "drop")


@dataclass(frozen=True)
class _Grid:
    """Per decision, per option: whole cells used of each constrained resource (-1 = never)."""

    units: list[np.ndarray]     # per decision: (n_options, k) int
    cells: int                  # grid size per resource (the budget's cells plus any slack)
    steps: tuple[float, ...]


def _grid(table: CostTable, limits: list[tuple[str, float]], cells: int,
          slack: int = 0) -> _Grid:
    """`slack` extra cells beyond the budget's `cells` (the Pareto front uses one per decision
    so that every plan fits after rounding up, while the step stays range / cells)."""
    units = [np.zeros((len(d.options), len(limits)), dtype=np.int64) for d in table.decisions]
    steps = []
    for r, (attr, limit) in enumerate(limits):
        mins = [min(getattr(o, attr) for o in d.options) for d in table.decisions]
        remaining = limit - getattr(table.base, attr) - sum(mins)
        step = remaining / cells if remaining > 0 else 0.0
        steps.append(step)
        for k, d in enumerate(table.decisions):
            for j, o in enumerate(d.options):
                extra = getattr(o, attr) - mins[k]
                if remaining < -1e-9 * max(abs(limit), 1.0):
                    units[k][j, r] = -1          # even the cheapest plan misses this limit
                elif step == 0.0:
                    units[k][j, r] = 0 if extra <= 0 else -1
                else:
                    # 1e-9 absorbs float noise so exact multiples of the step stay exact.
                    u = math.ceil(extra / step - 1e-9)
                    units[k][j, r] = u if u <= cells + slack else -1
    return _Grid(units, cells + slack, tuple(steps))


def _run_dp(table: CostTable, value_attr: str, grid: _Grid) -> tuple[np.ndarray, list]:
    """dp[u] = least summed value using exactly u cells; choices[k][u] = option of decision k.

    Equal values in one cell are told apart by their exact summed latency (kept beside the DP),
    so the cheaper plan wins although rounding put both in the same cell; then the lower option
    index (the original form first) wins."""
    k = grid.units[0].shape[1] if grid.units else 0
    shape = (grid.cells + 1,) * k
    dp = np.full(shape, np.inf)
    dp[(0,) * k] = 0.0
    lat = np.zeros(shape)
    choices = []
    for d, units in zip(table.decisions, grid.units, strict=True):
        new = np.full(shape, np.inf)
        new_lat = np.full(shape, np.inf)
        pick = np.full(shape, -1, dtype=np.int16)
        for j, o in enumerate(d.options):
            u = units[j]
            if (u < 0).any():
                continue
            cand = np.full(shape, np.inf)
            cand_lat = np.full(shape, np.inf)
            dst = tuple(slice(int(c), None) for c in u)
            src = tuple(slice(0, grid.cells + 1 - int(c)) for c in u)
            cand[dst] = dp[src] + getattr(o, value_attr)
            cand_lat[dst] = lat[src] + o.latency_ms
            better = (cand < new) | ((cand == new) & (cand_lat < new_lat))
            new[better] = cand[better]
            new_lat[better] = cand_lat[better]
            pick[better] = j
        dp, lat = new, new_lat
        choices.append(pick)
    return dp, choices


def _backtrack(grid: _Grid, choices: list, cell: tuple[int, ...]) -> tuple[int, ...]:
    picks = []
    u = np.array(cell, dtype=np.int64)
    for k in range(len(choices) - 1, -1, -1):
        j = int(choices[k][tuple(u)])
        picks.append(j)
        u = u - grid.units[k][j]
    return tuple(reversed(picks))


def _limits(budget: Budget, value_attr: str) -> list[tuple[str, float]]:
    given = dict(zip(_RESOURCES, (budget.latency_ms, budget.energy_mj, budget.model_bytes,
                                  budget.max_drop), strict=True))
    return [(a, v) for a, v in given.items() if v is not None and a != value_attr]


def _expand(picks: tuple[int, ...], index: list[list[int]]) -> tuple[int, ...]:
    return tuple(index[k][j] for k, j in enumerate(picks))


def solve_exact(table: CostTable, budget: Budget, objective: str = "drop",
                cells: int | None = None) -> Solution:
    """Least summed `objective` ("drop" or "latency_ms") under the budget (module doc: the MILP,
    or the DP where it is exact; `cells` forces the DP with that many cells per resource);
    raises InfeasibleError with the best reachable value when no plan fits."""
    sub, index = table.restrict(budget.peak_activation_bytes)
    check_feasible(sub, budget)
    limits = _limits(budget, objective)
    if cells is None and (not limits or _whole_units(sub, limits)):
        cells = _whole_units(sub, limits) if limits else 1
        picks = _solve_dp(sub, objective, limits, cells, whole=True)
    elif cells is None:
        picks = _solve_milp(sub, objective, limits)
    else:
        picks = _solve_dp(sub, objective, limits, cells)
    if picks is None:
        raise InfeasibleError(_joint_message(table, budget))
    picks = _expand(picks, index)
    m = metrics_of(table, picks)
    limit = budget.max_drop if objective == "drop" else budget.latency_ms
    if limit is not None and getattr(m, objective) > limit * (1 + 1e-9):
        raise InfeasibleError(
            f"no plan meets all budgets at once: the least predicted "
            f"{'accuracy drop' if objective == 'drop' else 'latency'} under the other limits "
            f"is {getattr(m, objective):.4g}")
    return Solution(picks, m, "exact")


def solve_milp(table: CostTable, budget: Budget, objective: str = "drop") -> Solution:
    """`solve_exact` by the MILP whatever the costs (for tests and benchmarks)."""
    sub, index = table.restrict(budget.peak_activation_bytes)
    check_feasible(sub, budget)
    picks = _solve_milp(sub, objective, _limits(budget, objective))
    if picks is None:
        raise InfeasibleError(_joint_message(table, budget))
    picks = _expand(picks, index)
    return Solution(picks, metrics_of(table, picks), "exact")


def _solve_dp(table: CostTable, objective: str, limits: list[tuple[str, float]], cells: int,
              whole: bool = False) -> tuple[int, ...] | None:
    grid = _whole_grid(table, limits, cells) if whole else _grid(table, limits, cells)
    dp, choices = _run_dp(table, objective, grid)
    if not np.isfinite(dp).any():
        return None
    cell = np.unravel_index(int(np.argmin(dp)), dp.shape)
    return _backtrack(grid, choices, tuple(int(c) for c in cell))


def _whole_units(table: CostTable, limits: list[tuple[str, float]]) -> int:
    """The slack in whole units when one resource is constrained, every option's cost above its
    decision's cheapest is a whole number and the slack is at most DEFAULT_CELLS[1] units (the
    DP on unit cells is then exact); else 0."""
    if len(limits) != 1:
        return 0
    attr, limit = limits[0]
    mins = [min(getattr(o, attr) for o in d.options) for d in table.decisions]
    extras = [getattr(o, attr) - lo for d, lo in zip(table.decisions, mins, strict=True)
              for o in d.options]
    if not all(float(e).is_integer() for e in extras):
        return 0
    slack = math.floor(limit - getattr(table.base, attr) - sum(mins) + 1e-9)
    return slack if 1 <= slack <= DEFAULT_CELLS[1] else 0


def _whole_grid(table: CostTable, limits: list[tuple[str, float]], cells: int) -> _Grid:
    """Unit cells: each option uses exactly its whole-number cost above the cheapest."""
    units = []
    for d in table.decisions:
        u = np.zeros((len(d.options), len(limits)), dtype=np.int64)
        for r, (attr, _) in enumerate(limits):
            lo = min(getattr(o, attr) for o in d.options)
            for j, o in enumerate(d.options):
                extra = int(round(getattr(o, attr) - lo))
                u[j, r] = extra if extra <= cells else -1
        units.append(u)
    return _Grid(units, cells, tuple(1.0 for _ in limits))


def _solve_milp(table: CostTable, objective: str, limits: list[tuple[str, float]]
                ) -> tuple[int, ...] | None:
    """The multiple-choice knapsack as a 0/1 program (module doc); None when infeasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    sizes = [len(d.options) for d in table.decisions]
    starts = np.cumsum([0, *sizes])
    n = int(starts[-1])
    opts = [o for d in table.decisions for o in d.options]
    value = np.array([getattr(o, objective) for o in opts])
    lat = np.array([o.latency_ms for o in opts])
    for k in range(len(sizes)):   # shift per decision: the objective is >= 0 (relative gap)
        value[starts[k]:starts[k + 1]] -= value[starts[k]:starts[k + 1]].min()
        lat[starts[k]:starts[k + 1]] -= lat[starts[k]:starts[k + 1]].min()
    span = lat.sum()
    c = value + (_TIE * lat / span if objective != "latency_ms" and span > 0 else 0.0)
    rows = np.repeat(np.arange(len(sizes)), sizes)
    one = LinearConstraint(csr_matrix((np.ones(n), (rows, np.arange(n))),
                                      shape=(len(sizes), n)), 1, 1)
    A = np.array([[getattr(o, attr) for o in opts] for attr, _ in limits]).reshape(-1, n)
    rhs = np.array([limit - getattr(table.base, attr) for attr, limit in limits])
    for _ in range(4):
        cons = [one] + ([LinearConstraint(A, -np.inf, rhs)] if limits else [])
        res = milp(c, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, 1),
                   options={"mip_rel_gap": 0.0, "time_limit": MILP_SECONDS})
        if res.status == 2 or res.x is None:
            return None if res.status == 2 else _dp_fallback(table, objective, limits, res)
        if res.status != 0:
            return _dp_fallback(table, objective, limits, res)
        x = np.round(res.x).astype(int)
        picks = tuple(int(np.argmax(x[starts[k]:starts[k + 1]])) for k in range(len(sizes)))
        chosen = np.array([starts[k] + j for k, j in enumerate(picks)], dtype=int)
        miss = A[:, chosen].sum(axis=1) - rhs if limits else np.zeros(0)
        if (miss <= 1e-9 * np.maximum(np.abs(rhs), 1.0)).all():
            return picks
        rhs = rhs - 2 * np.maximum(miss, 0.0)   # HiGHS's feasibility tolerance: tighten
    return None


def _dp_fallback(table: CostTable, objective: str, limits: list[tuple[str, float]],
                 res) -> tuple[int, ...] | None:
    logger.warning("the MILP stopped before proving its optimum (%s): the plan comes from the "
                   "cell DP (module doc of toolchain/optimize/exact.py)", res.message)
    return _solve_dp(table, objective, limits, DEFAULT_CELLS[len(limits)])


def _joint_message(table: CostTable, budget: Budget) -> str:
    # Each resource is reachable alone (check_feasible passed) but not all together: report the
    # least latency reachable under the other limits, the budget users most often tighten.
    if budget.latency_ms is not None:
        try:
            other = Budget(None, budget.energy_mj, budget.model_bytes,
                           budget.peak_activation_bytes, budget.max_drop)
            best = solve_exact(table, other, objective="latency_ms")
            return (f"latency budget {budget.latency_ms:g} ms cannot be met together with the "
                    f"other limits: the best reachable (predicted) is "
                    f"{best.metrics.latency_ms:.4g} ms")
        except InfeasibleError:
            pass
    return "no plan meets all budgets at once (each is reachable alone, not together)"
