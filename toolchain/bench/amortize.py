"""`fleetc bench amortize`: the amortized optimizer on devices it was not trained on.

Per seed, the device-conditioned predictor is fitted on the training columns (deterministic)
and the optimizer network is trained with that seed (toolchain.optimize.amortized). Per target
the method reads K cells: its fingerprint (the predictor's reference designs, substitutes for
those it did not measure, whose latencies are then imputed by the predictor for the network's
input). For every budget quantile q (B = q-quantile of the target's filled latencies) it
chooses one design among the target's filled rows that have an objective:

- V = 0: the network's design for (fingerprint, B), decoded and repaired with the predictor;
- V > 0: the V cells are spent jointly for all budgets. Each verification asks the
  optimizer for every budget times each factor of SHORT_LIST, refines those designs by
  hill-climbing with the predictor refitted on every cell read so far, adds their
  single-column changes (the short list), and measures the candidate of the largest expected
  gain summed over the budgets: P(latency <= B) x gain, gain = objective - best objective
  measured within B, divided by the largest such gain on the short list (so each budget
  weighs alike), P from the refitted predictor with its leave-one-out log-latency spread
  (robust: median absolute error). The choice
  per budget is the best objective among measured designs within B (fingerprint cells
  included), else the optimizer's design for 0.85 B.

Also reported: `search` - the same predictor with per-device exhaustive scoring of every
design (direct choice), and the timing of both in one batch for all test devices and budgets
(`seconds_per_device`, `search_seconds_per_device`, medians of repeated runs).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from toolchain.bench.fewshot import DeviceContext, check_devices, single_thread
from toolchain.bench.scores import (
    BudgetTally,
    budget_key,
    budget_of,
    finite_or_none,
    normal_cdf,
    outcome,
)
from toolchain.bench.table import Table, TargetAccess
from toolchain.errors import BadInputError
from toolchain.optimize.amortized import (
    AmortizedOptimizer,
    DesignSpace,
    ExhaustiveSearch,
    TrainConfig,
    refine,
    train_amortized,
)

__all__ = ["AmortizeOptions", "run_amortize", "robust_spread"]

logger = logging.getLogger(__name__)

NEAR = 0.05           # a violation by at most 5% of the budget counts as "near"
# Verification (see the module docstring). Chosen on leave-device-out splits of the training
# columns only (six splits: phones, CPUs, GPUs, mixes held out), never on test columns.
SHORT_LIST = np.geomspace(0.7, 1.05, 12)   # asked budgets of the short list, times B
MIN_SPREAD = 0.01                           # floor of the predictor's log-latency spread
FALLBACK = 0.85
TIMING_REPEATS, TIMING_ROUNDS = 5, 7


def robust_spread(errors: np.ndarray) -> float:
    """1.4826 x the median absolute log error (the sd of a normal error), at least MIN_SPREAD.
    Robust: with the fingerprint alone a left-out cell is often an extrapolation, and one
    near-zero or negative prediction would make an RMS spread so wide that every candidate
    looks feasible."""
    return max(1.4826 * float(np.median(np.abs(errors))), MIN_SPREAD)


@dataclass(frozen=True)
class AmortizeOptions:
    train: tuple[str, ...]
    targets: tuple[str, ...]
    objective: str
    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    samples: int = 10
    verify: int = 0
    seeds: int = 5
    train_config: TrainConfig = TrainConfig()


@dataclass
class _Device:
    """What the method knows about one target after reading its fingerprint."""

    name: str
    rows: np.ndarray          # filled rows with an objective (the choices that exist)
    access: TargetAccess
    fingerprint: np.ndarray   # on the predictor's reference designs (measured or imputed)
    scale: float              # mean of the measured fingerprint cells
    weights: np.ndarray       # predictor weights (ms) from the fingerprint
    allowed: np.ndarray       # mask over table rows


class _Bench:
    def __init__(self, table: Table, opts: AmortizeOptions):
        self.table, self.opts = table, opts
        self.ctx = DeviceContext(table, opts.train)
        self.objective = table.column(opts.objective)
        self.space = DesignSpace(table.encoding_matrix()[self.ctx.usable],
                                 self.ctx.features[self.ctx.usable],
                                 self.objective[self.ctx.usable])
        self.rows_used = np.flatnonzero(self.ctx.usable)   # space row -> table row
        ref = self.ctx.reference_rows
        self.train_fp = np.array([table.column(c)[ref] for c in opts.train])
        self.train_fp = self.train_fp[np.all(np.isfinite(self.train_fp), axis=1)]

    def device(self, target: str) -> _Device:
        true = self.table.column(target)
        access = TargetAccess(target, true, self.opts.samples + self.opts.verify)
        rows = access.rows[self.ctx.usable[access.rows] & (true[access.rows] > 0)]
        n_fp = min(self.opts.samples, self.ctx.predictor.n_reference)
        sampled = self.ctx.sample_rows(rows, self.opts.samples, seed=0)
        values = access.measure(sampled)
        scale = float(np.mean(values[:n_fp]))
        weights = self.ctx.adapt(sampled, values, scale)
        ref = self.ctx.reference_rows
        fingerprint = self.ctx.features[ref] @ weights
        measured = np.isin(ref, sampled)
        fingerprint[measured] = access.measure(ref[measured])
        choosable = rows[np.isfinite(self.objective[rows])]
        allowed = np.zeros(self.table.n_rows, bool)
        allowed[choosable] = True
        return _Device(target, choosable, access, fingerprint, scale, weights,
                       allowed[self.rows_used])

    def choose(self, opt: AmortizedOptimizer, dev: _Device, weights: np.ndarray,
               budget: float) -> int:
        """Table row the optimizer chooses for one budget with the given predictor weights."""
        row = opt.choose(self.space, weights[None], dev.fingerprint[None], np.array([budget]),
                         dev.allowed)[0]
        return int(self.rows_used[row])

    def proposal(self, opt: AmortizedOptimizer, dev: _Device, weights: np.ndarray,
                 budget: float) -> int:
        """The optimizer's design, refined by hill-climbing with the refitted predictor."""
        row = opt.choose(self.space, weights[None], dev.fingerprint[None], np.array([budget]),
                         dev.allowed)
        row = refine(self.space, row, weights[None], np.array([budget]), dev.allowed)[0]
        return int(self.rows_used[row])

    def short_list(self, opt: AmortizedOptimizer, dev: _Device, weights: np.ndarray,
                   budgets: np.ndarray) -> np.ndarray:
        """The optimizer's designs (refined by hill-climbing with the refitted predictor) for
        each budget times each factor of SHORT_LIST: table rows, distinct."""
        asked = np.outer(budgets, SHORT_LIST).ravel()
        n = len(asked)
        w = np.repeat(weights[None], n, axis=0)
        rows = opt.choose(self.space, w, np.repeat(dev.fingerprint[None], n, axis=0), asked,
                          dev.allowed)
        rows = refine(self.space, rows, w, asked, dev.allowed)
        rows = self.space.neighbours[np.unique(rows)].ravel()   # and their single changes
        rows = rows[rows >= 0]
        rows = rows[dev.allowed[rows]]
        return np.unique(self.rows_used[rows])

    def spread(self, seen: np.ndarray, values: np.ndarray, scale: float) -> float:
        """Spread of the predictor's log-latency error on the cells read (`robust_spread` of
        the leave-one-out errors)."""
        errors = []
        for i in range(len(seen)):
            keep = np.arange(len(seen)) != i
            w = self.ctx.adapt(seen[keep], values[keep], scale)
            errors.append(np.log(max(float(self.ctx.features[seen[i]] @ w), 1e-12) / values[i]))
        return robust_spread(np.array(errors))

    def verified(self, opt: AmortizedOptimizer, dev: _Device,
                 budgets: np.ndarray) -> list[int]:
        """Spend the target's V cells on the optimizer's short list for its budgets: each time
        the candidate of the largest expected gain summed over the budgets, P(latency <= B) x
        (objective - best objective measured within B) / (the budget's largest such gain), P
        from the refitted predictor and its spread. Choice per budget: the best measured
        design within B (fingerprint cells included), else the design for a budget well
        below B."""
        objective = self.objective
        while dev.access.remaining > 0:
            seen, values = dev.access.measured()
            weights = self.ctx.adapt(seen, values, dev.scale)
            cands = self.short_list(opt, dev, weights, budgets)
            cands = cands[~np.isin(cands, seen)]
            if not len(cands):
                break
            pred = np.maximum(self.ctx.features[cands] @ weights, 1e-12)
            sd = self.spread(seen, values, dev.scale)
            score = np.zeros(len(cands))
            for budget in budgets:
                ok = seen[(values <= budget) & np.isin(seen, dev.rows)]
                best = float(np.max(objective[ok])) if len(ok) else \
                    float(np.min(objective[cands])) - 1.0
                gain = np.maximum(objective[cands] - best, 0.0)
                if gain.max() > 0:   # each budget's gains up to 1: no budget starves the others
                    gain = gain / gain.max()
                score += normal_cdf((np.log(budget) - np.log(pred)) / sd) * gain
            if score.max() <= 0:
                break
            dev.access.measure([int(cands[np.argmax(score)])])
        seen, values = dev.access.measured()
        weights = self.ctx.adapt(seen, values, dev.scale)
        chosen = []
        for budget in budgets:
            ok = seen[(values <= budget) & np.isin(seen, dev.rows)]
            chosen.append(int(ok[np.argmax(objective[ok])]) if len(ok) else
                          self.proposal(opt, dev, weights, budget * FALLBACK))
        return chosen

    def search(self, dev: _Device, budget: float) -> int:
        search = ExhaustiveSearch(self.space, dev.allowed)
        return int(self.rows_used[search.choose(dev.weights[None], np.array([budget]))[0]])


