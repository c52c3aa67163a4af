"""`fleetc bench fewshot` and the device-conditioned predictor, on a synthetic cell table.

The table is built in code: every NAS-Bench-201 cell code, devices whose latency is a constant
plus per-op costs of the edges they execute - "eager" devices run every non-none edge, "pruned"
devices only live edges (as graph runtimes do) - with 2% noise, and a synthetic accuracy.
"""
from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.bench.fewshot import (
    DeviceContext,
    FewshotOptions,
    run_fewshot,
    single_thread,
    tie_cap,
)
from toolchain.bench.table import load_table
from toolchain.cli import cli
from toolchain.predict.conditioned import ConditionedPredictor, cell_reach

TRAIN = tuple(f"lat_train{i}" for i in range(8))
TEST = ("lat_test_eager", "lat_test_pruned", "lat_test_mixed")


def _device(codes: np.ndarray, rng: np.random.Generator, pruned: float) -> np.ndarray:
    src_ok, dst_ok = cell_reach(codes)
    live = (codes != 0) & src_ok & dst_ok
    executed = np.where(pruned > 0.5, live, codes != 0)
    cost = np.r_[0.0, rng.uniform(0.05, 0.3), rng.uniform(0.5, 1.5), rng.uniform(1.0, 3.0),
                 rng.uniform(0.2, 0.8)]
    lat = rng.uniform(2.0, 6.0) + (cost[codes] * executed).sum(axis=1)
    return lat * np.exp(0.02 * rng.standard_normal(len(codes)))


def write_synthetic_table(path, seed: int = 0, extra: dict | None = None) -> None:
    """CSV.gz with arch_idx, e0..e5, acc_syn and the TRAIN + TEST latency columns."""
    rng = np.random.default_rng(seed)
    codes = np.array(list(itertools.product(range(5), repeat=6)))
    columns = {f"lat_train{i}": _device(codes, rng, pruned=float(i >= 6)) for i in range(8)}
    columns["lat_test_eager"] = _device(codes, rng, 0.0)
    columns["lat_test_pruned"] = _device(codes, rng, 1.0)
    columns["lat_test_mixed"] = 0.5 * (_device(codes, rng, 0.0) + _device(codes, rng, 1.0))
    src_ok, dst_ok = cell_reach(codes)
    live = (codes != 0) & src_ok & dst_ok
    columns["acc_syn"] = 40 + 4 * ((codes == 3) & live).sum(1) + 2 * ((codes == 2) & live).sum(1) \
        + rng.normal(0, 0.5, len(codes))
    columns.update(extra or {})
    header = ["arch_idx"] + [f"e{j}" for j in range(6)] + list(columns)
    with gzip.open(path, "wt") as out:
        out.write(",".join(header) + "\n")
        for i, code in enumerate(codes):
            cells = [str(i)] + [str(v) for v in code] + [f"{columns[c][i]:.5f}" for c in columns]
            out.write(",".join(cells) + "\n")


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fewshot") / "syn.csv.gz"
    write_synthetic_table(path)
    return path


@pytest.fixture(scope="module")
def table(table_path):
    return load_table([table_path])


def test_ranks_unseen_devices_from_ten_cells(table):
    out = run_fewshot(table, FewshotOptions(TRAIN, TEST, samples=10, seeds=2))
    assert set(out["targets"]) == set(TEST)
    for name, entry in out["targets"].items():
        assert entry["measurements"] == 10, name
        assert entry["spearman"] > 0.9, (name, entry)
        assert entry["ceiling_spearman"] >= entry["spearman"] - 0.02, (name, entry)
        assert 0.0 <= entry["acc10"] <= 1.0
    assert out["mean_spearman"] > 0.93
    assert len(out["reference_designs"]) == 10


def test_reads_exactly_k_cells_below_and_above_the_fingerprint(table):
    for k in (1, 4, 14):
        for selection in ("fixed", "random"):
            out = run_fewshot(table, FewshotOptions(TRAIN, TEST[:1], samples=k, seeds=1,
                                                    selection=selection))
            assert out["targets"][TEST[0]]["measurements"] == k


