"""`fleetc bench amortize`: the amortized optimizer on devices it was not trained on.

Per seed, the device-conditioned predictor is fitted on the training columns (deterministic)
and the optimizer network is trained with that seed (toolchain.optimize.amortized). Per target
the method reads K cells chosen by `--selection` (as `bench fewshot`); the device's posterior
(`ConditionedPredictor.posterior`) gives every design a predicted latency and its standard
deviation, and the network's input fingerprint is that posterior's prediction on the reference
designs (the measured value where a reference design was among the K cells). For every budget
quantile q (B = q-quantile of the target's filled latencies) one design is chosen among the
target's filled rows that have an objective:

- V = 0, direct choice under uncertainty: a design is *confident* when P(latency <= B) >=
  `--confidence` c under the posterior (mean + z_c sd <= B, z_c the normal c-quantile). The
  network is asked for the budget B shrunk by the device's median ratio mean / (mean + z_c sd)
  and its design is kept if confident; otherwise (and for the search row always) the best
  objective among confident designs, else the design of the lowest mean + z_c sd.
- V > 0: the V cells are spent jointly for all budgets. Each step refits the posterior on every
  cell read, asks the proposer for every budget times each factor of SHORT_LIST, refines those
  designs by hill-climbing with the posterior mean, adds their single-column changes (the short
  list), and measures the candidate of the largest expected gain summed over the budgets:
  P(latency <= B) x (objective - best objective measured within B), each budget's gains divided
  by their largest (so each budget weighs alike). The choice per budget is the best objective
  measured within B (K cells included), else the direct confident choice.

Two rows, both timed: `amortized` (the proposer is the network) and `search` (the ablation: the
same procedure with per-device exhaustive scoring as the proposer). `seconds_per_device` and
`search_seconds_per_device` are the wall time of exactly the procedure whose choices are scored
- from the K cells to the choices: posterior fits, proposals, short lists, refits, decode,
repair - for all test devices and budgets in one batch, divided by their count, median of
TIMING_REPEATS runs in the same process (the V measurements are table reads, counted in
`measurements`). `confidence_curve`: the direct choice (V = 0, network) at other confidences.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from toolchain.bench.fewshot import SELECTIONS, DeviceContext, check_devices, single_thread
from toolchain.bench.scores import (
    BudgetTally,
    budget_key,
    budget_of,
    finite_or_none,
    normal_cdf,
    outcome,
    seed_spread,
)
from toolchain.bench.table import Table, TargetAccess
from toolchain.errors import BadInputError
from toolchain.optimize.amortized import (
    AmortizedOptimizer,
    DesignSpace,
    ExhaustiveSearch,
    TrainConfig,
    exhaustive_choice,
    refine,
    train_amortized,
)

__all__ = ["AmortizeOptions", "run_amortize", "PROPOSERS", "CURVE"]

logger = logging.getLogger(__name__)

NEAR = 0.05           # a violation by at most 5% of the budget counts as "near"
# Short list of the verification: asked budgets, times B. Kept from the leave-device-out study
# on the training columns (docs/bench.md); never chosen on test columns.
SHORT_LIST = np.geomspace(0.7, 1.05, 12)
TIMING_REPEATS = 3
PROPOSERS = ("amortized", "search")
CURVE = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)   # confidences of `confidence_curve`


@dataclass(frozen=True)
class AmortizeOptions:
    train: tuple[str, ...]
    targets: tuple[str, ...]
    objective: str
    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    samples: int = 10
    verify: int = 0
    seeds: int = 5
    selection: str = "fixed"
    confidence: float = 0.9
    train_config: TrainConfig = TrainConfig()


@dataclass
class _Device:
    """One target: its choosable rows and the K cells read (the procedure starts here)."""

    name: str
    rows: np.ndarray          # filled rows with an objective (the choices that exist)
    sampled: np.ndarray       # the K rows read
    values: np.ndarray        # their latencies
    budgets: np.ndarray       # B per budget quantile
    allowed: np.ndarray       # mask over space rows
    true: np.ndarray          # the column (only for `access`, never read by the method)

    def access(self, limit: int) -> TargetAccess:
        """A fresh TargetAccess holding the K cells already read."""
        access = TargetAccess(self.name, self.true, limit)
        access.measure(self.sampled)
        return access


class _Bench:
    def __init__(self, table: Table, opts: AmortizeOptions):
        self.table, self.opts = table, opts
        self.ctx = DeviceContext(table, opts.train)
        self.objective = table.column(opts.objective)
        usable = self.ctx.usable
        self.space = DesignSpace(table.encoding_matrix()[usable], self.ctx.features[usable],
                                 self.objective[usable])
        self.rows_used = np.flatnonzero(usable)   # space row -> table row
        self.space_row = np.full(table.n_rows, -1)
        self.space_row[self.rows_used] = np.arange(len(self.rows_used))
        ref = self.ctx.reference_rows
        fp = np.array([table.column(c)[ref] for c in opts.train])
        self.train_fp = fp[np.all(np.isfinite(fp), axis=1)]
        self.z = NormalDist().inv_cdf(opts.confidence)

    def device(self, target: str, seed: int) -> _Device:
        true = self.table.column(target)
        access = TargetAccess(target, true, self.opts.samples)
        rows = access.rows[self.ctx.usable[access.rows] & (true[access.rows] > 0)]
        sampled = self.ctx.sample_rows(rows, self.opts.samples, seed, self.opts.selection)
        values = access.measure(sampled)
        choosable = rows[np.isfinite(self.objective[rows])]
        allowed = np.zeros(self.table.n_rows, bool)
        allowed[choosable] = True
        budgets = np.array([budget_of(true[choosable], q) for q in self.opts.budgets])
        return _Device(target, choosable, sampled, values, budgets, allowed[self.rows_used],
                       true)

    # ------------------------------------------------------------ the procedure (timed)

    def state(self, seen: np.ndarray, values: np.ndarray):
        """Posterior, its mean and sd (ms) over the space, and the network's fingerprint."""
        post = self.ctx.posterior(seen, values)
        mean, sd = post.predict(self.space.features)
        fp = mean[self.space_row[self.ctx.reference_rows]]
        here = np.isin(self.ctx.reference_rows, seen)
        lookup = dict(zip(seen.tolist(), values.tolist(), strict=True))
        fp[here] = [lookup[int(r)] for r in self.ctx.reference_rows[here]]
        return post, mean, sd, fp

    def confident(self, dev: _Device, mean: np.ndarray, sd: np.ndarray, budget: float,
                  z: float) -> int:
        """Space row: best objective with mean + z sd <= budget, else the lowest mean + z sd."""
        upper = np.where(dev.allowed, mean + z * sd, np.inf)
        value = np.where(dev.allowed, self.space.objective, -np.inf)
        return int(exhaustive_choice(upper[None], value, np.array([budget]))[0])

    def propose(self, proposer: str, opt: AmortizedOptimizer, dev: _Device, post, fp,
                asked: np.ndarray) -> np.ndarray:
        """Space rows the proposer picks for the asked budgets (posterior mean latency)."""
        w = np.repeat(post.weights_ms[None], len(asked), axis=0)
        if proposer == "amortized":
            return opt.choose(self.space, w, np.repeat(fp[None], len(asked), axis=0), asked,
                              dev.allowed)
        return ExhaustiveSearch(self.space, dev.allowed).choose(w, asked)

    def direct(self, proposer: str, opt: AmortizedOptimizer, dev: _Device, mean, sd, post, fp,
               z: float) -> list[int]:
        """The V = 0 choice per budget (module docstring); space rows."""
        if proposer == "search":
            return [self.confident(dev, mean, sd, b, z) for b in dev.budgets]
        shrink = float(np.median(mean[dev.allowed] / (mean[dev.allowed] + z * sd[dev.allowed])))
        rows = self.propose(proposer, opt, dev, post, fp, dev.budgets * shrink)
        return [int(r) if mean[r] + z * sd[r] <= b else self.confident(dev, mean, sd, b, z)
                for r, b in zip(rows, dev.budgets, strict=True)]

    def short_list(self, proposer, opt, dev, post, fp) -> np.ndarray:
        asked = np.outer(dev.budgets, SHORT_LIST).ravel()
        rows = self.propose(proposer, opt, dev, post, fp, asked)
        w = np.repeat(post.weights_ms[None], len(asked), axis=0)
        rows = refine(self.space, rows, w, asked, dev.allowed)
        rows = self.space.neighbours[np.unique(rows)].ravel()   # and their single changes
        rows = rows[rows >= 0]
        return np.unique(rows[dev.allowed[rows]])

    def verified(self, proposer: str, opt: AmortizedOptimizer, dev: _Device) -> tuple[list, int]:
        """Spend V cells on the short list (module docstring); (table rows, cells read)."""
        access = dev.access(self.opts.samples + self.opts.verify)
        objective = self.space.objective
        while access.remaining > 0:
            seen, values = access.measured()
            post, mean, sd, fp = self.state(seen, values)
            cands = self.short_list(proposer, opt, dev, post, fp)
            cands = cands[~np.isin(self.rows_used[cands], seen)]
            if not len(cands):
                break
            seen_space = self.space_row[seen]
            score = np.zeros(len(cands))
            for budget in dev.budgets:
                ok = seen_space[(values <= budget) & dev.allowed[seen_space]]
                best = float(np.max(objective[ok])) if len(ok) else \
                    float(np.min(objective[cands])) - 1.0
                gain = np.maximum(objective[cands] - best, 0.0)
                if gain.max() > 0:
                    gain = gain / gain.max()
                score += normal_cdf((budget - mean[cands]) / np.maximum(sd[cands], 1e-12)) * gain
            if score.max() <= 0:
                break
            access.measure([int(self.rows_used[cands[np.argmax(score)]])])
        seen, values = access.measured()
        post, mean, sd, fp = self.state(seen, values)
        seen_space = self.space_row[seen]
        chosen = []
        for budget in dev.budgets:
            ok = seen_space[(values <= budget) & dev.allowed[seen_space]]
            chosen.append(int(ok[np.argmax(objective[ok])]) if len(ok) else
                          self.confident(dev, mean, sd, budget, self.z))
        return [int(self.rows_used[r]) for r in chosen], access.measurements

    def choose_all(self, proposer: str, opt: AmortizedOptimizer,
                   devices: list[_Device]) -> tuple[list[list[int]], list[int]]:
        """The scored procedure for every device and budget: (table rows, cells read)."""
        if self.opts.verify > 0:
            out = [self.verified(proposer, opt, dev) for dev in devices]
            return [rows for rows, _ in out], [n for _, n in out]
        chosen = []
        for dev in devices:
            post, mean, sd, fp = self.state(dev.sampled, dev.values)
            rows = self.direct(proposer, opt, dev, mean, sd, post, fp, self.z)
            chosen.append([int(self.rows_used[r]) for r in rows])
        return chosen, [len(dev.sampled)] * len(devices)

    def curve(self, opt: AmortizedOptimizer, devices: list[_Device]) -> dict[float, list]:
        """Direct network choices (table rows) per confidence of CURVE."""
        out: dict[float, list] = {}
        states = [self.state(dev.sampled, dev.values) for dev in devices]
        for c in CURVE:
            z = NormalDist().inv_cdf(c)
            out[c] = [[int(self.rows_used[r]) for r in
                       self.direct("amortized", opt, dev, mean, sd, post, fp, z)]
                      for dev, (post, mean, sd, fp) in zip(devices, states, strict=True)]
        return out