def _timing(bench: _Bench, opt: AmortizedOptimizer, devices: list[_Device],
            budgets: dict[str, list[float]]) -> tuple[float, float]:
    """Seconds per (device, budget) of both methods, all in one batch, median of repeats.
    Both start from the fingerprints and include the predictor's weights."""
    fp = np.repeat(np.array([d.fingerprint for d in devices]), len(bench.opts.budgets), axis=0)
    B = np.concatenate([budgets[d.name] for d in devices])
    pred = bench.ctx.predictor
    # built once, as the optimizer's tables: designs by objective, the R + 1 column basis
    exhaustive = ExhaustiveSearch(bench.space, predictor=pred)

    def amortized() -> None:
        opt.choose_from_fingerprints(bench.space, pred, fp, B)

    def search() -> None:
        exhaustive.choose_from_fingerprints(fp, B)

    amortized()   # builds the onnxruntime session once
    # Rounds of a block of each (the median of a block is warm: a search right before would
    # evict the optimizer's tables from the cache); rounds so the machine's load, which
    # drifts, affects both alike. Median over rounds of the block medians.
    rounds: list[list[float]] = [[], []]
    for _ in range(TIMING_ROUNDS):
        for k, run in enumerate((amortized, search)):
            times = []
            for _ in range(TIMING_REPEATS):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            rounds[k].append(float(np.median(times)))
    return float(np.median(rounds[0])) / len(B), float(np.median(rounds[1])) / len(B)


