"""`fleetc bench fewshot`: a device-conditioned predictor on devices it was not trained on.

Per target column and seed the method reads K cells of the target (BENCH_PROTOCOL.md): first
the device's fingerprint - its latencies on the predictor's reference designs (a fixed set,
chosen from the training devices and the encodings only; a reference design the target did not
measure is replaced by the same greedy rule over the target's filled rows) - then, if K is
larger than the fingerprint, random rows (seeded) that refine the same posterior. If K is
smaller, the first K reference designs are the fingerprint. Scores: Spearman and acc10 on the
target's other filled rows, `ceiling_spearman` = the predictor fitted on all of the target's
filled rows and scored on them, `tie_cap_spearman` = the best Spearman any tie-free ranking
can reach against the target's tied measurements (whole-ms timings).

`--method reference` is the baseline defined in issue 6: the 39 reference features, per
training device least squares of latency / median, the mean and top-3 principal directions of
those weight vectors; a target's K random rows fitted (ridge 1e-3) as a combination of the
mean-weight prediction and the three directions' predictions.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from toolchain.bench.proxy import reference_features
from toolchain.bench.scores import acc10, held_out, spearman
from toolchain.bench.table import Table, TargetAccess, parse_names
from toolchain.errors import BadInputError
from toolchain.predict.conditioned import (
    DEFAULT_NOISE,
    ConditionedPredictor,
    fit_conditioned,
    select_reference,
)

__all__ = [
    "FewshotOptions", "run_fewshot", "DeviceContext", "ReferenceBaseline", "tie_cap",
    "METHODS", "check_devices", "target_columns", "single_thread",
]

logger = logging.getLogger(__name__)

METHODS = ("conditioned", "reference")
REFERENCE_DIRECTIONS = 3
REFERENCE_RIDGE = 1e-3


@dataclass(frozen=True)
class FewshotOptions:
    train: tuple[str, ...]
    targets: tuple[str, ...]
    samples: int
    seeds: int = 5
    method: str = "conditioned"
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
    if samples < 2 or seeds < 1:
        raise BadInputError("--samples must be at least 2 and --seeds at least 1")


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
        """The first `count` reference rows, substitutes (same greedy rule over `rows`, the
        target's filled rows) for those the target did not measure."""
        wanted = self.reference_rows[:count]
        have = wanted[np.isin(wanted, rows)]
        if len(have) == len(wanted):
            return wanted
        p = self.predictor
        local = np.searchsorted(rows, have)
        chosen = select_reference(self.features[rows], p.cov, p.noise, count,
                                  np.arange(len(rows)), keep=local)
        return rows[chosen]

    def sample_rows(self, rows: np.ndarray, samples: int, seed: int) -> np.ndarray:
        """Fingerprint first, then random filled rows (seeded) up to K."""
        fp = self.fingerprint_rows(rows, min(samples, self.predictor.n_reference))
        rest = np.setdiff1d(rows, fp)
        extra = max(0, samples - len(fp))
        more = np.random.default_rng(seed).choice(rest, size=min(extra, len(rest)), replace=False)
        return np.r_[fp, np.sort(more)].astype(np.int64)

    def adapt(self, rows: np.ndarray, values: np.ndarray, scale: float) -> np.ndarray:
        """Weights in ms for one target from its measured rows; `scale` = fingerprint mean."""
        return self.predictor.adapt(self.features[rows], values, scale)


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

    def fit(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Predicted latency of every row from the target's measured rows."""
        B = self.basis[rows]
        coef = np.linalg.solve(B.T @ B + REFERENCE_RIDGE * np.eye(B.shape[1]), B.T @ values)
        return self.basis @ coef


# ---------------------------------------------------------------- the bench

def _one_target(opts: FewshotOptions, ctx, true: np.ndarray, target: str) -> dict:
    spear, acc, measured = [], [], 0
    rows = None
    for seed in range(opts.seeds):
        access = TargetAccess(target, true, opts.samples)
        rows = access.rows[ctx.usable[access.rows] & (true[access.rows] > 0)]
        if opts.method == "reference":
            sampled = np.sort(np.random.default_rng(seed).choice(rows, opts.samples,
                                                                 replace=False))
            pred = ctx.fit(sampled, access.measure(sampled))
        else:
            sampled = ctx.sample_rows(rows, opts.samples, seed)
            values = access.measure(sampled)
            n_fp = min(opts.samples, ctx.predictor.n_reference)
            pred = ctx.features @ ctx.adapt(sampled, values, float(np.mean(values[:n_fp])))
        scored = held_out(rows, sampled)
        spear.append(spearman(pred[scored], true[scored]))
        acc.append(acc10(pred[scored], true[scored]))
        measured = max(measured, access.measurements)
    if opts.method == "reference":
        ceiling = ctx.fit(rows, true[rows])
    else:
        ceiling = ctx.features @ ctx.predictor.adapt(ctx.features[rows], true[rows])
    return {"spearman": float(np.mean(spear)), "worst_seed_spearman": float(np.min(spear)),
            "acc10": float(np.mean(acc)),
            "ceiling_spearman": spearman(ceiling[rows], true[rows]),
            "tie_cap_spearman": tie_cap(true[rows]),
            "distinct_values": int(len(np.unique(true[rows]))), "filled": int(len(rows)),
            "measurements": int(measured)}


def run_fewshot(table: Table, opts: FewshotOptions, progress=None) -> dict:
    """Run the bench; returns the protocol's JSON object (plus worst device, timing)."""
    check_devices(table, opts.train, opts.targets, opts.samples, opts.seeds)
    if opts.method not in METHODS:
        raise BadInputError(f"--method is one of {', '.join(METHODS)}")
    start = time.perf_counter()
    with single_thread():
        if opts.method == "reference":
            ctx = ReferenceBaseline(table, opts.train)
        else:
            ctx = DeviceContext(table, opts.train, opts.references, opts.tau, opts.noise)
        targets = {}
        for i, target in enumerate(opts.targets):
            targets[target] = _one_target(opts, ctx, table.column(target), target)
            if progress:
                t = targets[target]
                progress(f"[{i + 1}/{len(opts.targets)}] {target}: spearman "
                         f"{t['spearman']:.3f} (ceiling {t['ceiling_spearman']:.3f}, "
                         f"tie cap {t['tie_cap_spearman']:.4f})")
    values = [t["spearman"] for t in targets.values()]
    out = {"samples": opts.samples, "seeds": opts.seeds, "method": opts.method,
           "train": list(opts.train), "targets": targets,
           "mean_spearman": float(np.mean(values)), "worst_spearman": float(np.min(values)),
           "worst_target": opts.targets[int(np.argmin(values))]}
    if opts.method == "conditioned":
        out["reference_designs"] = ctx.predictor.reference.astype(int).tolist()
        out["reference_rows"] = [int(table.index[r]) for r in ctx.reference_rows]
    out["seconds"] = time.perf_counter() - start
    return out


def target_columns(table: Table, train: tuple[str, ...], test: str | None) -> tuple[str, ...]:
    """--test, or by default every latency column that is not a training device."""
    return tuple(parse_names(test)) or tuple(c for c in table.latency if c not in train)
