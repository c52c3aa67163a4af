"""Reuse a proxy device's latency predictor on a target measured only K times.

Rank monotonicity: devices often rank designs alike, so the proxy's predicted (or measured)
latency is the strongest single feature of a target's latency. Given, for K designs, the proxy
predictor's latency p, the design features f and the target latency t:

1. `rank_correlation` estimates the proxy-target Spearman correlation with a confidence
   interval (Fisher z, Bonett-Wright standard error), to say how far the ranking can be trusted.
2. Reuse: a monotone calibration fitted on the K samples, log-linear (log t = a + b log p) or
   linear (t = a + b p), b > 0, of the proxy predictor or of the proxy's measured latency. It
   keeps the proxy's ranking exactly.
3. Adapt: the same forms plus corrections c.f on one block of standardized design features,
   with a ridge penalty lambda |c|^2 on the corrections only, i.e. shrinkage toward the
   calibrated proxy (lambda -> infinity is reuse). Every block alone and all together, every
   lambda, both forms; each scored by its exact leave-one-out error of log latency on the K
   samples (`ridge_path`: one SVD gives all penalties). Candidates with more effective
   parameters than `dof_ratio * K` are not considered (with few samples leave-one-out cannot
   tell them from noise).
4. The decision: adapt only when its leave-one-out error is `margin` (5%) below the best
   reuse's, else keep the proxy. `Transfer.path` / `.reason` say which and why.

`fixed_selection` picks K designs without looking at the target: one per proxy-latency quantile
stratum, spread in feature space (farthest point within the stratum); `random_selection` is the
seeded baseline. `fit_proxy_predictor` is the proxy's own predictor on a design table (linear
in the design features). `calibrate_kernel_predictor` is the product path: a target's
kernel-level predictor package from the proxy's and K measured designs (`fleetc targets
calibrate`), where the corrections are per compute class and precision scale factors of the
proxy's kernel costs, so the result stays an additive per-kernel model.

Everything is numpy on (n, d) arrays; rows are whatever the caller indexes (table rows).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RankEstimate", "Transfer", "rank_correlation", "fit_transfer", "fixed_selection",
    "random_selection", "LAMBDAS", "ridge_path", "calibrate_kernel_predictor",
    "ProxyPredictor", "fit_proxy_predictor", "design_costs", "cost_kinds", "fit_transfers",
    "calibrate_kernel_predictors",
]

logger = logging.getLogger(__name__)

LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


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


def _t(A: np.ndarray) -> np.ndarray:
    return np.swapaxes(A, -1, -2)


def _mv(A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A @ v for stacks of matrices and vectors."""
    return (A @ v[..., None])[..., 0]


