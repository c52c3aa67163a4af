"""The scores of BENCH_PROTOCOL.md, shared by `bench fewshot | proxy | amortize`.

API (stable):

    spearman(pred, true)                  # rank correlation, ties get their average rank
    acc10(pred, true)                     # share with |pred - true| <= 10% of true
    held_out(access, sampled)             # the target's filled rows that were not sampled
    budget_of(true_filled, q)             # q-quantile of the target's filled latencies
    choose_direct(pred, objective, rows, budget)   # best predicted-feasible, else fastest
    outcome(chosen, true, objective, rows, budget) # (met, regret or None)
    ceiling_spearman(fit_predict, X, y)   # the predictor fitted and scored on all filled rows
    tally = BudgetTally(); tally.add(target, q, met, regret)
    tally.regret(target) / .violation_rate(target)  # {"0.1": x, ...} (seed averages)
    tally.median_regret() / .overall_violation_rate() / .near_violation_rate(...)
    normal_cdf(z)                         # standard normal CDF, vectorized
    budget_key(q) -> "0.1";  write_json(path, obj) (atomic)
    seed_spread(per_seed)                 # standard deviation over seeds (0 for one)

Regret is in objective points: (best objective among the target's rows with measured latency
<= B) - (objective of the chosen row), only for choices that met B; `violation_rate` counts
every choice.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolchain.files import atomic_write
from toolchain.predict.kernel import rankdata, spearman

__all__ = [
    "rankdata", "spearman", "acc10", "held_out", "budget_of", "choose_direct", "outcome",
    "ceiling_spearman", "normal_cdf", "BudgetTally", "budget_key", "write_json", "finite_or_none",
    "seed_spread",
]

logger = logging.getLogger(__name__)


def acc10(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of predictions within +/-10% of the measurement."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    return float(np.mean(np.abs(pred - true) <= 0.1 * np.abs(true)))


def held_out(filled_rows: np.ndarray, sampled: np.ndarray) -> np.ndarray:
    """The filled rows of a target that were not among its samples (scored rows)."""
    return np.setdiff1d(filled_rows, sampled, assume_unique=False)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorized (Abramowitz-Stegun 7.1.26 erf, error < 2e-7)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                       + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def budget_of(true_filled: np.ndarray, q: float) -> float:
    """Budget B: the q-quantile (numpy's linear interpolation) of the filled latencies."""
    return float(np.quantile(np.asarray(true_filled, float), q))


def choose_direct(pred: np.ndarray, objective: np.ndarray, rows: np.ndarray,
                  budget: float) -> int:
    """Best objective among `rows` predicted within budget, else the fastest predicted row.

    `pred` and `objective` are indexed by table row. Rows without an objective are never
    chosen for their objective."""
    pred_rows, obj_rows = pred[rows], objective[rows]
    feasible = (pred_rows <= budget) & ~np.isnan(obj_rows)
    if not feasible.any():
        return int(rows[np.argmin(pred_rows)])
    candidates = np.flatnonzero(feasible)
    return int(rows[candidates[np.argmax(obj_rows[candidates])]])


def outcome(chosen: int, true: np.ndarray, objective: np.ndarray, rows: np.ndarray,
            budget: float) -> tuple[bool, float | None]:
    """(met the budget, regret in objective points or None when it did not)."""
    if not true[chosen] <= budget:
        return False, None
    feasible = rows[(true[rows] <= budget) & ~np.isnan(objective[rows])]
    best = float(np.max(objective[feasible]))
    return True, best - float(objective[chosen])


def ceiling_spearman(fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                     X: np.ndarray, y: np.ndarray) -> float:
    """The predictor fitted on every filled row of the target and scored on the same rows."""
    return spearman(fit_predict(X, y, X), y)


def budget_key(q: float) -> str:
    """JSON key of a budget quantile: 0.1 -> "0.1", 0.25 -> "0.25"."""
    return f"{q:g}"


def seed_spread(per_seed: list[float]) -> float:
    """Standard deviation over seeds (0 for one seed)."""
    return float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class BudgetTally:
    """Collects choices per (target, budget) over seeds; summarizes them as the protocol says."""

    def __init__(self) -> None:
        self._met: dict[tuple[str, str], list[bool]] = defaultdict(list)
        self._regret: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._near: dict[tuple[str, str], list[bool]] = defaultdict(list)

    def add(self, target: str, q: float, met: bool, regret: float | None,
            near: bool = False) -> None:
        """One choice. `near`: a violation within the tolerance of `near_violation_rate`."""
        key = (target, budget_key(q))
        self._met[key].append(bool(met))
        self._near[key].append(bool(not met and near))
        if met and regret is not None:
            self._regret[key].append(float(regret))

    def _keys(self, target: str | None = None) -> list[tuple[str, str]]:
        return [k for k in self._met if target is None or k[0] == target]

    def regret(self, target: str) -> dict[str, float | None]:
        """Seed-average regret over the choices that met the budget, per budget (None if none)."""
        return {q: (float(np.mean(self._regret[(t, q)])) if self._regret[(t, q)] else None)
                for t, q in self._keys(target)}

    def violation_rate(self, target: str) -> dict[str, float]:
        return {q: 1.0 - float(np.mean(self._met[(t, q)])) for t, q in self._keys(target)}

    def median_regret(self) -> float | None:
        values = [float(np.mean(v)) for v in (self._regret[k] for k in self._keys()) if v]
        return float(np.median(values)) if values else None

    def overall_violation_rate(self) -> float | None:
        choices = [m for k in self._keys() for m in self._met[k]]
        return 1.0 - float(np.mean(choices)) if choices else None

    def near_violation_rate(self) -> float | None:
        """Share of all choices that violated the budget by no more than the `near` tolerance."""
        choices = [m for k in self._keys() for m in self._near[k]]
        return float(np.mean(choices)) if choices else None


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