def test_reference_method_reads_k_cells_and_is_reproducible(table):
    opts = FewshotOptions(TRAIN, TEST, samples=10, seeds=2, method="reference")
    first, second = run_fewshot(table, opts), run_fewshot(table, opts)
    assert all(t["measurements"] == 10 for t in first["targets"].values())
    assert first["mean_spearman"] == second["mean_spearman"]


def test_reference_designs_do_not_depend_on_test_columns(table_path, tmp_path):
    other = tmp_path / "other.csv.gz"
    rng = np.random.default_rng(9)
    write_synthetic_table(other, extra={"lat_unrelated": rng.uniform(1, 9, 5 ** 6)})
    a = DeviceContext(load_table([table_path]), TRAIN).predictor.reference
    b = DeviceContext(load_table([other]), TRAIN).predictor.reference
    np.testing.assert_array_equal(a, b)


def test_predictor_round_trip(table, tmp_path):
    ctx = DeviceContext(table, TRAIN)
    p = ctx.predictor
    y = table.column(TEST[1])
    fp = y[ctx.reference_rows]
    p.save(tmp_path / "pkg")
    loaded = ConditionedPredictor.load(tmp_path / "pkg")
    codes = table.encoding_matrix()[:50]
    np.testing.assert_allclose(loaded.predict(codes, fp[None]), p.predict(codes, fp[None]))
    F = ctx.features[ctx.reference_rows]
    np.testing.assert_allclose(loaded.posterior(F, fp).weights, p.posterior(F, fp).weights)


def test_more_samples_never_hurt_and_intervals_hold(table):
    """Random samples (nested in K): the mean Spearman does not fall as K grows and the 90%
    intervals hold 80-97% of the held-out rows at K = 60 (with fewer samples the prior's
    width dominates and they hold more); K = 1 (below the fingerprint) works too."""
    means = []
    for k in (1, 5, 20, 60):
        out = run_fewshot(table, FewshotOptions(TRAIN, TEST, samples=k, seeds=3,
                                                selection="random"))
        assert all(t["measurements"] == k for t in out["targets"].values())
        assert out["mean_spearman_std"] > 0   # seeds draw different rows
        if k > 1:
            high = 0.97 if k == 60 else 1.0
            assert 0.8 <= out["coverage90"] <= high, (k, out["coverage90"])
        means.append(out["mean_spearman"])
    assert all(b >= a - 0.005 for a, b in zip(means[:-1], means[1:], strict=True)), means
    assert means[-1] > 0.95


def test_fixed_selection_is_the_same_for_every_seed(table):
    out = run_fewshot(table, FewshotOptions(TRAIN, TEST[:1], samples=12, seeds=2))
    entry = out["targets"][TEST[0]]
    assert entry["spearman_per_seed"][0] == entry["spearman_per_seed"][1]
    assert out["selection"] == "fixed" and entry["measurements"] == 12


def test_tie_cap_quantifies_whole_millisecond_timings():
    rng = np.random.default_rng(0)
    true = rng.uniform(3, 20, 5000)
    assert tie_cap(true) == pytest.approx(1.0)
    assert tie_cap(np.round(true / 4)) < 0.999


@pytest.mark.parametrize("args, needle", [
    (["--train", "lat_nope"], "lat_nope"),
    (["--train", ",".join(TRAIN), "--test", "lat_train0"], "both in --train and --test"),
    (["--train", "acc_syn"], "objective column"),
])
def test_bad_input_exits_2(table_path, args, needle):
    result = CliRunner().invoke(cli, ["bench", "fewshot", "--data", str(table_path), *args,
                                      "--seeds", "1"])
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_cli_writes_protocol_json(table_path, tmp_path):
    out = tmp_path / "fs.json"
    result = CliRunner().invoke(cli, ["bench", "fewshot", "--data", str(table_path), "--train",
                                      ",".join(TRAIN), "--test", TEST[0], "--samples", "10",
                                      "--seeds", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(out.read_text())
    assert {"samples", "seeds", "targets", "mean_spearman"} <= set(data)
    assert {"spearman", "spearman_std", "acc10", "ceiling_spearman", "fit_all_spearman",
            "coverage90", "measurements"} <= set(data["targets"][TEST[0]])
