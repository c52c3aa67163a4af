"""All three benches on a table that is not NAS-Bench-201: a synthetic FBNet-shaped space
(22 layers x 9 choices, a sample of 9^22 designs) with a synthetic objective, built in code.
The design space is far too large to address by key, so the amortized optimizer chooses
among the table's rows in numpy (`_choose_sampled`)."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from tests.bench.test_amortize import SMALL
from tests.bench.test_fewshot import _one_blas_thread  # noqa: F401 (autouse fixture)
from toolchain.bench.amortize import AmortizeOptions, run_amortize
from toolchain.bench.fewshot import FewshotOptions, run_fewshot
from toolchain.bench.proxy import ProxyOptions, run_proxy
from toolchain.bench.table import load_table

LAYERS, CHOICES, ROWS = 22, 9, 800
TRAIN = tuple(f"lat_dev{i}" for i in range(6))
TEST = ("lat_new0", "lat_new1")


def write_layer_table(path, seed: int = 0) -> None:
    """fb_idx, l0..l21 (0..8), acc_syn and 8 devices: a per-layer, per-choice cost (a shared
    pattern times device factors, 3% noise); the objective grows with the choices' cost."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, CHOICES, (ROWS, LAYERS))
    base = rng.uniform(0.1, 1.0, (LAYERS, CHOICES))
    columns = {}
    for name in TRAIN + TEST:
        cost = base * rng.uniform(0.5, 1.5, CHOICES) * rng.uniform(0.8, 1.25, (LAYERS, 1))
        lat = 1.0 + cost[np.arange(LAYERS), codes].sum(axis=1)
        columns[name] = lat * np.exp(0.03 * rng.standard_normal(ROWS))
    columns["acc_syn"] = 50 + 2 * base[np.arange(LAYERS), codes].sum(axis=1) \
        + rng.normal(0, 0.3, ROWS)
    header = ["fb_idx"] + [f"l{j}" for j in range(LAYERS)] + list(columns)
    with gzip.open(path, "wt") as out:
        out.write(",".join(header) + "\n")
        for i, code in enumerate(codes):
            cells = [str(i)] + [str(v) for v in code] + [f"{columns[c][i]:.5f}" for c in columns]
            out.write(",".join(cells) + "\n")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("layers") / "layers.csv.gz"
    write_layer_table(path)
    return load_table([path])


def test_fewshot_runs_and_improves_with_samples(table):
    means = [run_fewshot(table, FewshotOptions(TRAIN, TEST, samples=k, seeds=1,
                                               selection="random"))["mean_spearman"]
             for k in (5, 40)]
    assert means[1] >= means[0] - 0.005 and means[1] > 0.8, means


def test_proxy_runs_with_random_selection(table):
    out = run_proxy(table, ProxyOptions(proxy=TRAIN[0], targets=TEST, samples=10, seeds=2,
                                        selection="random"))
    assert out["mean_spearman"] > 0.5 and out["mean_spearman_std"] >= 0


@pytest.mark.parametrize("verify", [0, 3])
def test_amortize_runs_on_a_sampled_space(table, verify):
    out = run_amortize(table, AmortizeOptions(TRAIN, TEST, "acc_syn", samples=8, verify=verify,
                                              seeds=1, selection="random",
                                              train_config=SMALL))
    for entry in out["targets"].values():
        assert entry["measurements"] <= 8 + verify
    assert out["violation_rate"] is not None and out["median_regret"] is not None
    assert out["seconds_per_device"] > 0
