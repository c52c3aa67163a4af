"""`fleetc bench proxy`: reuse a proxy device's predictor on targets measured K (+V) times.

For each target column and seed: pick K rows to measure (fixed, device-independent rule or
random with the seed), fit the transfer (toolchain.predict.transfer) or the AdaProxy reference,
score Spearman / acc10 on the target's other filled rows, then for every budget quantile choose
one design, directly (V = 0) or after measuring up to V candidates of its own short list.
A method reads the target only through `TargetAccess` (at most K + V cells).

Design features are derived from the encoding columns alone (no column name is assumed):
columns are grouped by name without trailing digits (`e0..e5` -> `e`, `ks0..ks19` -> `ks`);
a group with a small integer alphabet gives per-value counts, a group that looks like a
NAS-Bench-201 cell (6 edges, 5 ops coded 0..4, 0 = none) also gives its on-path op counts.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

from toolchain.bench.scores import (
    BudgetTally,
    acc10,
    budget_key,
    budget_of,
    choose_direct,
    finite_or_none,
    held_out,
    normal_cdf,
    outcome,
    seed_spread,
    spearman,
)
from toolchain.bench.table import Table, TargetAccess
from toolchain.errors import BadInputError
from toolchain.predict.conditioned import CELL_OPS, cell_reach, is_cell
from toolchain.predict.transfer import (
    Transfer,
    fit_proxy_predictor,
    fit_transfer,
    fixed_selection,
    random_selection,
    ridge_path,
)

__all__ = [
    "ProxyOptions", "run_proxy", "design_features", "cell_features", "reference_features",
    "fit_reference", "pareto_rows", "METHODS", "SELECTIONS", "TransferFeatures",
    "transfer_features",
]

logger = logging.getLogger(__name__)

METHODS = ("transfer", "reference")
SELECTIONS = ("fixed", "random")
NEAR = 0.05          # a violation by at most 5% of the budget counts as "near"
MAX_ALPHABET = 16    # a column group with at most this many integer codes is categorical


@dataclass(frozen=True)
class ProxyOptions:
    proxy: str
    targets: tuple[str, ...]
    samples: int
    verify: int = 0
    objective: str | None = None
    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    seeds: int = 5
    method: str = "transfer"
    selection: str = "fixed"


# ---------------------------------------------------------------- design features



def _groups(names: tuple[str, ...]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        groups.setdefault(re.sub(r"\d+$", "", name), []).append(j)
    return groups


def cell_features(codes: np.ndarray) -> np.ndarray:
    """The reference's counts: per op other than none, edges on a live input-output path, and
    edges whose source is reachable from the input (4 + 4 columns)."""
    codes = codes.astype(int)
    src_ok, dst_ok = cell_reach(codes)
    on_path = [((codes == op) & src_ok & dst_ok).sum(axis=1) for op in range(1, CELL_OPS)]
    reached = [((codes == op) & src_ok).sum(axis=1) for op in range(1, CELL_OPS)]
    return np.column_stack(on_path + reached).astype(float)


def reference_features(table: Table) -> np.ndarray:
    """The issue's reference encoding: for a NAS-Bench-201 cell, 30 one-hot (edge x op) + the
    4 + 4 path counts + a constant (39); for any other encoding, one-hot per categorical
    column (raw value for the others) + a constant."""
    codes = table.encoding_matrix()
    if is_cell(codes):
        onehot = (codes[:, :, None] == np.arange(CELL_OPS)).reshape(len(codes), -1)
        return np.column_stack([onehot, cell_features(codes), np.ones(len(codes))]).astype(float)
    cols = []
    for j in range(codes.shape[1]):
        values = np.unique(codes[:, j][np.isfinite(codes[:, j])])
        if len(values) <= MAX_ALPHABET:
            cols += [(codes[:, j] == v).astype(float) for v in values]
        else:
            cols.append(np.nan_to_num(codes[:, j]))
    cols.append(np.ones(len(codes)))
    return np.column_stack(cols)


def design_features(table: Table) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Compact features for the adaptation and their blocks (the adaptation tries each block
    alone and all together): value counts per column group; for a cell group also its on-path
    and its reachable op counts; raw values for a group that is not categorical."""
    codes = table.encoding_matrix()
    blocks: list[np.ndarray] = []
    for members in _groups(table.encoding).values():
        group = codes[:, members]
        values = np.unique(group[np.isfinite(group)])
        if len(values) <= MAX_ALPHABET and np.all(values == np.round(values)):
            blocks.append(np.column_stack([(group == v).sum(axis=1) for v in values[1:]]))
            if is_cell(group):
                cell = cell_features(group)
                half = cell.shape[1] // 2
                blocks += [cell[:, :half], cell[:, half:]]
        else:
            blocks.append(np.nan_to_num(group))
    blocks = [b.astype(float) for b in blocks if b.shape[1]]
    if not blocks:
        return np.zeros((table.n_rows, 0)), []
    ends = np.cumsum([b.shape[1] for b in blocks])
    index = [tuple(range(e - b.shape[1], e)) for b, e in zip(blocks, ends, strict=True)]
    return np.column_stack(blocks), index


