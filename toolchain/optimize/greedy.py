"""Greedy baseline: from the original model, repeatedly take the single change that buys the most
budget per point of predicted accuracy drop, until every budget is met.

It is the usual "sensitivity-ordered" heuristic; the benchmark compares it with the exact
solver and the evolutionary search.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from toolchain.errors import InfeasibleError
from toolchain.optimize.costs import Budget, CostTable, Metrics, Solution, metrics_of

__all__ = ["solve_greedy"]

logger = logging.getLogger(__name__)


def solve_greedy(table: CostTable, budget: Budget,
                 evaluate: Callable[[tuple[int, ...]], Metrics] | None = None) -> Solution:
    """Cheapest-drop-per-budget moves from the all-original plan; raises InfeasibleError if the
    moves run out before the budget is met. The accuracy limit is not a move target: a plan
    whose drop exceeds it is infeasible."""
    evaluate = evaluate or (lambda p: metrics_of(table, p))
    resources = Budget(budget.latency_ms, budget.energy_mj, budget.model_bytes,
                       budget.peak_activation_bytes)
    picks = tuple(0 for _ in table.decisions)
    m = evaluate(picks)
    while resources.violation(m) > 0:
        move = _best_move(table, picks, m, resources, evaluate)
        if move is None:
            raise InfeasibleError(
                f"greedy search cannot meet the budget: it stops at a predicted "
                f"{m.latency_ms:.4g} ms, {m.drop:.3g} points drop")
        picks, m = move
    if budget.max_drop is not None and m.drop > budget.max_drop * (1 + 1e-9):
        raise InfeasibleError(f"greedy plan's predicted drop {m.drop:.3g} exceeds the limit "
                              f"{budget.max_drop:g}")
    return Solution(picks, m, "greedy")


def _best_move(table, picks, m, resources, evaluate):
    before = resources.violation(m)
    best, best_ratio = None, float("inf")
    for k, d in enumerate(table.decisions):
        for j in range(len(d.options)):
            if j == picks[k]:
                continue
            cand = picks[:k] + (j,) + picks[k + 1:]
            cm = evaluate(cand)
            gain = before - resources.violation(cm)
            if gain <= 0:
                continue
            ratio = (max(cm.drop - m.drop, 0.0) + 1e-9) / gain
            if ratio < best_ratio:
                best, best_ratio = (cand, cm), ratio
    return best
