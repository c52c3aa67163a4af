"""Reuse a proxy device's latency predictor on a target measured only K times.

Rank monotonicity: devices often rank designs alike, so the proxy's predicted (or measured)
latency is the strongest single feature of a target's latency. Given, for K designs, the proxy
latency, the design features and the target latency:

1. `rank_correlation` estimates the proxy-target Spearman correlation with a confidence
   interval (Fisher z, Bonett-Wright standard error), to say how far the ranking can be trusted.
2. Reuse: a monotone log-linear calibration, log t = a + b log p (b > 0), fitted on the K
   samples. It keeps the proxy's ranking exactly.
3. Adapt: log t = a + b log p + sum_j c_j f_j with a ridge penalty lambda * |c|^2 on the
   standardized design features only, i.e. shrinkage toward the calibrated proxy (lambda ->
   infinity is the reuse model). Lambda is chosen by exact leave-one-out error on the K samples.
4. The decision compares the leave-one-out error of reuse and of the best adaptation; adapt
   only when it is lower by `margin` (relative), else keep the proxy. `Transfer.reason` says why.

`fixed_selection` picks K designs to measure without looking at the target: one per
proxy-latency quantile stratum, spread in feature space (farthest point within the stratum).
`random_selection` is the seeded baseline.

Everything is numpy on (n, d) arrays; rows are whatever the caller indexes (table rows).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RankEstimate", "Transfer", "rank_correlation", "fit_transfer", "fixed_selection",
    "random_selection", "LAMBDAS",
]

logger = logging.getLogger(__name__)

LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass(frozen=True)
class RankEstimate:
    """Spearman correlation of proxy vs target on the samples, with a two-sided CI."""

    rho: float
    low: float
    high: float
    n: int
    level: float


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    s = x[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _normal_quantile(level: float) -> float:
    """Two-sided z for a confidence level (bisection on erf; no scipy needed)."""
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def rank_correlation(proxy: np.ndarray, target: np.ndarray, level: float = 0.9) -> RankEstimate:
    """Spearman rho of the samples; CI from Fisher's z with se = sqrt((1 + rho^2/2)/(n - 3))."""
    n = len(proxy)
    a, b = _rank(np.asarray(proxy, float)), _rank(np.asarray(target, float))
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    rho = float(a @ b) / denominator if denominator > 0 else 0.0
    if n < 4:
        return RankEstimate(rho, -1.0, 1.0, n, level)
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = _normal_quantile(level) * math.sqrt((1 + rho * rho / 2) / (n - 3))
    return RankEstimate(rho, math.tanh(z - half), math.tanh(z + half), n, level)


