"""`fleetc bench amortize` and the amortized optimizer, on the synthetic cell table of
test_fewshot (small training configuration: the bench's figures come from the real tables)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.bench.test_fewshot import (  # noqa: F401 (_one_blas_thread: autouse fixture)
    TEST,
    TRAIN,
    _one_blas_thread,
    write_synthetic_table,
)
from toolchain.bench.amortize import CURVE, AmortizeOptions, run_amortize
from toolchain.bench.fewshot import DeviceContext, single_thread
from toolchain.bench.table import load_table
from toolchain.cli import cli
from toolchain.optimize.amortized import (
    AmortizedOptimizer,
    DesignSpace,
    ExhaustiveSearch,
    TrainConfig,
    exhaustive_choice,
    synthetic_fingerprints,
    train_amortized,
)

SMALL = TrainConfig(devices=300, budgets_per_device=4, epochs=8)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("amortize") / "syn.csv.gz"
    write_synthetic_table(path, seed=1)
    return path


@pytest.fixture(scope="module")
def trained(table_path):
    with single_thread():
        table = load_table([table_path])
        ctx = DeviceContext(table, TRAIN)
        space = DesignSpace(table.encoding_matrix(), ctx.features, table.column("acc_syn"))
        return ctx, space, train_amortized(ctx.predictor, space, None, SMALL)


def test_exhaustive_choice_is_best_within_budget_else_fastest():
    pred = np.array([[1.0, 2.0, 3.0, 0.5], [5.0, 6.0, 7.0, 8.0]])
    objective = np.array([10.0, 30.0, 40.0, 5.0])
    chosen = exhaustive_choice(pred, objective, np.array([2.5, 1.0]))
    assert chosen.tolist() == [1, 0]   # best within 2.5; nothing within 1.0 -> fastest


def test_presorted_search_chooses_as_exhaustive_choice(trained):
    """The bench's timed search (designs sorted once, fingerprint basis) must be the same
    search as exhaustive_choice on the predictor's weights, allowed rows only."""
    ctx, space, _ = trained
    fp = synthetic_fingerprints(ctx.predictor, 50, seed=9, features=space.features) * 4.0
    pred = ctx.predictor.device_weights(fp) @ space.features.T
    budgets = np.quantile(pred, np.linspace(0.0, 0.7, len(fp)), axis=1).diagonal().copy()
    budgets[:3] = pred[:3].min(axis=1) * 0.5   # nothing within budget: the fastest
    allowed = np.isfinite(space.objective) & (np.arange(len(space.codes)) % 4 != 1)
    expected = exhaustive_choice(np.where(allowed, pred, np.inf),
                                 np.where(allowed, space.objective, -np.inf), budgets)
    search = ExhaustiveSearch(space, allowed, ctx.predictor)
    assert search.choose(ctx.predictor.device_weights(fp), budgets).tolist() == \
        expected.tolist()
    assert np.mean(search.choose_from_fingerprints(fp, budgets) == expected) >= 0.98


def test_choices_are_allowed_and_predicted_within_budget(trained):
    ctx, space, opt = trained
    fp = synthetic_fingerprints(ctx.predictor, 64, seed=3, features=space.features) * 7.0
    weights = ctx.predictor.device_weights(fp)
    pred = weights @ space.features.T
    budgets = np.quantile(pred, 0.3, axis=1)
    allowed = np.isfinite(space.objective) & (np.arange(len(space.codes)) % 3 != 0)
    rows = opt.choose(space, weights, fp, budgets, allowed)
    assert allowed[rows].all()
    lat = pred[np.arange(len(rows)), rows]
    assert np.all(lat <= budgets * (1 + 1e-6))
    # and close to the exhaustive optimum under the same predictor
    best = exhaustive_choice(np.where(allowed, pred, np.inf),
                             np.where(allowed, space.objective, -np.inf), budgets)
    gap = space.objective[best] - space.objective[rows]
    assert np.median(gap) <= 1.0


def test_fingerprint_path_matches_weights_path(trained):
    """choose_from_fingerprints does the predictor's weights and the network inputs inside
    the ONNX graph (float32); it must choose what choose() does from numpy weights."""
    ctx, space, opt = trained
    fp = synthetic_fingerprints(ctx.predictor, 200, seed=5, features=space.features) * 3.0
    weights = ctx.predictor.device_weights(fp)
    pred = weights @ space.features.T
    budgets = np.quantile(pred, np.random.default_rng(6).uniform(0.05, 0.6, len(fp)), axis=1)
    budgets = budgets[np.arange(len(fp)), np.arange(len(fp))]
    direct = opt.choose(space, weights, fp, budgets)
    fused = opt.choose_from_fingerprints(space, ctx.predictor, fp, budgets)
    assert np.mean(direct == fused) >= 0.97
    lat = pred[np.arange(len(fp)), fused]
    assert np.all((lat <= budgets * (1 + 1e-5)) | (fused == np.argmin(pred, axis=1)))