def _one_hot(table: Table) -> np.ndarray:
    """Indicator columns of every categorical encoding column (all its values)."""
    codes = table.encoding_matrix()
    cols = []
    for j in range(codes.shape[1]):
        values = np.unique(codes[:, j][np.isfinite(codes[:, j])])
        if len(values) <= MAX_ALPHABET and np.all(values == np.round(values)):
            cols += [codes[:, j] == v for v in values]
    return np.column_stack(cols).astype(float) if cols else np.zeros((table.n_rows, 0))


@dataclass(frozen=True)
class TransferFeatures:
    """The proxy's predictor and the features the adaptation may correct.

    `proxy_pred`: the proxy predictor (latency linear in the one-hot encoding + the design
    features, fitted on every proxy row) for every row. `features`: the compact design
    features the adaptation corrects; `blocks`: their groups (tried each alone, and all).
    Corrections on the proxy predictor's own per-feature contributions (AdaProxy's
    w_t = w_p * (a + b), summed per op and per column) were tried as further blocks: they
    lowered the mean Spearman on NAS-Bench-201 and FBNet (more candidates, noisier choice)."""

    proxy_pred: np.ndarray = field(repr=False)
    features: np.ndarray = field(repr=False)
    blocks: list[tuple[int, ...]]
    proxy_r2: float


def transfer_features(table: Table, proxy: np.ndarray) -> TransferFeatures:
    design, blocks = design_features(table)
    onehot = _one_hot(table)
    inputs = np.column_stack([onehot, design])
    model = fit_proxy_predictor(inputs, proxy)
    return TransferFeatures(model.predict(inputs), design, blocks, model.r2)


# ---------------------------------------------------------------- the reference (AdaProxy)

REFERENCE_LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Reference:
    """Target weights w_t = w_p * (a + b) with an intercept c (linear latency model)."""

    proxy_weights: np.ndarray = field(repr=False)
    a: float
    b: np.ndarray = field(repr=False)
    c: float
    lam: float
    sigma: float    # leave-one-out residual std of log latency

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ (self.proxy_weights * (self.a + self.b)) + self.c


def fit_proxy_weights(X: np.ndarray, proxy: np.ndarray) -> np.ndarray:
    """Least squares of proxy latency on the reference features over every filled row."""
    rows = np.isfinite(proxy) & np.all(np.isfinite(X), axis=1)
    return np.linalg.lstsq(X[rows], proxy[rows], rcond=None)[0]


def fit_reference(X: np.ndarray, w_p: np.ndarray, y: np.ndarray) -> Reference:
    """Minimize |y - (a Xw_p + (X*w_p) b + c)|^2 + lambda |b|^2 mean(y)^2; lambda by LOO."""
    Xw = X * w_p
    # a multiplies the proxy's prediction, c is the intercept; only b is penalized
    X0 = np.column_stack([Xw.sum(axis=1), np.ones(len(y))])
    penalties = np.array(REFERENCE_LAMBDAS) * float(np.mean(y)) ** 2
    W, loo_all, _ = ridge_path(X0, Xw, y, penalties)
    best = int(np.argmin(np.mean(loo_all ** 2, axis=1)))
    lam, loo = REFERENCE_LAMBDAS[best], loo_all[best]
    theta = np.r_[W[best, 0], W[best, 2:], W[best, 1]]
    log_res = np.log(y) - np.log(np.maximum(y - loo, 1e-9 * np.max(y)))
    return Reference(w_p, float(theta[0]), theta[1:-1], float(theta[-1]), lam,
                     float(np.sqrt(np.mean(log_res ** 2))))


