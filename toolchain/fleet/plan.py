"""Planning a whole fleet at once: a fleet-wide candidate set, a vectorized pick per device,
accuracy measured once per distinct plan.

Every kernel-level predictor is linear in its weights (toolchain/predict/kernel.py): a plan's
predicted latency is `const + x(plan) . w`, where `x(plan)` sums the features of the plan's
units per (kernel kind, feature) and `w` holds the predictor's weights. `x(plan)` depends on
the model and the plan only, so it is computed once per plan for the whole fleet
(`FeatureCache`); each device - profiled, few-shot (a calibrated proxy predictor) or
fingerprint (a mix of the profiled predictors) - is then just its weight vector `w`. The
prices equal `predict_plan`'s (tests/fleet/test_plan.py checks it).

1. Candidates, once per fleet and precision set: for every representative predictor (the
   targets' and proxies' own predictors and the profiled packages, plus `EXTREMES` device
   predictors that rank plans most unlike them) and every input resolution, the exact Pareto
   front of the additive cost table (`toolchain.optimize.pareto`; at most `FRONT_POINTS`
   points of it, evenly spaced), and the uniform baselines.
2. Pick, all devices at once: the candidates' latencies for every device are one matrix
   product; each device takes the candidate of least accuracy drop (measured where measured,
   else predicted) that meets its budgets by its own predictor (least latency under an
   accuracy-only budget); ties go to less latency.
3. Accuracy, once per distinct plan: the picked plans not measured yet are rewritten and
   scored on the calibration data (kept in the cache for later runs:
   `toolchain.fleet.cache.plan_score`); a plan whose measured drop breaks a device's limit is out
   for that device, which takes its next candidate; repeated until every pick is measured.

A device's plan depends on the candidate set, so on which predictors the fleet holds: the
device cache key includes `candidates_key` (toolchain/fleet/cache.py).
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from toolchain.compile.tables import Context, PlanCosts, build_table, plan_metrics, plan_of
from toolchain.errors import FleetcError, UnsupportedKernelError
from toolchain.optimize.pareto import pareto_front
from toolchain.space import Plan

__all__ = ["FeatureCache", "DevicePricing", "DevicePlan", "FleetPlans", "plan_fleet",
           "linear_cost", "EXTREMES", "FRONT_CELLS"]

logger = logging.getLogger(__name__)

EXTREMES = 4          # device predictors added to the representatives (farthest-point picks)
FRONT_CELLS = 400     # latency cells of each Pareto front (toolchain/optimize/pareto.py)
FRONT_POINTS = 32     # points kept per front and resolution (each is priced for every device)
Progress = Callable[[str], None]


class FeatureCache:
    """x(plan) per (kind, feature) for one analyzed model, memoized (module doc)."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self._graphs: dict[tuple, object] = {}
        self._memo: dict[str, dict[tuple[str, str], float]] = {}

    def vector(self, plan: Plan) -> dict[tuple[str, str], float]:
        from toolchain.compile.pricing import _split
        from toolchain.predict.kernel import basis_of, context_of, features
        from toolchain.predict.units import structural_graph, units_under_plan

        key = replace(plan, target=None).to_json()
        if key not in self._memo:
            skey, _ = _split(plan)
            if skey not in self._graphs:
                self._graphs[skey] = self.graph if skey == ((), (), ()) else \
                    structural_graph(self.graph, plan)
            rest = replace(plan, input_shape={}, skip_blocks=[],
                           kernels={k: replace(c, kernel_size=None)
                                    for k, c in plan.kernels.items()})
            units = units_under_plan(self._graphs[skey], rest)   # as predict_plan
            context = context_of(units)
            x: dict[tuple[str, str], float] = {}
            for u in units:
                f = features(u, context)
                for name in basis_of(u.cls):
                    x[(u.kind, name)] = x.get((u.kind, name), 0.0) + f[name]
            self._memo[key] = x
        return self._memo[key]


def _latency(x: dict, predictor) -> float:
    total = float(predictor.model.get("model", 0.0))
    for (kind, name), value in x.items():
        w = predictor.weights.get(kind)
        if w is None:
            raise UnsupportedKernelError(f"predictor {predictor.name} has no model for kernel "
                                         f"kind {kind}")
        total += w.get(name, 0.0) * value
    return total


