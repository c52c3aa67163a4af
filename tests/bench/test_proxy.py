"""Proxy transfer: the method (toolchain.predict.transfer), the reference, and `bench proxy`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.bench.proxy import (
    ProxyOptions,
    cell_features,
    design_features,
    fit_proxy_weights,
    fit_reference,
    pareto_rows,
    reference_features,
    run_proxy,
)
from toolchain.bench.scores import spearman
from toolchain.bench.table import load_table
from toolchain.cli import cli
from toolchain.predict.transfer import (
    fit_transfer,
    fixed_selection,
    rank_correlation,
    ridge_path,
)

DATA = Path(__file__).resolve().parents[2] / "data"


def _synthetic(tmp_path, n=600, seed=0) -> Path:
    """A table in the protocol's format with names unlike any published file: 8 layers with
    4 block types; devices are additive in per-layer block costs, on different cost tables."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(n, 8))
    width = np.linspace(1.0, 3.0, 8)                       # later layers cost more
    def device(costs, noise):
        lat = (np.asarray(costs)[codes] * width).sum(axis=1) + 2.0
        return lat * np.exp(rng.normal(0, noise, n))
    base = device([0.2, 1.0, 2.0, 3.5], 0.01)
    columns = {
        "lat_alpha": base,
        "lat_beta": 0.5 * base ** 1.2,                     # same ranking: reuse
        "lat_gamma": device([2.0, 0.5, 1.0, 0.8], 0.01),   # other op costs: ranks differently
        "lat_delta": device([0.3, 1.2, 1.9, 3.0], 0.03),
        "acc_top1": 50 + 2.0 * codes.sum(axis=1) ** 0.8 + rng.normal(0, 0.3, n),
    }
    header = ["design_idx", "label"] + [f"blk{j}" for j in range(8)] + list(columns)
    lines = [",".join(header)]
    for i in range(n):
        cells = [str(i), f"net{i}"] + [str(c) for c in codes[i]]
        cells += [f"{columns[c][i]:.5f}" for c in columns]
        lines.append(",".join(cells))
    path = tmp_path / "synthetic.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ the method

def test_monotone_target_keeps_the_proxy_ranking():
    rng = np.random.default_rng(1)
    proxy = rng.uniform(1, 20, 20)
    features = rng.integers(0, 4, size=(20, 5)).astype(float)
    target = 3.0 * proxy ** 0.9 * np.exp(rng.normal(0, 0.01, 20))
    tr = fit_transfer(proxy, features, target)
    assert tr.path == "reuse", tr.reason
    assert "monotone" in tr.reason and tr.rank.rho > 0.95
    grid = rng.uniform(1, 20, 200)
    pred = tr.predict(grid, rng.integers(0, 4, size=(200, 5)).astype(float))
    assert spearman(pred, grid) == pytest.approx(1.0)
    assert np.allclose(tr.predict(proxy, features), target, rtol=0.05)


def test_structure_the_proxy_misses_is_adapted():
    rng = np.random.default_rng(2)
    features = rng.integers(0, 4, size=(400, 4)).astype(float)
    proxy = features @ [1.0, 2.0, 3.0, 0.5] + 1.0
    target = features @ [3.0, 0.5, 1.0, 2.0] + 2.0
    rows = np.arange(20)
    tr = fit_transfer(proxy[rows], features[rows], target[rows])
    assert tr.path == "adapt", tr.reason
    assert tr.cv_error_adapt < tr.cv_error_reuse
    held = np.arange(20, 400)
    assert spearman(tr.predict(proxy[held], features[held]), target[held]) > 0.95
    assert spearman(proxy[held], target[held]) < 0.8


def test_rank_correlation_interval():
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    y = x + rng.normal(0, 0.5, 200)
    small, large = rank_correlation(x[:10], y[:10]), rank_correlation(x, y)
    for est in (small, large):
        assert est.low < est.rho < est.high
    assert large.high - large.low < small.high - small.low
    assert rank_correlation(x[:3], y[:3]).low == -1.0