# ---------------------------------------------------------------- one target, one seed

@dataclass
class _Model:
    """What the choosing code needs from either method: predictions and their log spread."""

    pred: np.ndarray          # predicted latency for every table row
    sigma: float
    path: str


class _Context:
    """Everything a method may read that does not depend on the target."""

    def __init__(self, table: Table, opts: ProxyOptions):
        self.opts = opts
        self.proxy = table.column(opts.proxy)
        self.design, _ = design_features(table)
        self.objective = table.column(opts.objective) if opts.objective else None
        if opts.method == "reference":
            self.ref_X = reference_features(table)
            self.ref_w = fit_proxy_weights(self.ref_X, self.proxy)
        usable = np.isfinite(self.proxy) & (self.proxy > 0)
        usable &= np.all(np.isfinite(self.design), axis=1)
        self.usable = usable
        # the proxy's predictor (fitted on every proxy row) is what the transfer calibrates
        tf = transfer_features(table, self.proxy)
        self.proxy_pred, self.features, self.blocks = tf.proxy_pred, tf.features, tf.blocks
        self.pareto = pareto_rows(self.proxy, self.objective, usable) \
            if self.objective is not None else np.array([], dtype=np.int64)

    def fit(self, rows: np.ndarray, values: np.ndarray) -> _Model:
        if self.opts.method == "reference":
            ref = fit_reference(self.ref_X[rows], self.ref_w, values)
            return _Model(ref.predict(self.ref_X), ref.sigma, "adapt")
        tr = self.transfer(rows, values)
        return _Model(tr.predict(self.proxy_pred, self.features, self.proxy), tr.sigma, tr.path)

    def transfer(self, rows: np.ndarray, values: np.ndarray) -> Transfer:
        return fit_transfer(self.proxy_pred[rows], self.features[rows], values, self.blocks,
                            measured=self.proxy[rows])

    def select(self, rows: np.ndarray, seed: int) -> np.ndarray:
        k = self.opts.samples
        if self.opts.selection == "random":
            return random_selection(rows, k, seed)
        return fixed_selection(rows, self.proxy, self.design, k)


