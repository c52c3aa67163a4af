"""Evolutionary search for plans whose costs are not additive (e.g. measured or model-level
predictions): a seeded genetic algorithm over one option index per decision.

Selection follows Deb's feasibility rules: a feasible plan beats an infeasible one, two feasible
plans compare by the objective (then latency), two infeasible ones by how far they exceed the
budgets. Uniform crossover, per-gene mutation at rate 1/n, elitism. Every evaluation is cached,
so an expensive `evaluate` is called once per distinct plan. Same seed, same table, same answer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from toolchain.errors import InfeasibleError
from toolchain.optimize.costs import Budget, CostTable, Metrics, Solution, metrics_of

__all__ = ["solve_evolve"]

logger = logging.getLogger(__name__)

Picks = tuple[int, ...]


def solve_evolve(table: CostTable, budget: Budget, objective: str = "drop", *,
                 evaluate: Callable[[Picks], Metrics] | None = None, seed: int = 0,
                 population: int = 40, generations: int = 60,
                 seeds: Sequence[Picks] = ()) -> Solution:
    """Best plan found; `seeds` are plans put in the first population (e.g. the greedy one)."""
    evaluate = _cached(evaluate or (lambda p: metrics_of(table, p)))
    rng = np.random.default_rng(seed)
    sizes = [len(d.options) for d in table.decisions]
    n = len(sizes)

    def key(p: Picks):
        m = evaluate(p)
        v = budget.violation(m)
        return (0, getattr(m, objective), m.latency_ms, p) if v <= 1e-9 else (1, v, 0.0, p)

    pop = _initial(rng, sizes, population, seeds)
    for _ in range(generations):
        ranked = sorted(set(pop), key=key)
        nxt = ranked[:2]                                   # elitism
        while len(nxt) < population:
            a, b = _tournament(rng, ranked), _tournament(rng, ranked)
            child = tuple(int(x) for x in np.where(rng.random(n) < 0.5, a, b))
            nxt.append(_mutate(rng, child, sizes, 1.0 / max(n, 1)))
        pop = nxt
    best = min(set(pop), key=key)
    m = evaluate(best)
    if budget.violation(m) > 1e-9:
        raise InfeasibleError(
            f"evolutionary search found no plan within the budgets; the closest reaches "
            f"{m.latency_ms:.4g} ms predicted, {m.drop:.3g} points drop")
    return Solution(best, m, "evolve")


def _cached(fn):
    memo: dict = {}

    def wrapped(p):
        if p not in memo:
            memo[p] = fn(p)
        return memo[p]
    return wrapped


def _initial(rng, sizes, population, seeds) -> list[Picks]:
    pop = [tuple(0 for _ in sizes)] + [tuple(s) for s in seeds]
    while len(pop) < population:
        # Sparse random plans: most kernels keep their original form, as good plans do.
        rate = rng.uniform(0.1, 0.9)
        pop.append(tuple(int(rng.integers(s)) if rng.random() < rate else 0 for s in sizes))
    return pop


def _tournament(rng, ranked: list[Picks]) -> Picks:
    i, j = rng.integers(len(ranked), size=2)
    return ranked[min(i, j)]   # ranked is sorted best first: the lower index wins


def _mutate(rng, p: Picks, sizes, rate) -> Picks:
    return tuple(int(rng.integers(s)) if rng.random() < rate else x for x, s in zip(p, sizes,
                                                                                      strict=True))