def test_ridge_path_matches_the_normal_equations():
    rng = np.random.default_rng(4)
    X0 = np.column_stack([np.ones(15), rng.normal(size=15)])
    Z = rng.normal(size=(15, 4))
    y = rng.normal(size=15)
    W, loo, dof = ridge_path(X0, Z, y, np.array([0.0, 2.0]))
    X = np.column_stack([X0, Z])
    for i, lam in enumerate([0.0, 2.0]):
        A = X.T @ X + np.diag([0, 0, lam, lam, lam, lam])
        w = np.linalg.solve(A, X.T @ y)
        H = X @ np.linalg.solve(A, X.T)
        np.testing.assert_allclose(W[i], w, atol=1e-8)
        np.testing.assert_allclose(loo[i], (y - X @ w) / (1 - np.diag(H)), atol=1e-8)
        assert dof[i] == pytest.approx(np.trace(H))


def test_fixed_selection_is_deterministic_and_spread():
    rng = np.random.default_rng(5)
    proxy = rng.uniform(1, 100, 1000)
    features = rng.integers(0, 3, size=(1000, 4)).astype(float)
    rows = np.arange(1000)
    a = fixed_selection(rows, proxy, features, 10)
    assert np.array_equal(a, fixed_selection(rows, proxy, features, 10))
    assert len(set(a.tolist())) == 10
    strata = np.searchsorted(np.quantile(proxy, np.linspace(0, 1, 11)[1:-1]), proxy[a])
    assert sorted(strata.tolist()) == list(range(10))   # one per proxy-latency decile


def test_pareto_rows_are_the_nondominated_designs():
    latency = np.array([1.0, 2.0, 3.0, 2.5, 4.0])
    objective = np.array([10.0, 12.0, 11.0, 15.0, 15.0])
    assert pareto_rows(latency, objective, np.ones(5, bool)).tolist() == [0, 1, 3]


# ------------------------------------------------------------------ the reference

def test_cell_features_follow_the_reference_definition():
    # 0->1 conv3x3, 0->2 none, 1->2 none, 0->3 skip, 1->3 none, 2->3 conv1x1: node 2 is
    # unreachable, so the 2->3 conv1x1 is neither on a path nor reached from the input.
    codes = np.array([[3, 0, 0, 1, 0, 2]])
    on_path, reached = cell_features(codes)[0, :4], cell_features(codes)[0, 4:]
    assert on_path.tolist() == [1, 0, 0, 0]   # skip 0->3 only; conv3x3 0->1 dead-ends at 1
    assert reached.tolist() == [1, 0, 1, 0]


def test_reference_features_on_nb201_are_the_39_defined_ones():
    table = load_table([DATA / "nb201.csv.gz"])
    X = reference_features(table)
    assert X.shape == (table.n_rows, 39)
    assert np.all(X[:, :30].reshape(-1, 6, 5).sum(axis=2) == 1)   # one op per edge
    assert np.all(X[:, -1] == 1)


def test_reference_recovers_a_scaled_proxy():
    rng = np.random.default_rng(6)
    X = np.column_stack([rng.integers(0, 2, size=(300, 6)), np.ones(300)]).astype(float)
    proxy = X @ np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.7, 2.0])
    w_p = fit_proxy_weights(X, proxy)
    ref = fit_reference(X[:20], w_p, 2.5 * proxy[:20] + 1.0)
    np.testing.assert_allclose(ref.predict(X), 2.5 * proxy + 1.0, rtol=1e-3)


# ------------------------------------------------------------------ the bench