def _tally(tally: BudgetTally, dev: _Device, true: np.ndarray, objective: np.ndarray, q: float,
           budget: float, chosen: int) -> None:
    met, regret = outcome(chosen, true, objective, dev.rows, budget)
    tally.add(dev.name, q, met, regret, near=bool(true[chosen] <= budget * (1 + NEAR)))


def _summary(tally: BudgetTally) -> dict:
    return {"median_regret": finite_or_none(tally.median_regret()),
            "violation_rate": finite_or_none(tally.overall_violation_rate()),
            "near_violation_rate": finite_or_none(tally.near_violation_rate())}


def _check(table: Table, opts: AmortizeOptions) -> None:
    check_devices(table, opts.train, opts.targets, opts.samples, opts.seeds)
    table.check([opts.objective], role="objective")
    if opts.verify < 0:
        raise BadInputError("--verify must be >= 0")


def run_amortize(table: Table, opts: AmortizeOptions, progress=None) -> dict:
    """Run the bench; returns the protocol's JSON object (plus direct, search, timing)."""
    _check(table, opts)
    start = time.perf_counter()
    with single_thread():
        bench = _Bench(table, opts)
        tallies = {name: BudgetTally() for name in ("main", "direct", "search")}
        measurements: dict[str, int] = {}
        timings = []
        for seed in range(opts.seeds):
            cfg = TrainConfig(**{**opts.train_config.__dict__, "seed": seed})
            opt = train_amortized(bench.ctx.predictor, bench.space, bench.train_fp, cfg)
            devices, budgets = [], {}
            for target in opts.targets:
                dev = bench.device(target)
                true = table.column(target)
                budgets[target] = [budget_of(true[dev.rows], q) for q in opts.budgets]
                for q, budget in zip(opts.budgets, budgets[target], strict=True):
                    _tally(tallies["direct"], dev, true, bench.objective, q, budget,
                           bench.choose(opt, dev, dev.weights, budget))
                    _tally(tallies["search"], dev, true, bench.objective, q, budget,
                           bench.search(dev, budget))
                if opts.verify > 0:
                    chosen = bench.verified(opt, dev, np.array(budgets[target]))
                else:
                    chosen = [bench.choose(opt, dev, dev.weights, b) for b in budgets[target]]
                for q, budget, row in zip(opts.budgets, budgets[target], chosen, strict=True):
                    _tally(tallies["main"], dev, true, bench.objective, q, budget, row)
                measurements[target] = max(measurements.get(target, 0), dev.access.measurements)
                devices.append(dev)
            timings.append(_timing(bench, opt, devices, budgets))
            if progress:
                main = tallies["main"]
                progress(f"seed {seed}: median regret {main.median_regret():.3f}, "
                         f"violations {main.overall_violation_rate():.3f} so far")
    main = tallies["main"]
    targets = {t: {"regret": {k: finite_or_none(v) for k, v in main.regret(t).items()},
                   "violation_rate": main.violation_rate(t),
                   "direct_regret": {k: finite_or_none(v)
                                     for k, v in tallies["direct"].regret(t).items()},
                   "direct_violation_rate": tallies["direct"].violation_rate(t),
                   "measurements": measurements[t]} for t in opts.targets}
    seconds, search_seconds = np.median(np.array(timings), axis=0)
    return {"samples": opts.samples, "verify": opts.verify, "seeds": opts.seeds,
            "objective": opts.objective, "budgets": [budget_key(q) for q in opts.budgets],
            "train": list(opts.train), "targets": targets, **_summary(main),
            "direct": _summary(tallies["direct"]), "search": _summary(tallies["search"]),
            "seconds_per_device": float(seconds),
            "search_seconds_per_device": float(search_seconds),
            "speedup": float(search_seconds / seconds),
            "seconds": time.perf_counter() - start}
