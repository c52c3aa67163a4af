"""Pareto fronts of predicted latency vs predicted accuracy drop, over every latency budget.

`pareto_front` runs the exact DP once with a latency limit wide enough for every plan and reads,
for each latency cell, the least drop reachable (see exact.py for the discretization); the
front is the cells where that least drop improves. `nondominated` filters any list of solutions
(from the evolutionary search, baselines, or measurements) the same way.
"""
from __future__ import annotations

import logging

import numpy as np

from toolchain.optimize.costs import Budget, CostTable, Solution, metrics_of
from toolchain.optimize.exact import DEFAULT_CELLS, _backtrack, _expand, _grid, _limits, _run_dp

__all__ = ["pareto_front", "nondominated"]

logger = logging.getLogger(__name__)


def pareto_front(table: CostTable, cells: int = 4000,
                budget: Budget | None = None) -> list[Solution]:
    """Latency vs predicted drop Pareto front of the additive model (one DP, every budget).

    Latency is discretized over [least, largest] plan latency in `cells` cells (plus one spare
    cell per decision, so that every plan fits after rounding up);
    the other limits of `budget` (not its latency) constrain every point, at coarser cells."""
    budget = budget or Budget()
    sub, index = table.restrict(budget.peak_activation_bytes)
    largest = sub.base.latency_ms + sum(max(o.latency_ms for o in d.options)
                                        for d in sub.decisions)
    n = len(sub.decisions)
    others = budget.energy_mj is not None or budget.model_bytes is not None \
        or budget.max_drop is not None
    if others:
        # Spare cells would loosen the other limits too: widen the latency range instead.
        least = sub.base.latency_ms + sum(min(o.latency_ms for o in d.options)
                                          for d in sub.decisions)
        largest += (largest - least) * (n + 1) / max(cells - n - 1, 1)
    wide = Budget(largest, budget.energy_mj, budget.model_bytes, None, budget.max_drop)
    limits = _limits(wide, "drop")
    # Rounding up adds up to one cell per decision: that many spare cells let every plan fit.
    grid = _grid(sub, limits, cells if len(limits) == 1 else DEFAULT_CELLS[len(limits)],
                 slack=0 if others else n)
    dp, choices = _run_dp(sub, "drop", grid)
    # Best drop per latency cell over the other resources' cells, remembering where.
    flat = dp.reshape(dp.shape[0], -1) if dp.ndim > 1 else dp.reshape(-1, 1)
    rest = np.argmin(flat, axis=1)
    best = flat[np.arange(flat.shape[0]), rest]
    out: list[Solution] = []
    seen = np.inf
    for c in range(flat.shape[0]):
        if best[c] < seen:
            seen = best[c]
            cell = (c,) + tuple(int(x) for x in np.unravel_index(int(rest[c]), dp.shape[1:]))
            picks = _expand(_backtrack(grid, choices, cell), index)
            out.append(Solution(picks, metrics_of(table, picks), "exact"))
    return nondominated(out)


def nondominated(sols: list[Solution]) -> list[Solution]:
    """Keep points no other point beats on both latency and drop; sorted by latency."""
    sols = sorted(sols, key=lambda s: (s.metrics.latency_ms, s.metrics.drop, s.picks))
    out: list[Solution] = []
    for s in sols:
        if not out or s.metrics.drop < out[-1].metrics.drop - 1e-12:
            out.append(s)
    return out