def linear_cost(cache: FeatureCache, predictor, power_w: float | None = None):
    """A plan-cost function (compile/tables.py) pricing through the feature cache."""
    def cost(plan: Plan) -> PlanCosts:
        lat = _latency(cache.vector(plan), predictor)
        return PlanCosts(lat, lat * power_w if power_w else 0.0)
    return cost


@dataclass
class DevicePricing:
    """How one device is priced: its predictor (or why it has none) and what to say about it."""

    name: str
    target: object                       # toolchain.target.Target
    budgets: dict[str, float]
    predictor: object | None             # KernelPredictor
    predictor_name: str | None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class DevicePlan:
    name: str
    plan: Plan | None
    candidate: int | None
    predicted: dict                      # latency_ms, energy_mj, accuracy_drop, model_bytes
    measured_drop: float | None
    measured_accuracy: float | None
    error: str | None = None


@dataclass
class FleetPlans:
    candidates: list[Plan]
    drops: np.ndarray                    # predicted drop per candidate
    measured: dict[int, tuple[float, float]]   # candidate -> (measured drop, accuracy)
    devices: dict[str, DevicePlan]
    seconds: dict[str, float]


def _uniform(ctx: Context) -> list[Plan]:
    from toolchain.compile.driver import uniform_plans

    return [plan for _, plan in uniform_plans(ctx)]