def test_no_feasible_candidate_falls_back_to_the_fastest(trained):
    """A budget below every predicted latency: the graph's sentinel wins (row -1) and the
    device falls back to exhaustive scoring, whose answer is then the fastest design; the
    other rows of the batch keep the graph's choice."""
    ctx, space, opt = trained
    fp = synthetic_fingerprints(ctx.predictor, 6, seed=8, features=space.features) * 2.0
    weights = ctx.predictor.device_weights(fp)
    pred = np.where(np.isfinite(space.objective), weights @ space.features.T, np.inf)
    budgets = np.quantile(pred[np.isfinite(pred)].reshape(6, -1), 0.4, axis=1)
    budgets[[1, 4]] = pred[[1, 4]].min(axis=1) * 0.5
    for rows in (opt.choose(space, weights, fp, budgets),
                 opt.choose_from_fingerprints(space, ctx.predictor, fp, budgets)):
        assert rows[1] == np.argmin(pred[1]) and rows[4] == np.argmin(pred[4])
        others = rows[[0, 2, 3, 5]]
        assert np.all(pred[[0, 2, 3, 5], others] <= budgets[[0, 2, 3, 5]] * (1 + 1e-5))


def test_onnx_export_round_trip(trained, tmp_path):
    ctx, space, opt = trained
    fp = synthetic_fingerprints(ctx.predictor, 5, seed=4, features=space.features)
    budgets = np.full(5, 1.0)
    opt.save(tmp_path / "opt")
    loaded = AmortizedOptimizer.load(tmp_path / "opt")
    np.testing.assert_array_equal(loaded.logits(fp, budgets), opt.logits(fp, budgets))
    np.testing.assert_array_equal(loaded.candidates, opt.candidates)
    assert opt.logits(fp, budgets).shape == (5, int(space.sizes.sum()))


def test_training_is_seeded(trained):
    ctx, space, opt = trained
    again = train_amortized(ctx.predictor, space, None, SMALL)
    assert again.onnx_model == opt.onnx_model


def test_bench_reads_at_most_k_plus_v_cells(table_path):
    table = load_table([table_path])
    opts = AmortizeOptions(TRAIN, TEST, "acc_syn", samples=10, verify=4, seeds=1,
                           selection="random", train_config=SMALL)
    out = run_amortize(table, opts)
    assert set(out["targets"]) == set(TEST)
    for entry in out["targets"].values():
        assert 10 < entry["measurements"] <= 14
        assert set(entry["regret"]) == {"0.1", "0.25", "0.5"}
    assert out["seconds_per_device"] > 0 and out["search_seconds_per_device"] > 0
    assert out["search"]["seconds_per_device"] == out["search_seconds_per_device"]
    for key in ("median_regret", "violation_rate", "near_violation_rate", "median_regret_std"):
        assert key in out["search"]
    assert [c["confidence"] for c in out["confidence_curve"]] == list(CURVE)


def test_higher_confidence_breaks_budgets_less_often(table_path):
    """Direct choice (V = 0): the curve's violations fall as the confidence asked rises, and
    at 0.99 few choices break their budget."""
    table = load_table([table_path])
    out = run_amortize(table, AmortizeOptions(TRAIN, TEST, "acc_syn", samples=10, seeds=1,
                                              selection="random", train_config=SMALL))
    curve = {c["confidence"]: c["violation_rate"] for c in out["confidence_curve"]}
    assert curve[0.99] <= curve[0.5]
    assert curve[0.99] <= 0.15
    assert out["violation_rate"] == curve[0.9]


@pytest.mark.parametrize("args, needle", [
    (["--objective", "acc_nope"], "acc_nope"),
    (["--objective", "lat_test_eager"], "latency column"),
    (["--objective", "acc_syn", "--budgets", "0.1,1.5"], "strictly between 0 and 1"),
    (["--objective", "acc_syn", "--verify", "-1"], "--verify"),
    (["--objective", "acc_syn", "--confidence", "1.0"], "--confidence"),
])
def test_bad_input_exits_2(table_path, args, needle):
    result = CliRunner().invoke(cli, ["bench", "amortize", "--data", str(table_path), "--train",
                                      ",".join(TRAIN), "--seeds", "1", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_json_has_protocol_keys(table_path, tmp_path, monkeypatch):
    import toolchain.cli.bench as cli_bench  # the name the command calls

    monkeypatch.setattr(cli_bench, "AmortizeOptions",
                        lambda **kw: AmortizeOptions(**kw, train_config=SMALL))
    out = tmp_path / "am.json"
    result = CliRunner().invoke(cli, ["bench", "amortize", "--data", str(table_path), "--train",
                                      ",".join(TRAIN), "--test", TEST[1], "--objective",
                                      "acc_syn", "--seeds", "1", "--selection", "random",
                                      "--confidence", "0.8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {"samples", "verify", "seeds", "targets", "median_regret", "violation_rate",
            "seconds_per_device", "search_seconds_per_device"} <= set(data)
    assert data["targets"][TEST[1]]["measurements"] <= 10
    assert data["selection"] == "random" and data["confidence"] == 0.8