def _timed(bench: _Bench, proposer: str, opt, devices) -> tuple[list, list, float]:
    """Choices of the first run and the median wall time of TIMING_REPEATS runs, per
    (device, budget)."""
    times, first = [], None
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        result = bench.choose_all(proposer, opt, devices)
        times.append(time.perf_counter() - start)
        first = first or result
    per = len(devices) * len(bench.opts.budgets)
    return first[0], first[1], float(np.median(times)) / per


def _tally(tally: BudgetTally, dev: _Device, objective: np.ndarray, qs, rows) -> None:
    for q, budget, row in zip(qs, dev.budgets, rows, strict=True):
        met, regret = outcome(row, dev.true, objective, dev.rows, budget)
        tally.add(dev.name, q, met, regret, near=bool(dev.true[row] <= budget * (1 + NEAR)))


def _summary(tally: BudgetTally, per_seed: list[tuple[float, float]]) -> dict:
    regrets = [r for r, _ in per_seed if r is not None]
    return {"median_regret": finite_or_none(tally.median_regret()),
            "violation_rate": finite_or_none(tally.overall_violation_rate()),
            "near_violation_rate": finite_or_none(tally.near_violation_rate()),
            "median_regret_std": seed_spread(regrets),
            "violation_rate_std": seed_spread([v for _, v in per_seed])}