def _weights(predictors: list, columns: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(weights D x F, model constants D)."""
    W = np.zeros((len(predictors), len(columns)))
    for d, p in enumerate(predictors):
        for j, (kind, name) in enumerate(columns):
            W[d, j] = p.weights.get(kind, {}).get(name, 0.0)
    const = np.array([float(p.model.get("model", 0.0)) for p in predictors])
    return W, const


def _extremes(predictors: list, X: np.ndarray, columns, count: int) -> list[int]:
    """Indices of `count` predictors whose relative latencies over the plans X are farthest
    apart (farthest-point sampling on log latency, centred per device)."""
    if not predictors or count <= 0:
        return []
    W, const = _weights(predictors, columns)
    lat = X @ W.T + const
    lat = np.log(np.maximum(lat, 1e-9))
    lat -= lat.mean(axis=0)
    chosen = [int(np.argmax(np.abs(lat).sum(axis=0)))]
    dist = np.linalg.norm(lat - lat[:, [chosen[0]]], axis=0)
    while len(chosen) < min(count, len(predictors)):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(lat - lat[:, [nxt]], axis=0))
    return chosen


def candidates_for(prep, cache: FeatureCache, precisions: tuple[str, ...], representatives: list,
                   device_predictors: list, say: Progress) -> list[Plan]:
    """The fleet-wide candidate set for one precision set (module doc, step 1)."""
    sens = prep.sensitivity(precisions)
    plans: dict[str, Plan] = {}

    def fronts(predictor) -> None:
        ctx = Context(prep.kernels, prep.space, precisions, linear_cost(cache, predictor),
                      sens, prep.input_shape)
        for r in ctx.resolutions():
            try:
                table = build_table(ctx, r)
            except UnsupportedKernelError:
                continue
            front = pareto_front(table, cells=FRONT_CELLS)
            if len(front) > FRONT_POINTS:   # evenly spaced along the front, both ends kept
                keep = np.unique(np.linspace(0, len(front) - 1, FRONT_POINTS).round())
                front = [front[int(i)] for i in keep]
            for sol in front:
                plan = plan_of(ctx, table, r, sol.picks)
                plans.setdefault(plan.to_json(), plan)

    for i, p in enumerate(representatives):
        say(f"candidate plans: Pareto fronts of predictor {p.name} "
            f"({i + 1}/{len(representatives)})")
        fronts(p)
    ctx0 = Context(prep.kernels, prep.space, precisions, None, sens, prep.input_shape)
    for plan in _uniform(ctx0):
        plans.setdefault(plan.to_json(), plan)
    known = {_weights_key(p) for p in representatives}
    device_predictors = [p for p in device_predictors if _weights_key(p) not in known]
    if device_predictors and EXTREMES:
        base = list(plans.values())
        X, columns, _ = _matrix(cache, base)
        picks = _extremes(device_predictors, X, columns, EXTREMES)
        for i in picks:
            say(f"candidate plans: Pareto fronts of device predictor "
                f"{device_predictors[i].name} (one of {EXTREMES} that rank plans most apart)")
            fronts(device_predictors[i])
    return list(plans.values())


def _matrix(cache: FeatureCache, plans: list[Plan]):
    """(X: plans x columns, columns, kinds used per plan as a plans x kinds bool matrix)."""
    vectors = [cache.vector(p) for p in plans]
    columns = sorted({c for v in vectors for c in v})
    index = {c: j for j, c in enumerate(columns)}
    X = np.zeros((len(plans), len(columns)))
    for i, v in enumerate(vectors):
        for c, value in v.items():
            X[i, index[c]] = value
    return X, columns, index


def _unsupported(predictors: list, columns, X: np.ndarray) -> np.ndarray:
    """plans x devices: the plan has a kernel kind the device's predictor has no model for."""
    kinds = sorted({k for k, _ in columns})
    used = np.zeros((X.shape[0], len(kinds)), dtype=bool)
    for j, (kind, _) in enumerate(columns):
        used[:, kinds.index(kind)] |= X[:, j] != 0
    missing = np.array([[k not in p.weights for k in kinds] for p in predictors], dtype=bool)
    return (used.astype(np.int32) @ missing.T.astype(np.int32)) > 0


def pick(L: np.ndarray, E: np.ndarray, drops: np.ndarray, bad: np.ndarray,
         budgets: list[dict]) -> np.ndarray:
    """Per device (column), the index of its candidate (module doc, step 2); -1 = none fits."""
    C, D = L.shape
    lat = np.array([b.get("latency_ms", np.inf) for b in budgets])
    en = np.array([b.get("energy_mj", np.inf) for b in budgets])
    acc = np.array([b.get("max_accuracy_drop", np.inf) for b in budgets])
    ok = (L <= lat * (1 + 1e-9)) & (E <= en * (1 + 1e-9)) & ~bad
    ok &= drops[:, None] <= acc + 1e-9
    by_drop = np.array([("latency_ms" in b or "energy_mj" in b) for b in budgets])
    first = np.where(by_drop, drops[:, None], L)
    second = np.where(by_drop, L, drops[:, None])
    first = np.where(ok, first, np.inf)
    best = first.min(axis=0)
    tie = first <= best + 1e-12
    second = np.where(tie & ok, second, np.inf)
    out = np.argmin(second, axis=0)
    return np.where(np.isfinite(best), out, -1)


def plan_fleet(prep, devices: list[DevicePricing], say: Progress,
               representatives: list | None = None, planner: str | None = None) -> FleetPlans:
    """Plans for every device (module doc). Devices with an error keep it and get no plan.
    `planner` ("exact" or "amortized", toolchain/fleet/planner.py) adds each device's own
    plan to the candidates."""
    import time

    from toolchain.fleet.cache import plan_score

    seconds: dict[str, float] = {}
    cache = FeatureCache(prep.graph)
    out: dict[str, DevicePlan] = {}
    groups: dict[tuple[str, ...], list[DevicePricing]] = {}
    for d in devices:
        if d.error is None:
            groups.setdefault(tuple(d.target.precisions), []).append(d)
        else:
            out[d.name] = DevicePlan(d.name, None, None, {}, None, None, d.error)
    all_plans: list[Plan] = []
    all_drops: list[float] = []
    measured: dict[int, tuple[float, float]] = {}
    for precisions, members in sorted(groups.items()):
        start = time.perf_counter()
        preds = _distinct([m.predictor for m in members])
        reps = _distinct(list(representatives or [])) or preds[:1]
        plans = candidates_for(prep, cache, precisions, reps, preds, say)
        if planner:
            from toolchain.fleet.planner import device_plans

            own, secs = device_plans(prep, cache, precisions, members, planner, say, _weights)
            known = {p.to_json() for p in plans}
            plans += [p for p in own if p.to_json() not in known and not known.add(p.to_json())]
            for k, v in secs.items():
                seconds[k] = seconds.get(k, 0.0) + v
        seconds["candidates"] = seconds.get("candidates", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        sens = prep.sensitivity(precisions)
        ctx0 = Context(prep.kernels, prep.space, precisions, None, sens, prep.input_shape)
        r0 = ctx0.original
        drops = np.array([sens.plan(p, r0) for p in plans])
        X, columns, _ = _matrix(cache, plans)
        W, const = _weights([m.predictor for m in members], columns)
        L = X @ W.T + const
        power = np.array([m.target.power_w or 0.0 for m in members])
        E = L * power
        E = np.where(power > 0, E, np.inf)
        E = np.where(np.array(["energy_mj" in m.budgets for m in members]), E, 0.0)
        bad = _unsupported([m.predictor for m in members], columns, X)
        budgets = [m.budgets for m in members]
        seconds["pick"] = seconds.get("pick", 0.0) + time.perf_counter() - start
        offset = len(all_plans)
        local: dict[int, tuple[float, float]] = {}
        start = time.perf_counter()
        while True:
            eff = drops.copy()
            for c, (drop, _) in local.items():
                eff[c] = drop
            chosen = pick(L, E, eff, bad, budgets)
            todo = sorted({int(c) for c in chosen if c >= 0 and int(c) not in local})
            if not todo:
                break
            for c in todo:
                say(f"measuring the accuracy of candidate plan {offset + c} "
                    f"(picked by {int((chosen == c).sum())} device(s))")
                local[c] = plan_score(prep, plans[c])
        seconds["accuracy"] = seconds.get("accuracy", 0.0) + time.perf_counter() - start
        for i, m in enumerate(members):
            c = int(chosen[i])
            if c < 0:
                out[m.name] = DevicePlan(m.name, None, None, {}, None, None,
                                         _why_none(m, L[:, i], eff, bad[:, i], local))
                continue
            plan = replace(plans[c], target=m.target.name)
            metrics = plan_metrics(replace(ctx0, cost=lambda p, L=L[c, i], e=E[c, i]:
                                           PlanCosts(float(L), float(e))), plans[c])
            out[m.name] = DevicePlan(
                m.name, plan, offset + c,
                {"latency_ms": round(float(L[c, i]), 4),
                 "energy_mj": round(float(L[c, i] * power[i]), 4) if power[i] else None,
                 "accuracy_drop": round(float(drops[c]), 4),
                 "model_bytes": int(metrics.model_bytes),
                 "peak_activation_bytes": int(metrics.peak_activation_bytes)},
                local[c][0], local[c][1])
        all_plans += plans
        all_drops += list(drops)
        measured.update({offset + c: v for c, v in local.items()})
    return FleetPlans(all_plans, np.array(all_drops), measured, out, seconds)


def _distinct(predictors: list) -> list:
    seen, out = set(), []
    for p in predictors:
        key = _weights_key(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _weights_key(p) -> str:
    doc = repr((sorted((k, sorted(v.items())) for k, v in p.weights.items()),
                sorted(p.model.items())))
    return hashlib.sha256(doc.encode()).hexdigest()


def _why_none(m: DevicePricing, lat: np.ndarray, drops: np.ndarray, bad: np.ndarray,
              measured: dict) -> str:
    """The one-line reason no candidate fits the device (InfeasibleError's wording)."""
    limit = m.budgets.get("latency_ms")
    ok = ~bad
    if limit is not None and (not ok.any() or lat[ok].min() > limit):
        best = lat[ok].min() if ok.any() else math.inf
        return (f"latency budget {limit:g} ms cannot be met: the best reachable (predicted) is "
                f"{best:.4g} ms")
    drop = m.budgets.get("max_accuracy_drop")
    fits = ok & (lat <= (limit if limit is not None else np.inf))
    if drop is not None and fits.any():
        best = drops[fits].min()
        what = "measured" if measured else "predicted"
        return (f"accuracy-drop limit {drop:g} points cannot be met within the other budgets: "
                f"the least {what} drop reachable is {best:.3g} points")
    return "no candidate plan meets all budgets at once"


def device_error(err: Exception) -> str:
    if isinstance(err, FleetcError):
        return str(err)
    return f"internal error: {type(err).__name__}: {err}"