def test_bench_proxy_json_follows_the_protocol(tmp_path):
    data = _synthetic(tmp_path)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, [
        "bench", "proxy", "--data", str(data), "--proxy", "lat_alpha", "--samples", "12",
        "--verify", "4", "--objective", "acc_top1", "--budgets", "0.2,0.5", "--seeds", "2",
        "--json", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert (r["proxy"], r["samples"], r["verify"], r["seeds"]) == ("lat_alpha", 12, 4, 2)
    assert set(r["targets"]) == {"lat_beta", "lat_gamma", "lat_delta"}
    for name, t in r["targets"].items():
        assert t["measurements"] <= 12 + 4
        assert t["path"] in ("reuse", "adapt")
        assert set(t["regret"]) == set(t["violation_rate"]) == {"0.2", "0.5"}
        assert t["spearman"] >= t["raw_spearman"] - 0.02, name
    assert r["targets"]["lat_beta"]["path"] == "reuse"
    assert r["targets"]["lat_beta"]["spearman"] > 0.99
    assert r["targets"]["lat_gamma"]["path"] == "adapt"
    assert r["targets"]["lat_gamma"]["spearman"] > r["targets"]["lat_gamma"]["raw_spearman"] + 0.1
    assert 0 <= r["violation_rate"] <= 1 and r["median_regret"] is not None
    assert {"median_regret", "violation_rate", "near_violation_rate"} <= set(r["direct"])
    assert r["pareto"]["size"] > 0 and r["pareto"]["measurements_per_target"] == 16


def test_verification_reads_at_most_k_plus_v_cells(tmp_path):
    table = load_table([_synthetic(tmp_path, n=300)])
    opts = ProxyOptions(proxy="lat_alpha", targets=("lat_gamma",), samples=8, verify=3,
                        objective="acc_top1", budgets=(0.1, 0.3, 0.6), seeds=2)
    r = run_proxy(table, opts)
    assert 8 < r["targets"]["lat_gamma"]["measurements"] <= 11
    direct = run_proxy(table, ProxyOptions(**{**opts.__dict__, "verify": 0}))
    assert direct["targets"]["lat_gamma"]["measurements"] == 8
    assert r["violation_rate"] <= direct["violation_rate"]


@pytest.mark.parametrize("args, message", [
    (["--proxy", "lat_nope"], "unknown column 'lat_nope'"),
    (["--proxy", "lat_alpha", "--targets", "acc_top1"], "expected a latency column"),
    (["--proxy", "lat_alpha", "--targets", "lat_alpha"], "also a target"),
    (["--proxy", "lat_alpha", "--objective", "lat_beta"], "expected a objective column"),
    (["--proxy", "lat_alpha", "--budgets", "0.5,1.5"], "strictly between"),
    (["--proxy", "lat_alpha", "--verify", "3"], "--verify needs --objective"),
])
def test_bad_options_exit_2(tmp_path, args, message):
    data = _synthetic(tmp_path, n=50)
    result = CliRunner().invoke(cli, ["bench", "proxy", "--data", str(data), "--samples", "5",
                                      "--seeds", "1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_nb201_transfer_beats_raw_proxy_and_reference():
    """A slice of the issue's benchmark (4 targets of different device classes, K = 20)."""
    table = load_table([DATA / "nb201.csv.gz"])
    targets = ("lat_1080ti_1", "lat_gold_6240", "lat_eagle_jetson_nano", "lat_pi5_onnx_cifar100")
    ours = run_proxy(table, ProxyOptions("lat_pixel3", targets, samples=20, seeds=1))
    ref = run_proxy(table, ProxyOptions("lat_pixel3", targets, samples=20, seeds=3,
                                        method="reference", selection="random"))
    for name, t in ours["targets"].items():
        assert t["spearman"] >= t["raw_spearman"] - 0.02, name
    assert ours["mean_spearman"] > ref["mean_spearman"]
    assert ours["mean_spearman"] > 0.88


def test_design_features_do_not_depend_on_column_names(tmp_path):
    table = load_table([DATA / "nb201.csv.gz"])
    features, blocks = design_features(table)
    assert features.shape == (table.n_rows, 12) and [len(b) for b in blocks] == [4, 4, 4]