def _ridge_loo(X: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> tuple[np.ndarray, float,
                                                                            np.ndarray]:
    """Ridge weights, mean squared leave-one-out error (exact, via the hat matrix), residuals."""
    A = X.T @ X + np.diag(penalty)
    A_inv = np.linalg.pinv(A)
    w = A_inv @ (X.T @ y)
    h = np.einsum("ij,jk,ik->i", X, A_inv, X)
    loo = (y - X @ w) / np.maximum(1.0 - h, 1e-3)
    return w, float(np.mean(loo ** 2)), loo


@dataclass(frozen=True)
class Transfer:
    """A calibrated or adapted proxy predictor for one target (log-latency model)."""

    path: str                       # "reuse" or "adapt"
    reason: str
    rank: RankEstimate
    intercept: float
    proxy_slope: float
    feature_weights: np.ndarray = field(repr=False)   # per standardized feature (zeros: reuse)
    feature_mean: np.ndarray = field(repr=False)
    feature_scale: np.ndarray = field(repr=False)
    lam: float | None               # chosen ridge penalty (None: reuse)
    cv_error_reuse: float           # leave-one-out mean squared error of log latency
    cv_error_adapt: float
    sigma: float                    # leave-one-out residual std (log) of the chosen model
    samples: int

    def predict_log(self, proxy_latency: np.ndarray, features: np.ndarray) -> np.ndarray:
        out = self.intercept + self.proxy_slope * np.log(proxy_latency)
        if self.path == "adapt":
            out = out + ((features - self.feature_mean) / self.feature_scale) @ self.feature_weights
        return out

    def predict(self, proxy_latency: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Predicted target latency (same unit as the samples)."""
        return np.exp(self.predict_log(proxy_latency, features))

    def summary(self) -> dict:
        return {"path": self.path, "reason": self.reason, "rho": self.rank.rho,
                "rho_low": self.rank.low, "rho_high": self.rank.high, "lambda": self.lam,
                "cv_error_reuse": self.cv_error_reuse, "cv_error_adapt": self.cv_error_adapt}


def fit_transfer(proxy: np.ndarray, features: np.ndarray, target: np.ndarray,
                 lambdas: tuple[float, ...] = LAMBDAS, margin: float = 0.05,
                 level: float = 0.9) -> Transfer:
    """Fit reuse and adaptation on the K samples and keep the one cross-validation prefers.

    `proxy`, `target`: latencies (> 0) of the K sampled designs; `features`: (K, d)."""
    proxy, target = np.asarray(proxy, float), np.asarray(target, float)
    features = np.asarray(features, float).reshape(len(proxy), -1)
    rank = rank_correlation(proxy, target, level)
    y = np.log(target)
    base = np.column_stack([np.ones(len(y)), np.log(proxy)])
    w_reuse, err_reuse, loo_reuse = _ridge_loo(base, y, np.zeros(2))
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    keep = scale > 1e-12
    scale = np.where(keep, scale, 1.0)
    Z = ((features - mean) / scale)[:, keep]
    best = None
    if Z.shape[1] and len(y) >= 4:
        X = np.column_stack([base, Z])
        for lam in lambdas:
            penalty = np.r_[0.0, 0.0, np.full(Z.shape[1], lam)]
            w, err, loo = _ridge_loo(X, y, penalty)
            if best is None or err < best[1]:
                best = (w, err, loo, lam)
    err_adapt = best[1] if best else math.inf
    rho_txt = f"rank correlation {rank.rho:.2f} [{rank.low:.2f}, {rank.high:.2f}]"
    if best is not None and err_adapt < (1.0 - margin) * err_reuse and w_reuse[1] > 0:
        w, _, loo, lam = best
        weights = np.zeros(features.shape[1])
        weights[keep] = w[2:]
        reason = (f"{rho_txt}; adaptation lowers the leave-one-out error "
                  f"{err_reuse:.3g} -> {err_adapt:.3g} (lambda {lam:g})")
        return Transfer("adapt", reason, rank, float(w[0]), float(w[1]), weights, mean, scale,
                        lam, err_reuse, err_adapt, float(np.sqrt(np.mean(loo ** 2))), len(y))
    reason = (f"{rho_txt}; adaptation does not lower the leave-one-out error enough "
              f"({err_reuse:.3g} vs {err_adapt:.3g}): monotone calibration of the proxy")
    if w_reuse[1] <= 0:  # a non-increasing map would reverse the proxy's ranking: keep the order
        w_reuse = np.array([float(np.mean(y - np.log(proxy))), 1.0])
        reason = f"{rho_txt}; fitted slope not positive: proxy scaled by a constant"
    return Transfer("reuse", reason, rank, float(w_reuse[0]), float(w_reuse[1]),
                    np.zeros(features.shape[1]), mean, scale, None, err_reuse, err_adapt,
                    float(np.sqrt(np.mean(loo_reuse ** 2))), len(y))


def fixed_selection(rows: np.ndarray, proxy: np.ndarray, features: np.ndarray,
                    k: int) -> np.ndarray:
    """K rows chosen without the target: one per proxy-latency quantile stratum, each the row
    of its stratum farthest (in standardized feature space) from those already chosen.

    `proxy`, `features` are indexed by table row; `rows` are the candidate rows."""
    rows = np.asarray(rows)
    k = min(k, len(rows))
    order = rows[np.argsort(np.log(proxy[rows]), kind="mergesort")]
    feats = features[order]
    feats = (feats - feats.mean(axis=0)) / np.where(feats.std(axis=0) > 0, feats.std(axis=0), 1)
    edges = np.linspace(0, len(order), k + 1).round().astype(int)
    chosen: list[int] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        block = feats[lo:hi]
        if not chosen:
            pick = (hi - lo) // 2
        else:
            d = ((block[:, None, :] - feats[chosen][None, :, :]) ** 2).sum(-1).min(axis=1)
            # ties (many equal encodings) go to the middle of the stratum, stable in proxy order
            pick = int(np.argmax(d - 1e-9 * np.abs(np.arange(hi - lo) - (hi - lo) / 2)))
        chosen.append(lo + pick)
    return order[np.array(chosen)]


def random_selection(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.asarray(rows), size=min(k, len(rows)), replace=False)