def pareto_rows(latency: np.ndarray, objective: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Rows not dominated in (lower latency, higher objective): the proxy's optimum for every
    budget at once."""
    rows = np.flatnonzero(usable & np.isfinite(objective))
    order = rows[np.lexsort((-objective[rows], latency[rows]))]
    best = np.maximum.accumulate(objective[order])
    keep = np.r_[True, objective[order][1:] > best[:-1]]
    return np.sort(order[keep])


def _verified_choice(ctx: _Context, access: TargetAccess, model: _Model, rows: np.ndarray,
                     budget: float, verify: int) -> int:
    """Measure up to `verify` candidates, each the best expected improvement over the best
    design already measured within budget; refit after every measurement. Returns the best
    measured design within budget, else the fastest predicted one."""
    objective = ctx.objective
    stop = access.measurements + verify
    while access.measurements < stop:
        seen, values = access.measured()
        ok = seen[values <= budget]
        best = float(np.max(objective[ok])) if len(ok) else -math.inf
        gain = objective[rows] - (best if math.isfinite(best) else np.nanmin(objective[rows]))
        fresh = np.ones(len(rows), bool)
        fresh[np.isin(rows, seen)] = False
        live = fresh & (gain > 0) & np.isfinite(gain)
        if not live.any():
            break
        z = (math.log(budget) - np.log(np.maximum(model.pred[rows[live]], 1e-12))) \
            / max(model.sigma, 1e-3)
        score = normal_cdf(z) * gain[live]
        access.measure(rows[live][int(np.argmax(score))])
        seen, values = access.measured()
        model = ctx.fit(seen, values)
    seen, values = access.measured()
    ok = seen[(values <= budget) & np.isin(seen, rows)]
    if len(ok):
        return int(ok[np.argmax(objective[ok])])
    return int(rows[np.argmin(model.pred[rows])])


@dataclass
class _TargetResult:
    spearman: list[float] = field(default_factory=list)
    acc10: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    measurements: int = 0


def _run_target(ctx: _Context, table: Table, target: str, tallies: dict[str, BudgetTally],
                result: _TargetResult) -> None:
    opts = ctx.opts
    true = table.column(target)
    for seed in range(opts.seeds):
        access = TargetAccess(target, true, opts.samples + opts.verify)
        rows = access.rows[ctx.usable[access.rows]]
        sampled = ctx.select(rows, seed)
        values = access.measure(sampled)
        model = ctx.fit(sampled, values)
        scored = held_out(rows, sampled)
        result.spearman.append(spearman(model.pred[scored], true[scored]))
        result.acc10.append(acc10(model.pred[scored], true[scored]))
        result.paths.append(model.path)
        if ctx.objective is not None:
            _choose_all(ctx, target, true, rows, access, model, tallies)
        result.measurements = max(result.measurements, access.measurements)


def _choose(ctx: _Context, access: TargetAccess, model: _Model, candidates: np.ndarray,
            budgets: list[float]) -> list[int]:
    """One choice per budget. The V verification cells are shared by all budgets of a target
    (the protocol allows K + V cells per target): each budget gets an equal share of what is
    left, and what earlier budgets measured is known to later ones."""
    chosen = []
    for i, budget in enumerate(budgets):
        share = (access.remaining) // (len(budgets) - i)
        if share > 0:
            chosen.append(_verified_choice(ctx, access, model, candidates, budget, share))
        else:
            chosen.append(choose_direct(model.pred, ctx.objective, candidates, budget))
    return chosen


def _choose_all(ctx: _Context, target: str, true: np.ndarray, rows: np.ndarray,
                access: TargetAccess, model: _Model, tallies: dict[str, BudgetTally]) -> None:
    """Every budget: the main choice (direct or verified), the direct one, Pareto reuse."""
    opts, objective = ctx.opts, ctx.objective
    rows = rows[np.isfinite(objective[rows])]
    pareto = np.intersect1d(ctx.pareto, rows)
    budgets = [budget_of(true[np.isfinite(true)], q) for q in opts.budgets]
    sampled, _ = access.measured()

    def tally(name: str, q: float, budget: float, chosen: int) -> None:
        met, regret = outcome(chosen, true, objective, rows, budget)
        tallies[name].add(target, q, met, regret, near=bool(true[chosen] <= budget * (1 + NEAR)))

    for q, budget in zip(opts.budgets, budgets, strict=True):
        tally("direct", q, budget, choose_direct(model.pred, objective, rows, budget))
        feasible = pareto[true[pareto] <= budget]
        if len(feasible):  # the best the proxy's Pareto set holds for this target
            tally("pareto_oracle", q, budget, int(feasible[np.argmax(objective[feasible])]))
    for q, budget, chosen in zip(opts.budgets, budgets, _choose(ctx, access, model, rows,
                                                                budgets), strict=True):
        tally("main", q, budget, chosen)
    if len(pareto):
        pareto_access = TargetAccess(target, true, access.limit)
        pareto_access.measure(sampled[:opts.samples])
        for q, budget, chosen in zip(opts.budgets, budgets,
                                     _choose(ctx, pareto_access, model, pareto, budgets),
                                     strict=True):
            tally("pareto", q, budget, chosen)


# ---------------------------------------------------------------- the whole bench

def _check(table: Table, opts: ProxyOptions) -> None:
    table.check([opts.proxy], role="latency")
    table.check(opts.targets, role="latency")
    for name in (opts.proxy, *opts.targets):   # the harness checks the data, not the method
        values = table.column(name)
        if np.any(values[np.isfinite(values)] <= 0):
            raise BadInputError(f"column {name!r} has latencies <= 0")
    if opts.objective:
        table.check([opts.objective], role="objective")
    if opts.proxy in opts.targets:
        raise BadInputError(f"the proxy {opts.proxy!r} is also a target")
    if opts.samples < 3:
        raise BadInputError("--samples must be at least 3 (the calibration has 2 parameters)")
    if opts.verify < 0 or opts.seeds < 1:
        raise BadInputError("--verify must be >= 0 and --seeds >= 1")
    if opts.verify and not opts.objective:
        raise BadInputError("--verify needs --objective (verification is for budget choices)")
    if any(not 0 < q < 1 for q in opts.budgets):
        raise BadInputError("--budgets are quantiles strictly between 0 and 1")
    if opts.method not in METHODS or opts.selection not in SELECTIONS:
        raise BadInputError(f"--method is one of {METHODS}, --selection one of {SELECTIONS}")


def _budget_summary(tally: BudgetTally, targets: tuple[str, ...]) -> dict:
    return {"median_regret": finite_or_none(tally.median_regret()),
            "violation_rate": finite_or_none(tally.overall_violation_rate()),
            "near_violation_rate": finite_or_none(tally.near_violation_rate()),
            "regret": {t: tally.regret(t) for t in targets},
            "violation_rate_per_target": {t: tally.violation_rate(t) for t in targets}}


def run_proxy(table: Table, opts: ProxyOptions, progress=None) -> dict:
    """Run the bench; returns the protocol's JSON object (plus `direct`, `pareto`, timings)."""
    _check(table, opts)
    start = time.perf_counter()
    ctx = _Context(table, opts)
    tallies = {name: BudgetTally() for name in ("main", "direct", "pareto", "pareto_oracle")}
    proxy = table.column(opts.proxy)
    targets: dict[str, dict] = {}
    for i, target in enumerate(opts.targets):
        res = _TargetResult()
        _run_target(ctx, table, target, tallies, res)
        true = table.column(target)
        shared = np.isfinite(proxy) & np.isfinite(true)
        entry = {
            "raw_spearman": spearman(proxy[shared], true[shared]),
            "spearman": float(np.mean(res.spearman)),
            "spearman_std": seed_spread(res.spearman),
            "spearman_per_seed": [float(v) for v in res.spearman],
            "worst_seed_spearman": float(np.min(res.spearman)),
            "acc10": float(np.mean(res.acc10)),
            "path": max(set(res.paths), key=res.paths.count),
            "adapt_share": res.paths.count("adapt") / len(res.paths),
            "measurements": res.measurements,
        }
        if opts.objective:
            entry["regret"] = {k: finite_or_none(v) for k, v in tallies["main"].regret(target)
                               .items()}
            entry["violation_rate"] = tallies["main"].violation_rate(target)
        targets[target] = entry
        if progress:
            progress(f"[{i + 1}/{len(opts.targets)}] {target}: spearman {entry['spearman']:.3f} "
                     f"(raw {entry['raw_spearman']:.3f}, {entry['path']})")
    spearmans = [t["spearman"] for t in targets.values()]
    out = {
        "proxy": opts.proxy, "samples": opts.samples, "verify": opts.verify,
        "seeds": opts.seeds, "method": opts.method, "selection": opts.selection,
        "objective": opts.objective, "budgets": [budget_key(q) for q in opts.budgets],
        "targets": targets,
        "mean_spearman": float(np.mean(spearmans)),
        "mean_spearman_std": seed_spread(list(np.mean([t["spearman_per_seed"]
                                                       for t in targets.values()], axis=0))),
        "worst_spearman": float(np.min(spearmans)),
        "worst_vs_raw": float(min(t["spearman"] - t["raw_spearman"] for t in targets.values())),
    }
    if opts.objective:
        main = tallies["main"]
        out["median_regret"] = finite_or_none(main.median_regret())
        out["violation_rate"] = finite_or_none(main.overall_violation_rate())
        out["near_violation_rate"] = finite_or_none(main.near_violation_rate())
        out["direct"] = {k: v for k, v in _budget_summary(tallies["direct"], opts.targets).items()
                         if k != "regret"}
        out["pareto"] = {
            "size": int(len(ctx.pareto)),
            "measurements_per_target": opts.samples + opts.verify,
            **{k: v for k, v in _budget_summary(tallies["pareto"], opts.targets).items()
               if k in ("median_regret", "violation_rate", "near_violation_rate")},
            "oracle_median_regret": finite_or_none(tallies["pareto_oracle"].median_regret()),
        }
    out["seconds"] = time.perf_counter() - start
    return out