def _check(table: Table, opts: AmortizeOptions) -> None:
    check_devices(table, opts.train, opts.targets, opts.samples, opts.seeds)
    table.check([opts.objective], role="objective")
    if opts.verify < 0:
        raise BadInputError("--verify must be >= 0")
    if opts.selection not in SELECTIONS:
        raise BadInputError(f"--selection is one of {', '.join(SELECTIONS)}")
    if not 0 < opts.confidence < 1:
        raise BadInputError(f"--confidence must be strictly between 0 and 1, "
                            f"got {opts.confidence}")


def run_amortize(table: Table, opts: AmortizeOptions, progress=None) -> dict:
    """Run the bench; returns the protocol's JSON object (plus the search row, the curve)."""
    _check(table, opts)
    start = time.perf_counter()
    with single_thread():
        bench = _Bench(table, opts)
        tallies = {p: BudgetTally() for p in PROPOSERS}
        curve = {c: BudgetTally() for c in CURVE}
        per_seed = {p: [] for p in PROPOSERS}
        measurements: dict[str, int] = {}
        seconds = {p: [] for p in PROPOSERS}
        train_seconds = []
        for seed in range(opts.seeds):
            t0 = time.perf_counter()
            cfg = TrainConfig(**{**opts.train_config.__dict__, "seed": seed})
            opt = train_amortized(bench.ctx.predictor, bench.space, bench.train_fp, cfg)
            train_seconds.append(time.perf_counter() - t0)
            devices = [bench.device(t, seed) for t in opts.targets]
            post, _, _, fp = bench.state(devices[0].sampled, devices[0].values)
            bench.propose("amortized", opt, devices[0], post, fp, devices[0].budgets[:1])
            # ^ builds the onnxruntime session once, outside the timed runs
            for proposer in PROPOSERS:
                rows, cells, secs = _timed(bench, proposer, opt, devices)
                seconds[proposer].append(secs)
                seed_tally = BudgetTally()
                for dev, chosen, n in zip(devices, rows, cells, strict=True):
                    _tally(tallies[proposer], dev, bench.objective, opts.budgets, chosen)
                    _tally(seed_tally, dev, bench.objective, opts.budgets, chosen)
                    if proposer == "amortized":
                        measurements[dev.name] = max(measurements.get(dev.name, 0), n)
                per_seed[proposer].append((seed_tally.median_regret(),
                                           seed_tally.overall_violation_rate()))
            for c, rows in bench.curve(opt, devices).items():
                for dev, chosen in zip(devices, rows, strict=True):
                    _tally(curve[c], dev, bench.objective, opts.budgets, chosen)
            if progress:
                main = tallies["amortized"]
                progress(f"seed {seed}: median regret {main.median_regret():.3f}, "
                         f"violations {main.overall_violation_rate():.3f} so far")
    main = tallies["amortized"]
    targets = {t: {"regret": {k: finite_or_none(v) for k, v in main.regret(t).items()},
                   "violation_rate": main.violation_rate(t),
                   "search_regret": {k: finite_or_none(v)
                                     for k, v in tallies["search"].regret(t).items()},
                   "search_violation_rate": tallies["search"].violation_rate(t),
                   "measurements": measurements[t]} for t in opts.targets}
    amortized_s = float(np.median(seconds["amortized"]))
    search_s = float(np.median(seconds["search"]))
    return {"samples": opts.samples, "verify": opts.verify, "seeds": opts.seeds,
            "selection": opts.selection, "confidence": opts.confidence,
            "objective": opts.objective, "budgets": [budget_key(q) for q in opts.budgets],
            "train": list(opts.train), "targets": targets,
            **_summary(main, per_seed["amortized"]),
            "search": {**_summary(tallies["search"], per_seed["search"]),
                       "seconds_per_device": search_s},
            "confidence_curve": [{"confidence": c,
                                  "median_regret": finite_or_none(curve[c].median_regret()),
                                  "violation_rate": finite_or_none(
                                      curve[c].overall_violation_rate())} for c in CURVE],
            "seconds_per_device": amortized_s, "search_seconds_per_device": search_s,
            "speedup": search_s / amortized_s,
            "train_seconds": float(np.median(train_seconds)),
            "seconds": time.perf_counter() - start}
