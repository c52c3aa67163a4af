"""`fleetc bench fewshot`: a device-conditioned predictor on devices it was not trained on.

Per target column and seed the method reads K cells of the target (BENCH_PROTOCOL.md), chosen
by `--selection`: `fixed` - the predictor's greedy A-optimal sequence (its R reference designs
first, then the same greedy rule continued; substitutes by the same rule over the target's
filled rows for designs it did not measure), the same for every seed; `random` - the first K
of a seeded permutation of the target's filled rows (so a larger K measures a superset). The
device's posterior (`ConditionedPredictor.posterior`) uses every one of the K cells. Scores on
the target's other filled rows: Spearman, acc10, `coverage90` (share inside the predicted 90%
interval). `ceiling_spearman` is fixed and does not depend on the method: least squares of log
latency on the reference features (`reference_features`, 39 on NAS-Bench-201) fitted and
scored on all of the target's filled rows. `fit_all_spearman`: the method itself given every
filled row. `tie_cap_spearman`: the best Spearman any tie-free ranking can reach against the
target's tied measurements (whole-ms timings).

`--method reference` is the baseline defined in issue 6: the 39 reference features, per
training device least squares of latency / median, the mean and top-3 principal directions of
those weight vectors; a target's K rows fitted (ridge 1e-3) as a combination of the
mean-weight prediction and the three directions' predictions.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from toolchain.bench.proxy import reference_features
from toolchain.bench.scores import acc10, held_out, seed_spread, spearman
from toolchain.bench.table import Table, TargetAccess, parse_names
from toolchain.errors import BadInputError
from toolchain.predict.conditioned import (
    DEFAULT_NOISE,
    Z90,
    ConditionedPredictor,
    fit_conditioned,
    select_reference,
)

__all__ = [
    "FewshotOptions", "run_fewshot", "DeviceContext", "ReferenceBaseline", "tie_cap",
    "METHODS", "SELECTIONS", "check_devices", "target_columns", "single_thread",
    "ceiling_fit",
]

logger = logging.getLogger(__name__)

METHODS = ("conditioned", "reference")
SELECTIONS = ("fixed", "random")
REFERENCE_DIRECTIONS = 3
REFERENCE_RIDGE = 1e-3


@dataclass(frozen=True)
class FewshotOptions:
    train: tuple[str, ...]
    targets: tuple[str, ...]
    samples: int
    seeds: int = 5
    method: str = "conditioned"
    selection: str = "fixed"
    references: int = 10
    tau: float | None = None
    noise: float = DEFAULT_NOISE


def check_devices(table: Table, train: tuple[str, ...], targets: tuple[str, ...],
                  samples: int, seeds: int) -> None:
    """The protocol's checks shared by fewshot and amortize (exit 2 on each)."""
    if not train:
        raise BadInputError("--train: give at least one training device column")
    table.check(train, role="latency")
    table.check(targets, role="latency")
    both = sorted(set(train) & set(targets))
    if both:
        raise BadInputError(f"columns both in --train and --test: {', '.join(both)}")
    if not targets:
        raise BadInputError("no test column: every latency column is a training device")
    if samples < 1 or seeds < 1:
        raise BadInputError("--samples and --seeds must be at least 1")


