"""The device-conditioned predictor's posterior: the same in sample and weight space, every
sample used, calibrated intervals (synthetic devices, built in code)."""
from __future__ import annotations

import numpy as np
import pytest

from toolchain.errors import BadInputError
from toolchain.predict.conditioned import Z90, _average, _fit_large, _fit_small, fit_conditioned


def _devices(n_dev: int = 9, n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 5, (n, 6)).astype(float)
    cost = rng.uniform(0.1, 2.0, (5, n_dev)) * rng.uniform(0.5, 2.0, n_dev)
    lat = 1.0 + cost[codes.astype(int)].sum(axis=1)
    return codes, lat * np.exp(0.03 * rng.standard_normal(lat.shape))


def test_sample_and_weight_space_agree():
    codes, lat = _devices()
    p = fit_conditioned(codes, lat[:, :8], n_reference=5)
    F = p.features(codes[:30])
    prior = F @ p.mean
    resid = lat[:30, 8] / float(prior @ lat[:30, 8] / (prior @ prior)) - prior
    small = _fit_small(F, resid, prior, p.spread, p.cov - p.spread)
    large = _fit_large(F, resid, prior, p.spread, p.cov - p.spread)
    assert small[2] == pytest.approx(large[2], rel=1e-9)
    np.testing.assert_allclose(small[0], large[0], atol=1e-9)
    np.testing.assert_allclose(small[1], large[1], atol=1e-9)


def test_model_average_has_the_mixtures_mean_and_variance():
    rng = np.random.default_rng(3)
    parts = [(rng.standard_normal(4), np.diag(rng.uniform(0.1, 1.0, 4)), s2)
             for s2 in (1e-3, 1e-2, 1e-1)]
    evidence = [0.0, np.log(3.0), -50.0]    # weights 1/4, 3/4 and ~0 (left out)
    mean, cov, sigma2 = _average(evidence, lambda i: parts[i])
    x = rng.standard_normal(4)
    w = np.array([0.25, 0.75])
    means = np.array([x @ m for m, _, _ in parts[:2]])
    var = np.array([x @ c @ x for _, c, _ in parts[:2]])
    assert x @ mean == pytest.approx(w @ means)
    assert x @ cov @ x == pytest.approx(w @ (var + means ** 2) - (w @ means) ** 2)
    assert sigma2 == pytest.approx(0.25e-3 + 0.75e-2)


def test_posterior_sharpens_with_samples_and_intervals_hold():
    codes, lat = _devices()
    p = fit_conditioned(codes, lat[:, :8], n_reference=5)
    F, y = p.features(codes), lat[:, 8]
    rng = np.random.default_rng(1)
    order = rng.permutation(len(y))
    widths = []
    for k in (2, 10, 100, 1000):
        post = p.posterior(F[order[:k]], y[order[:k]])
        mean, sd = post.predict(F[order[k:]])
        inside = np.mean(np.abs(y[order[k:]] - mean) <= Z90 * sd)
        if k >= 100:   # with a few samples the prior's width dominates: wider, not narrower
            assert 0.85 <= inside <= 0.95, (k, inside)
        else:
            assert inside >= 0.75, (k, inside)
        widths.append(float(np.median(sd / mean)))
    assert widths == sorted(widths, reverse=True)


def test_posterior_rejects_no_or_bad_samples():
    codes, lat = _devices()
    p = fit_conditioned(codes, lat[:, :8], n_reference=5)
    with pytest.raises(BadInputError):
        p.posterior(p.features(codes[:0]), np.array([]))
    with pytest.raises(BadInputError):
        p.posterior(p.features(codes[:2]), np.array([1.0, -1.0]))