def ridge_path(X0: np.ndarray, Z: np.ndarray, y: np.ndarray,
               penalties: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge with unpenalized columns X0 and penalized columns Z, for every penalty at once.

    Projecting X0 out of Z and y turns it into plain ridge on the residuals; one SVD then gives
    every penalty's weights (rows of W: X0 weights then Z weights), exact leave-one-out
    residuals (hat diagonal = X0's leverage + sum_j U_ij^2 s_j^2 / (s_j^2 + lambda)) and
    effective number of parameters. Leading axes of X0, Z, y and penalties (before the last
    one or two) are a batch of independent problems: (B, n, p0), (B, n, pz), (B, n), (B, L)."""
    X0_pinv = np.linalg.pinv(X0)
    P0 = X0 @ X0_pinv
    P0y = _mv(P0, y)
    Zt, yt = Z - P0 @ Z, y - P0y
    U, s, Vt = np.linalg.svd(Zt, full_matrices=False)
    s2 = s[..., None, :] ** 2
    d = s2 / (s2 + penalties[..., :, None])                                # (L, r)
    uy = _mv(_t(U), yt)
    fitted = P0y[..., None, :] + (d * uy[..., None, :]) @ _t(U)            # (L, n)
    h = np.diagonal(P0, axis1=-2, axis2=-1)[..., None, :] + d @ _t(U ** 2)  # (L, n)
    loo = (y[..., None, :] - fitted) / np.maximum(1.0 - h, 1e-3)
    b = (s[..., None, :] / (s2 + penalties[..., :, None]) * uy[..., None, :]) @ Vt  # (L, pz)
    a = (y[..., None, :] - b @ _t(Z)) @ _t(X0_pinv)                        # (L, p0)
    dof = np.trace(P0, axis1=-2, axis2=-1)[..., None] + d.sum(axis=-1)
    return np.concatenate([a, b], axis=-1), loo, dof


SPACES = ("log", "ms")   # log t = a + b log p + c.f   or   t = a + b p + c.f
LINEAR = ("ms", "rel")   # t = a + b p + c.f, fitted on absolute or on relative errors


@dataclass(frozen=True)
class Transfer:
    """A calibrated (reuse) or adapted proxy predictor for one target.

    Reuse: the proxy latency through a monotone map (log-linear or linear with positive slope),
    so the proxy's ranking is kept exactly. Adapt: plus ridge-shrunk corrections on one block of
    design features (standardized on the samples)."""

    path: str                       # "reuse" or "adapt"
    reason: str
    rank: RankEstimate
    space: str                      # "log" or "ms"
    intercept: float
    proxy_slope: float
    columns: tuple[int, ...]        # feature columns the corrections use (empty: reuse)
    weights: np.ndarray = field(repr=False)
    feature_mean: np.ndarray = field(repr=False)
    feature_scale: np.ndarray = field(repr=False)
    lam: float | None               # chosen ridge penalty (None: reuse)
    cv_error_reuse: float           # leave-one-out mean squared error of log latency
    cv_error_adapt: float
    sigma: float                    # leave-one-out residual std (log) of the chosen model
    samples: int
    floor: float                    # smallest prediction (ms model), a fraction of the samples
    source: str = "predictor"       # what the map reads: the proxy "predictor" or "measured"

    def predict(self, proxy_latency: np.ndarray, features: np.ndarray,
                measured: np.ndarray | None = None) -> np.ndarray:
        """Predicted target latency (same unit as the samples), always > 0. `proxy_latency`
        is the proxy predictor's output; `measured` the proxy's measured latency, needed
        when the calibration was fitted on it (`source == "measured"`)."""
        if self.source == "measured":
            if measured is None:
                raise ValueError("this calibration maps the proxy's measured latency: pass it")
            proxy_latency = measured
        proxy_latency = np.asarray(proxy_latency, float)
        x = np.log(proxy_latency) if self.space == "log" else proxy_latency
        out = self.intercept + self.proxy_slope * x
        if self.columns:
            f = np.asarray(features, float)[..., list(self.columns)]
            out = out + ((f - self.feature_mean) / self.feature_scale) @ self.weights
        return np.exp(out) if self.space == "log" else np.maximum(out, self.floor)

    def summary(self) -> dict:
        return {"path": self.path, "reason": self.reason, "space": self.space,
                "source": self.source,
                "rho": self.rank.rho, "rho_low": self.rank.low, "rho_high": self.rank.high,
                "lambda": self.lam, "columns": list(self.columns),
                "cv_error_reuse": self.cv_error_reuse, "cv_error_adapt": self.cv_error_adapt}


@dataclass(frozen=True)
class _Fits:
    """Every penalty of one (space, feature block) for a batch of B targets: errors are LOO
    errors of log latency (B, L), so spaces compare on one scale; `ok` (B, L) marks the fits
    allowed (effective parameters, positive proxy slope for a reuse)."""

    space: str
    columns: tuple[int, ...]
    lams: tuple                     # per penalty: lambda, or None (reuse)
    error: np.ndarray
    ok: np.ndarray
    w: np.ndarray                   # (B, L, 2 + len(columns))
    mean: np.ndarray
    scale: np.ndarray
    loo_log: np.ndarray             # (B, L, K)


def _fit_many(proxy: np.ndarray, target: np.ndarray, features: np.ndarray, space: str,
              columns: tuple[int, ...], lambdas: tuple[float, ...], floor: np.ndarray,
              max_dof: float = math.inf) -> _Fits:
    """`target` (B, K), `floor` (B,); the proxy and features are the same for the batch.
    Penalties scale with K and (ms) the squared mean."""
    f = features[:, list(columns)]
    mean, scale = f.mean(axis=0), f.std(axis=0)
    keep = scale > 1e-12
    columns = tuple(c for c, k in zip(columns, keep, strict=True) if k)
    mean, scale, f = mean[keep], scale[keep], f[:, keep]
    B, n = target.shape
    x, y = (np.log(proxy), np.log(target)) if space == "log" else (proxy, target)
    X0 = np.broadcast_to(np.column_stack([np.ones(n), x]), (B, n, 2))
    Z = np.broadcast_to((f - mean) / scale, (B, n, len(columns)))
    # "rel": the linear model fitted on relative errors (rows divided by the latency), for
    # latencies spanning orders of magnitude, where plain least squares serves the largest
    weight = 1.0 / target if space == "rel" else np.ones((B, n))
    unit = np.mean(y, axis=1) ** 2 if space == "ms" else np.ones(B)
    grid = tuple(lambdas) if columns else (0.0,)
    W, loo, dof = ridge_path(X0 * weight[..., None], Z * weight[..., None], y * weight,
                             np.array(grid)[None, :] * n / 20 * unit[:, None])
    if space != "log":
        loo = loo / weight[:, None, :]
        loo = np.log(target)[:, None, :] - np.log(np.maximum(target[:, None, :] - loo,
                                                             floor[:, None, None]))
    error = np.mean(loo ** 2, axis=-1)
    return _Fits(space, columns, grid if columns else (None,), error, dof <= max_dof, W,
                 mean, scale, loo)


def fit_transfer(proxy: np.ndarray, features: np.ndarray, target: np.ndarray,
                 blocks: list[tuple[int, ...]] | None = None,
                 lambdas: tuple[float, ...] = LAMBDAS, margin: float = 0.05,
                 level: float = 0.9, dof_ratio: float = 0.8,
                 measured: np.ndarray | None = None,
                 spaces: tuple[str, ...] = SPACES) -> Transfer:
    """Fit reuse and the adaptations on the K samples; keep what cross-validation prefers.

    `proxy`: the proxy predictor's latency of the K sampled designs, `target` their measured
    target latency (both > 0); `features`: (K, d) design features; `blocks`: groups of feature
    columns an adaptation may use (default: all as one block); every block alone and all
    blocks together are tried, in both spaces, with at most `dof_ratio * K` effective
    parameters. `measured`: the proxy's measured latency of the samples, if known: reuse may
    then calibrate it instead of the predictor (for a target exactly monotone in the proxy)."""
    return fit_transfers(proxy, features, np.asarray(target, float)[None, :], blocks, lambdas,
                         margin, level, dof_ratio, measured, spaces)[0]


def fit_transfers(proxy: np.ndarray, features: np.ndarray, targets: np.ndarray,
                  blocks: list[tuple[int, ...]] | None = None,
                  lambdas: tuple[float, ...] = LAMBDAS, margin: float = 0.05,
                  level: float = 0.9, dof_ratio: float = 0.8,
                  measured: np.ndarray | None = None,
                  spaces: tuple[str, ...] = SPACES) -> list[Transfer]:
    """`fit_transfer` for B targets measured on the same K designs (`targets`: (B, K)), every
    fit done for the whole batch at once: many devices calibrated from one proxy."""
    proxy, targets = np.asarray(proxy, float), np.asarray(targets, float)
    features = np.asarray(features, float).reshape(len(proxy), -1)
    floors = 0.05 * np.min(targets, axis=1)
    all_columns = tuple(range(features.shape[1]))
    blocks = [tuple(b) for b in (blocks or [all_columns]) if len(b)]
    if len(blocks) > 1:
        blocks.append(all_columns)
    sources = {"predictor": proxy}
    if measured is not None:
        sources["measured"] = np.asarray(measured, float)
    reuse = [(name, _fit_many(x, targets, features, space, (), (), floors))
             for name, x in sources.items() for space in spaces]
    max_dof = max(2.5, dof_ratio * targets.shape[1])
    adapt = [_fit_many(proxy, targets, features, space, block, lambdas, floors, max_dof)
             for space in spaces for block in (blocks if targets.shape[1] >= 4 else [])]
    # candidates in a fixed order; the first of least error wins (a non-increasing map would
    # reverse the proxy's ranking: not a reuse)
    B = len(targets)
    reuse_err = _errors([f for _, f in reuse], [f.w[..., 1] > 0 for _, f in reuse], B)
    adapt_err = _errors(adapt, [np.ones_like(f.ok) for f in adapt], B)
    out = []
    for i, target in enumerate(targets):
        r = int(np.argmin(reuse_err[i])) if reuse_err.shape[1] else -1
        a = int(np.argmin(adapt_err[i])) if adapt_err.shape[1] else -1
        best_reuse = _pick([(name, f) for name, f in reuse], r, reuse_err[i], i)
        best_adapt = _pick([(None, f) for f in adapt], a, adapt_err[i], i)
        out.append(_transfer(proxy, target, level, margin, floors[i], best_reuse, best_adapt))
    return out


def _errors(fits: list[_Fits], extra: list[np.ndarray], B: int) -> np.ndarray:
    """(B, candidates) errors in candidate order, inf where a fit is not allowed."""
    if not fits:
        return np.zeros((B, 0))
    return np.concatenate([np.where(f.ok & e & ~np.isnan(f.error), f.error, np.inf)
                           for f, e in zip(fits, extra, strict=True)], axis=1)


def _pick(fits: list[tuple], index: int, errors: np.ndarray, i: int):
    """(source, space, columns, lam, w, mean, scale, loo_log, error) of candidate `index` for
    target i, or None when no candidate is allowed."""
    if index < 0 or not np.isfinite(errors[index]):
        return None
    for name, f in fits:
        if index < len(f.lams):
            return (name, f.space, f.columns, f.lams[index], f.w[i, index], f.mean, f.scale,
                    f.loo_log[i, index], float(f.error[i, index]))
        index -= len(f.lams)
    raise IndexError(index)


def _transfer(proxy, target, level, margin, floor, best_reuse, best_adapt) -> Transfer:
    rank = rank_correlation(proxy, target, level)
    err_reuse = best_reuse[-1] if best_reuse else math.inf
    err_adapt = best_adapt[-1] if best_adapt else math.inf
    source = best_reuse[0] if best_reuse else "predictor"
    rho_txt = f"rank correlation {rank.rho:.2f} [{rank.low:.2f}, {rank.high:.2f}]"
    # the absolute term keeps an exact reuse (errors at rounding level) from "improving"
    if best_adapt is not None and err_adapt < (1.0 - margin) * err_reuse - 1e-8:
        chosen, path, source = best_adapt, "adapt", "predictor"
        reason = (f"{rho_txt}; adapting {len(chosen[2])} feature corrections "
                  f"({chosen[1]} model, lambda {chosen[3]:g}) lowers the leave-one-out "
                  f"error {err_reuse:.3g} -> {err_adapt:.3g}")
    elif best_reuse is not None:
        chosen, path = best_reuse, "reuse"
        reason = (f"{rho_txt}; adaptation does not lower the leave-one-out error "
                  f"({err_reuse:.3g} vs {err_adapt:.3g}): monotone {chosen[1]} "
                  f"calibration of the proxy's {source} latency")
    else:  # every fitted map decreases: keep the proxy's order, scaled by a constant
        ratio = float(np.mean(np.log(target) - np.log(proxy)))
        chosen = (None, "log", (), None, np.array([ratio, 1.0]), np.zeros(0), np.ones(0),
                  np.log(target) - np.log(proxy) - ratio, math.inf)
        path, reason = "reuse", f"{rho_txt}; fitted slope not positive: proxy scaled by a constant"
    _, space, columns, lam, w, mean, scale, loo_log, _ = chosen
    return Transfer(path, reason, rank, space, float(w[0]), float(w[1]), columns, w[2:], mean,
                    scale, lam, err_reuse, err_adapt, float(np.sqrt(np.mean(loo_log ** 2))),
                    len(target), float(floor), source)


@dataclass(frozen=True)
class ProxyPredictor:
    """The proxy's own predictor: latency (ms) linear in the design features, fitted on every
    measured proxy design. Smoother than the raw measurements (whole-ms phone timings, noise),
    and it ranks other devices' designs better than the raw proxy column does."""

    intercept: float
    weights: np.ndarray = field(repr=False)
    floor: float
    rows: int
    r2: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.maximum(self.intercept + np.asarray(features, float) @ self.weights, self.floor)


def fit_proxy_predictor(features: np.ndarray, latency: np.ndarray) -> ProxyPredictor:
    """Least squares on the rows where the latency and every feature are known."""
    features, latency = np.asarray(features, float), np.asarray(latency, float)
    ok = np.isfinite(latency) & (latency > 0) & np.all(np.isfinite(features), axis=1)
    if ok.sum() < features.shape[1] + 2:
        raise ValueError(f"{ok.sum()} proxy rows: too few to fit {features.shape[1]} features")
    X = np.column_stack([np.ones(int(ok.sum())), features[ok]])
    w = np.linalg.lstsq(X, latency[ok], rcond=None)[0]
    residual = latency[ok] - X @ w
    r2 = 1.0 - float(residual @ residual) / float(np.sum((latency[ok] - latency[ok].mean()) ** 2))
    return ProxyPredictor(float(w[0]), w[1:], float(np.min(latency[ok])), int(ok.sum()), r2)


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


_COMPUTE = ("conv", "dwconv", "gemm")   # classes priced mostly by MACs; the rest is memory-bound
_FALLBACK = "fallback"                  # the memory-traffic fallback's costs (KernelPredictor)


def _kind_class(kind: str) -> str:
    cls = kind.split("/")[0]
    return cls if cls in _COMPUTE else "other"


def _kind_groups(kinds: list[str]) -> tuple[np.ndarray, list[tuple[int, ...]], list[str]]:
    """Membership of kernel kinds (`conv/int8`) in feature groups: one per compute class
    (conv, dwconv, gemm, other: few groups, so that K designs can learn them), one per
    precision. Returns (groups x kinds) 0/1, blocks, group names."""
    classes = sorted({_kind_class(k) for k in kinds})
    precisions = sorted({k.split("/")[-1] for k in kinds if "/" in k})
    names = [f"class:{c}" for c in classes] + [f"precision:{p}" for p in precisions]
    member = np.array([[_kind_class(k) == c for k in kinds] for c in classes]
                      + [[("/" in k and k.split("/")[-1] == p) for k in kinds]
                         for p in precisions], dtype=float).reshape(len(names), len(kinds))
    blocks = [tuple(range(len(classes))), tuple(range(len(classes), len(names)))]
    return member, [b for b in blocks if b], names


def cost_kinds(proxy) -> list[str]:
    """The kernel kinds a calibration scales: the proxy's, plus its memory-traffic fallback as
    one more kind of the "other" class (scaled with it)."""
    return sorted(proxy.weights) + ([_FALLBACK] if proxy.fallback is not None else [])


def design_costs(proxy, units) -> tuple[float, np.ndarray, str | None]:
    """The proxy's price of one design: (latency, cost per kind of `cost_kinds(proxy)` (the
    fallback's last), the first kernel it cannot price or None). The devices of a fleet
    measure the same probe designs: a caller that calibrates many of them prices each design
    once and passes the rows to `calibrate_kernel_predictor` (`costs=`)."""
    kinds = cost_kinds(proxy)
    pred = proxy.predict_units(units)
    per_kind = np.zeros(len(kinds))
    for cost in pred.kernels:
        per_kind[kinds.index(_FALLBACK if cost.fallback else cost.kind)] += cost.latency_ms
    return pred.latency_ms, per_kind, pred.unknown[0] if pred.unknown else None


def calibrate_kernel_predictor(proxy, designs: list, latency_ms, meta: dict | None = None,
                               costs: list | None = None):
    """A target's kernel-level predictor from the proxy's and K measured designs.

    `proxy`: a `KernelPredictor`; `designs`: each a list of `Unit`s; `latency_ms`: measured on
    the target; `costs`: `design_costs(proxy, d)` of each design, when the caller has them.
    Features are the proxy's predicted cost of each design per operator class and
    per precision; the transfer (linear form, so the result stays additive over kernels) gives
    t = a + b p + sum_j c_j (f_j - mean_j) / scale_j, i.e. every kernel kind's proxy weights
    times m_kind = b + sum of its groups' c_j / scale_j (clipped at 0: no negative costs), and
    a new per-model constant. Designs with a kernel the proxy cannot price are left out (listed
    in meta). Returns (KernelPredictor, Transfer)."""
    if costs is None:
        costs = [design_costs(proxy, units) for units in designs]
    return calibrate_kernel_predictors(proxy, costs, [latency_ms], [meta])[0]


def calibrate_kernel_predictors(proxy, costs: list, latencies: list, metas: list) -> list:
    """`calibrate_kernel_predictor` for many targets that measured the same designs
    (`costs`: `design_costs` of each design; `latencies`: per target, its latency of each
    design; `metas`: per target): the transfers are fitted for all of them at once
    (`fit_transfers`). Returns [(KernelPredictor, Transfer)] in the order of `latencies`."""
    from toolchain.errors import BadInputError

    kinds = cost_kinds(proxy)
    member, blocks, names = _kind_groups(kinds)
    priced = [i for i, c in enumerate(costs) if c[2] is None]
    skipped = [c[2] for c in costs if c[2] is not None]
    if len(priced) < 3:
        raise BadInputError(f"{len(priced)} measured designs the proxy predictor can price "
                            "(at least 3 are needed)")
    Y = np.array([[float(t[i]) for i in priced] for t in latencies]).reshape(-1, len(priced))
    p = np.array([costs[i][0] for i in priced])
    per_kind = np.array([costs[i][1] for i in priced])
    transfers = fit_transfers(p, per_kind @ member.T, Y, blocks, spaces=LINEAR)
    return [(_scaled(proxy, kinds, member, names, per_kind, y, tr, skipped, meta), tr)
            for y, tr, meta in zip(Y, transfers, metas, strict=True)]


def _scaled(proxy, kinds: list[str], member: np.ndarray, names: list[str],
            per_kind: np.ndarray, y: np.ndarray, tr: Transfer, skipped: list, meta: dict | None):
    """The proxy's predictor with each kind's weights scaled as the transfer `tr` says."""
    from toolchain.predict.kernel import KernelPredictor

    scale = np.full(len(kinds), tr.proxy_slope)
    const = tr.intercept + tr.proxy_slope * float(proxy.model.get("model", 0.0))
    for j, column in enumerate(tr.columns):
        step = tr.weights[j] / tr.feature_scale[j]
        scale += step * member[column]
        const -= step * tr.feature_mean[j]
    # a negative per-model constant would price tiny models below zero: keep it at >= 0
    const = max(const, 0.0)
    clipped = [k for k, m in zip(kinds, scale, strict=True) if m < 0]
    scale = np.maximum(scale, 0.0)
    weights = {k: {f: w * float(m) for f, w in proxy.weights[k].items()}
               for k, m in zip(kinds, scale, strict=True) if k != _FALLBACK}
    model = {**proxy.model, "model": float(const)}
    fallback = None if proxy.fallback is None else {
        f: w * float(scale[kinds.index(_FALLBACK)]) for f, w in proxy.fallback.items()}
    out = KernelPredictor(weights, model, dict(meta or {}), fallback)
    # the calibrated predictor prices a design as const + its per-kind proxy costs x scale
    fitted = const + per_kind @ scale
    rel = np.abs(fitted - y) / y
    out.meta.update({
        "kinds": [k for k in kinds if k != _FALLBACK],
        "fallback": out.meta.get("fallback", proxy.meta.get("fallback")),
        "calibration": {**tr.summary(), "proxy": proxy.name, "samples": len(y),
                        "skipped": list(skipped), "clipped_kinds": clipped,
                        "groups": names, "scales": dict(zip(kinds, map(float, scale),
                                                            strict=True))},
        "held_out": {"folds": 0, "leave_one_out_rmse_log": tr.sigma,
                     "note": "calibrated on few designs: leave-one-out error of the chosen map"},
        "training_fit": {"designs": len(y), "median_abs_rel_err": float(np.median(rel)),
                         "within_10pct": float(np.mean(rel <= 0.10))},
        "training": {**dict(meta or {}).get("training", {}), "designs": len(y)},
    })
    return out