def single_thread():
    """BLAS on one thread: on a loaded 2-core machine threaded BLAS is up to 100x slower for
    these small matrices (and timed methods then run alike)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:   # optional: only speed depends on it
        return nullcontext()
    return threadpool_limits(1)


def tie_cap(true: np.ndarray) -> float:
    """Highest Spearman a ranking without ties can reach against `true` (with its ties)."""
    return spearman(np.argsort(np.argsort(true, kind="mergesort"), kind="mergesort"), true)


# ---------------------------------------------------------------- the methods

class DeviceContext:
    """What a method may know before reading a target: encodings and training devices."""

    def __init__(self, table: Table, train: tuple[str, ...], references: int = 10,
                 tau: float | None = None, noise: float = DEFAULT_NOISE):
        codes = table.encoding_matrix()
        self.usable = np.all(np.isfinite(codes), axis=1)
        lat = np.column_stack([table.column(c) for c in train])
        self.predictor: ConditionedPredictor = fit_conditioned(
            codes[self.usable], lat[self.usable], train, references, tau, noise)
        self.features = np.zeros((table.n_rows, self.predictor.basis.n_features))
        self.features[self.usable] = self.predictor.features(codes[self.usable])
        self.codes = codes
        self.reference_rows = self._rows_of(self.predictor.reference)

    def _rows_of(self, designs: np.ndarray) -> np.ndarray:
        where = {tuple(c): i for i, c in enumerate(self.codes) if self.usable[i]}
        return np.array([where[tuple(c)] for c in designs], dtype=np.int64)

    def fingerprint_rows(self, rows: np.ndarray, count: int) -> np.ndarray:
        """The first `count` designs of the predictor's greedy A-optimal sequence among `rows`
        (the target's filled rows): its reference designs first, then the same greedy rule
        continued; substitutes by that rule for reference designs the target did not measure."""
        wanted = self.reference_rows[:count]
        have = wanted[np.isin(wanted, rows)]
        if len(have) == min(count, len(rows)):
            return have
        p = self.predictor
        local = np.searchsorted(rows, have)
        chosen = select_reference(self.features[rows], p.cov, p.noise, count,
                                  np.arange(len(rows)), keep=local)
        return rows[chosen]

    def sample_rows(self, rows: np.ndarray, samples: int, seed: int,
                    selection: str = "fixed") -> np.ndarray:
        """The K rows to measure: `fixed` the greedy sequence (`fingerprint_rows`, the same for
        every seed), `random` the first K of a seeded permutation of `rows` (nested in K)."""
        if selection == "random":
            return np.random.default_rng(seed).permutation(rows)[:samples].astype(np.int64)
        return self.fingerprint_rows(rows, samples).astype(np.int64)

    def posterior(self, rows: np.ndarray, values: np.ndarray):
        """The device's posterior (`ConditionedPredictor.posterior`) from its measured rows."""
        return self.predictor.posterior(self.features[rows], values)

    def adapt(self, rows: np.ndarray, values: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Posterior mean weights in ms for one target from its measured rows."""
        return self.posterior(rows, values).weights_ms


class ReferenceBaseline:
    """The issue's reference: mean + top-3 principal weight directions, K rows mix them."""

    def __init__(self, table: Table, train: tuple[str, ...]):
        X = reference_features(table)
        self.usable = np.all(np.isfinite(X), axis=1)
        weights = []
        for name in train:
            y = table.column(name)
            ok = self.usable & np.isfinite(y)
            weights.append(np.linalg.lstsq(X[ok], y[ok] / np.median(y[ok]), rcond=None)[0])
        W = np.array(weights)
        mean = W.mean(axis=0)
        _, _, vt = np.linalg.svd(W - mean, full_matrices=False)
        directions = np.vstack([mean, vt[:REFERENCE_DIRECTIONS]])
        self.basis = np.nan_to_num(X) @ directions.T      # (n_rows, 1 + 3)

    @staticmethod
    def sample_rows(rows: np.ndarray, samples: int, seed: int, selection: str) -> np.ndarray:
        """`random`: the first K of a seeded permutation of the filled rows; `fixed`: the same
        with seed 0 for every seed (the baseline has no design rule of its own)."""
        rng = np.random.default_rng(seed if selection == "random" else 0)
        return np.sort(rng.permutation(rows)[:samples]).astype(np.int64)

    def fit(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Predicted latency of every row from the target's measured rows."""
        B = self.basis[rows]
        coef = np.linalg.solve(B.T @ B + REFERENCE_RIDGE * np.eye(B.shape[1]), B.T @ values)
        return self.basis @ coef


# ---------------------------------------------------------------- the bench

def ceiling_fit(X: np.ndarray, rows: np.ndarray, true: np.ndarray) -> float:
    """The fixed reference ceiling: least squares of log latency on the reference features,
    fitted and scored on all of the target's filled rows (independent of the method)."""
    coef = np.linalg.lstsq(X[rows], np.log(true[rows]), rcond=None)[0]
    return spearman(X[rows] @ coef, true[rows])


def _one_target(opts: FewshotOptions, ctx, true: np.ndarray, target: str,
                ceiling_X: np.ndarray) -> dict:
    spear, acc, inside, measured = [], [], [], 0
    access = TargetAccess(target, true, opts.samples)
    rows = access.rows[ctx.usable[access.rows] & (true[access.rows] > 0)]
    for seed in range(opts.seeds):
        access = TargetAccess(target, true, opts.samples)
        if opts.method == "reference":
            sampled = ReferenceBaseline.sample_rows(rows, opts.samples, seed, opts.selection)
            pred = ctx.fit(sampled, access.measure(sampled))
            scored = held_out(rows, sampled)
        else:
            sampled = ctx.sample_rows(rows, opts.samples, seed, opts.selection)
            post = ctx.posterior(sampled, access.measure(sampled))
            scored = held_out(rows, sampled)
            pred_scored, sd = post.predict(ctx.features[scored])
            pred = np.zeros(len(true))
            pred[scored] = pred_scored
            inside.append(float(np.mean(np.abs(true[scored] - pred_scored) <= Z90 * sd)))
        spear.append(spearman(pred[scored], true[scored]))
        acc.append(acc10(pred[scored], true[scored]))
        measured = max(measured, access.measurements)
    if opts.method == "reference":
        fit_all = ctx.fit(rows, true[rows])
    else:
        fit_all = ctx.features @ ctx.adapt(rows, true[rows])
    out = {"spearman": float(np.mean(spear)), "spearman_std": seed_spread(spear),
           "spearman_per_seed": [float(v) for v in spear],
           "worst_seed_spearman": float(np.min(spear)), "acc10": float(np.mean(acc)),
           "ceiling_spearman": ceiling_fit(ceiling_X, rows, true),
           "fit_all_spearman": spearman(fit_all[rows], true[rows]),
           "tie_cap_spearman": tie_cap(true[rows]),
           "distinct_values": int(len(np.unique(true[rows]))), "filled": int(len(rows)),
           "measurements": int(measured)}
    if inside:
        out["coverage90"] = float(np.mean(inside))
        out["_coverage_rows"] = (float(np.sum(np.array(inside) * len(held_out(rows, sampled)))),
                                 len(held_out(rows, sampled)) * len(inside))
    return out


def run_fewshot(table: Table, opts: FewshotOptions, progress=None) -> dict:
    """Run the bench; returns the protocol's JSON object (plus worst device, timing)."""
    check_devices(table, opts.train, opts.targets, opts.samples, opts.seeds)
    if opts.method not in METHODS or opts.selection not in SELECTIONS:
        raise BadInputError(f"--method is one of {', '.join(METHODS)}, "
                            f"--selection one of {', '.join(SELECTIONS)}")
    start = time.perf_counter()
    with single_thread():
        if opts.method == "reference":
            ctx = ReferenceBaseline(table, opts.train)
        else:
            ctx = DeviceContext(table, opts.train, opts.references, opts.tau, opts.noise)
        ceiling_X = reference_features(table)
        targets = {}
        for i, target in enumerate(opts.targets):
            targets[target] = _one_target(opts, ctx, table.column(target), target, ceiling_X)
            if progress:
                t = targets[target]
                progress(f"[{i + 1}/{len(opts.targets)}] {target}: spearman "
                         f"{t['spearman']:.3f} (ceiling {t['ceiling_spearman']:.3f}, "
                         f"tie cap {t['tie_cap_spearman']:.4f})")
    values = [t["spearman"] for t in targets.values()]
    per_seed = np.mean([t["spearman_per_seed"] for t in targets.values()], axis=0)
    out = {"samples": opts.samples, "seeds": opts.seeds, "method": opts.method,
           "selection": opts.selection, "train": list(opts.train), "targets": targets,
           "mean_spearman": float(np.mean(values)),
           "mean_spearman_std": seed_spread(list(per_seed)),
           "worst_spearman": float(np.min(values)),
           "worst_target": opts.targets[int(np.argmin(values))],
           "mean_ceiling_spearman": float(np.mean([t["ceiling_spearman"]
                                                   for t in targets.values()])),
           "mean_fit_all_spearman": float(np.mean([t["fit_all_spearman"]
                                                   for t in targets.values()]))}
    pooled = [t.pop("_coverage_rows") for t in targets.values() if "_coverage_rows" in t]
    if pooled:   # share of all held-out rows (every device and seed) inside their 90% interval
        out["coverage90"] = float(sum(a for a, _ in pooled) / sum(n for _, n in pooled))
    if opts.method == "conditioned":
        out["reference_designs"] = ctx.predictor.reference.astype(int).tolist()
        out["reference_rows"] = [int(table.index[r]) for r in ctx.reference_rows]
    out["seconds"] = time.perf_counter() - start
    return out


def target_columns(table: Table, train: tuple[str, ...], test: str | None) -> tuple[str, ...]:
    """--test, or by default every latency column that is not a training device."""
    return tuple(parse_names(test)) or tuple(c for c in table.latency if c not in train)
