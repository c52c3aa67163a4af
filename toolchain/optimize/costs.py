"""The optimizer's input: per decision (a kernel, a block, the input size) a few options with costs.

Every solver in this package reads a `CostTable` and returns `Solution`s; nothing here knows
about ONNX, targets or predictors, so the solvers can be tested on random tables and reused by
the fleet command with tables built from any predictor.

Additive model: a plan's predicted latency, energy, model bytes and accuracy drop are the
table's `base` costs plus the chosen option's costs of every decision. Peak activation memory
is the largest `activation_bytes` of any chosen option (a max, not a sum): a limit on it is
applied exactly by removing the options above it before solving (`CostTable.restrict`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

from toolchain.errors import BadInputError, InfeasibleError

__all__ = [
    "Option", "Decision", "CostTable", "Budget", "Metrics", "Solution", "metrics_of",
    "check_feasible", "best_reachable",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    """One legal choice for a decision, with its predicted costs (deltas are allowed)."""

    label: str                      # e.g. "int8", "fp32/w0.75", "skip"
    latency_ms: float
    drop: float = 0.0               # predicted accuracy drop, points (percent)
    energy_mj: float = 0.0
    model_bytes: float = 0.0
    activation_bytes: float = 0.0   # peak activation memory while this option runs
    payload: object = field(default=None, compare=False)  # what the caller maps back (a Choice)


@dataclass(frozen=True)
class Decision:
    """One kernel (or block, or input size): exactly one of `options` is chosen; 0 = original."""

    name: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Metrics:
    latency_ms: float
    drop: float
    energy_mj: float
    model_bytes: float
    peak_activation_bytes: float


@dataclass(frozen=True)
class Budget:
    """Limits on a plan; None = unconstrained."""

    latency_ms: float | None = None
    energy_mj: float | None = None
    model_bytes: float | None = None
    peak_activation_bytes: float | None = None
    max_drop: float | None = None

    def violation(self, m: Metrics) -> float:
        """Sum of relative excesses over the limits (0 = feasible); guides the searches."""
        out = 0.0
        for limit, value in ((self.latency_ms, m.latency_ms), (self.energy_mj, m.energy_mj),
                             (self.model_bytes, m.model_bytes),
                             (self.peak_activation_bytes, m.peak_activation_bytes),
                             (self.max_drop, m.drop)):
            if limit is not None and value > limit:
                out += (value - limit) / max(abs(limit), 1e-9)
        return out

    def allows(self, m: Metrics, rel_tol: float = 1e-9) -> bool:
        return self.violation(m) <= rel_tol


@dataclass(frozen=True)
class CostTable:
    decisions: tuple[Decision, ...]
    base: Metrics = Metrics(0.0, 0.0, 0.0, 0.0, 0.0)  # costs no decision changes

    def __post_init__(self) -> None:
        names = [d.name for d in self.decisions]
        if len(set(names)) != len(names):
            raise BadInputError("cost table: duplicate decision names")
        for d in self.decisions:
            if not d.options:
                raise BadInputError(f"cost table: decision {d.name!r} has no options")
            for o in d.options:
                if not all(math.isfinite(v) for v in (o.latency_ms, o.drop, o.energy_mj,
                                                       o.model_bytes, o.activation_bytes)):
                    raise BadInputError(f"cost table: non-finite cost in {d.name!r}/{o.label}")

    @property
    def size(self) -> int:
        """Number of plans in the space."""
        return math.prod(len(d.options) for d in self.decisions)

    def restrict(self, peak_activation_bytes: float | None) -> tuple[CostTable, list[list[int]]]:
        """Drop options above the activation limit; returns the table and, per decision, the
        original index of each kept option. Raises InfeasibleError if a decision has none left."""
        if peak_activation_bytes is None:
            return self, [list(range(len(d.options))) for d in self.decisions]
        kept, index = [], []
        for d in self.decisions:
            idx = [i for i, o in enumerate(d.options)
                   if o.activation_bytes <= peak_activation_bytes]
            if not idx:
                least = min(o.activation_bytes for o in d.options)
                raise InfeasibleError(
                    f"peak activation limit {peak_activation_bytes:.0f} B cannot be met: kernel "
                    f"{d.name} needs at least {least:.0f} B")
            kept.append(Decision(d.name, tuple(d.options[i] for i in idx)))
            index.append(idx)
        return replace(self, decisions=tuple(kept)), index


@dataclass(frozen=True)
class Solution:
    """A plan as one option index per decision, its predicted metrics and who found it."""

    picks: tuple[int, ...]
    metrics: Metrics
    solver: str

    def labels(self, table: CostTable) -> dict[str, str]:
        return {d.name: d.options[i].label for d, i in zip(table.decisions, self.picks,
                                                            strict=True)}


def metrics_of(table: CostTable, picks: tuple[int, ...] | list[int]) -> Metrics:
    """Additive metrics of a plan (peak activation = max)."""
    b = table.base
    lat, drop, en, mb, act = b.latency_ms, b.drop, b.energy_mj, b.model_bytes, \
        b.peak_activation_bytes
    for d, i in zip(table.decisions, picks, strict=True):
        o = d.options[i]
        lat += o.latency_ms
        drop += o.drop
        en += o.energy_mj
        mb += o.model_bytes
        act = max(act, o.activation_bytes)
    return Metrics(lat, drop, en, mb, act)


def best_reachable(table: CostTable) -> Metrics:
    """Per metric, the least value any plan reaches (each minimized on its own)."""
    b = table.base
    return Metrics(
        b.latency_ms + sum(min(o.latency_ms for o in d.options) for d in table.decisions),
        b.drop + sum(min(o.drop for o in d.options) for d in table.decisions),
        b.energy_mj + sum(min(o.energy_mj for o in d.options) for d in table.decisions),
        b.model_bytes + sum(min(o.model_bytes for o in d.options) for d in table.decisions),
        max([b.peak_activation_bytes] + [min(o.activation_bytes for o in d.options)
                                         for d in table.decisions]),
    )


def check_feasible(table: CostTable, budget: Budget) -> None:
    """Raise InfeasibleError naming the best reachable value when even the cheapest plan for a
    resource misses its budget (checked per resource, so the message names the one missed)."""
    least = best_reachable(table)
    for name, unit, limit, value in (
            ("latency", "ms", budget.latency_ms, least.latency_ms),
            ("energy", "mJ", budget.energy_mj, least.energy_mj),
            ("model size", "bytes", budget.model_bytes, least.model_bytes),
            ("peak activation memory", "bytes", budget.peak_activation_bytes,
             least.peak_activation_bytes),
            ("accuracy drop", "points", budget.max_drop, least.drop)):
        if limit is not None and value > limit * (1 + 1e-9):
            raise InfeasibleError(
                f"{name} budget {limit:g} {unit} cannot be met: the best reachable "
                f"(predicted) is {value:.4g} {unit}")
