"""Exact solver for the additive model: a multiple-choice knapsack solved by dynamic programming.

Problem: pick one option per decision to minimize the summed value (predicted accuracy drop,
or latency) subject to summed resources (latency, energy, model bytes, accuracy drop) under
their limits; a peak-activation limit removes options first (`CostTable.restrict`).

Discretization (stated because the answer depends on it): each constrained resource is shifted
by every decision's cheapest option (so costs are >= 0) and measured in cells of
`step = remaining budget / cells`, each option's cost rounded **up** to whole cells. Rounding
up makes every returned plan feasible under the real costs. The plan is optimal for the rounded
costs; any plan whose real costs leave `n_decisions * step` of slack per resource is
considered, so the returned value is no worse than the true optimum under a budget tightened
by that much, and exactly the true optimum when the costs are whole multiples of the step.
Cells per resource: 4000 with one constrained resource, 300 with two, 60 with three, 20 with
four (the DP array has cells**k entries). Values (the objective) are not discretized.
Ties are broken deterministically: the lowest option index (the original form first), then the
least latency cell.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from toolchain.errors import InfeasibleError
from toolchain.optimize.costs import Budget, CostTable, Solution, check_feasible, metrics_of

__all__ = ["solve_exact", "DEFAULT_CELLS"]

logger = logging.getLogger(__name__)

DEFAULT_CELLS = {0: 1, 1: 4000, 2: 300, 3: 60, 4: 20}
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
    """Least summed `objective` ("drop" or "latency_ms") under the budget; raises InfeasibleError
    with the best reachable value when no plan fits."""
    sub, index = table.restrict(budget.peak_activation_bytes)
    check_feasible(sub, budget)
    limits = _limits(budget, objective)
    grid = _grid(sub, limits, cells or DEFAULT_CELLS[len(limits)])
    dp, choices = _run_dp(sub, objective, grid)
    if not np.isfinite(dp).any():
        raise InfeasibleError(_joint_message(table, budget))
    cell = np.unravel_index(int(np.argmin(dp)), dp.shape)
    picks = _expand(_backtrack(grid, choices, tuple(int(c) for c in cell)), index)
    m = metrics_of(table, picks)
    limit = budget.max_drop if objective == "drop" else budget.latency_ms
    if limit is not None and getattr(m, objective) > limit * (1 + 1e-9):
        raise InfeasibleError(
            f"no plan meets all budgets at once: the least predicted "
            f"{'accuracy drop' if objective == 'drop' else 'latency'} under the other limits "
            f"is {getattr(m, objective):.4g}")
    return Solution(picks, m, "exact")


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
