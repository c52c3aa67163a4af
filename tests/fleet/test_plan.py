"""Fleet planning (toolchain/fleet/plan.py) and what a real fleet run reports per device:
linear prices equal the predictor's, the vectorized pick, budget_met / --strict, --plan-only,
one build per distinct plan.

The model is the tiny conv + Gemm of test_cache_integrity (8x8 inputs: a TVM build of seconds)
on `host-fp32` (host-ort-1t, fp32 only, LLVM at opt-level 0)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.fleet.test_cache_integrity import _tiny_model
from tests.processes import HOST_FP32
from toolchain.cli import cli
from toolchain.fleet.plan import FeatureCache, _latency, pick
from toolchain.space import Choice, Plan

pytestmark = pytest.mark.xdist_group("fleet")


def test_linear_prices_equal_predict_plan():
    """x(plan) . w is exactly what predict_plan says, for plans with precisions, widths, a
    smaller input and skipped blocks, on the bundled digits model."""
    from passes import load_and_analyze
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import builtin_predictors_dir, predict_plan

    graph = load_and_analyze(str(Path(__file__).parents[1] / "fixtures" / "digits_mbv2.onnx"))
    predictor = KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t")
    names = sorted(graph.space.options)
    name = graph.inputs[0]
    shape = list(graph.shape(name))
    plans = [Plan(), Plan(kernels={n: Choice("int8") for n in names[::2]}),
             Plan(kernels={names[3]: Choice("fp32", 0.5)},
                  skip_blocks=sorted(graph.space.blocks)[:1]),
             Plan(input_shape={name: shape[:2] + [graph.space.resolutions[-1]] * 2})]
    cache = FeatureCache(graph)
    for plan in plans:
        want = predict_plan(predictor, graph, plan, strict=True).latency_ms
        assert _latency(cache.vector(plan), predictor) == pytest.approx(want, rel=1e-9)


def test_pick_is_least_drop_within_budget_then_least_latency():
    L = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])        # candidates x devices
    drops = np.array([0.5, 0.2, 0.2])
    bad = np.zeros_like(L, dtype=bool)
    E = np.zeros_like(L)
    got = pick(L, E, drops, bad, [{"latency_ms": 2.5}, {"latency_ms": 2.5}])
    assert got.tolist() == [1, 2]          # equal drops: the faster of the two for device 1
    got = pick(L, E, drops, bad, [{"latency_ms": 0.5}, {"max_accuracy_drop": 0.3}])
    assert got.tolist() == [-1, 2]         # nothing fits / least latency within the limit


FLEET = '''
model = "tiny.onnx"
calib = "calib.npz"
max_accuracy_drop = 50.0

[[device]]
name = "a"
target = "host-fp32"
latency_ms = {budget}

[[device]]
name = "b"
target = "host-fp32"
latency_ms = {budget}
'''


@pytest.fixture()
def fleet_dir(tmp_path, monkeypatch):
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import builtin_predictors_dir

    home = tmp_path / "home"
    (home / "targets").mkdir(parents=True)
    (home / "targets" / "host-fp32.toml").write_text(HOST_FP32)
    monkeypatch.setenv("FLEETC_HOME", str(home))
    # A user package for host-fp32's predictor, scaled down 1000x: it promises what the
    # measurement then does not keep.
    p = KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t")
    scaled = KernelPredictor({k: {f: v / 1000 for f, v in w.items()} for k, w in p.weights.items()},
                             {f: v / 1000 for f, v in p.model.items()}, p.meta)
    scaled.save(home / "predictors" / "host-ort-1t")
    work = tmp_path / "work"
    work.mkdir()
    _tiny_model(work / "tiny.onnx")
    return work


def _run(work: Path, budget: float, *args: str):
    (work / "fleet.toml").write_text(FLEET.format(budget=budget))
    res = CliRunner().invoke(cli, ["fleet", str(work / "fleet.toml"), "-o", str(work / "out"),
                                   *args])
    path = work / "out" / "fleet.json"
    return res, (json.loads(path.read_text()) if path.exists() else None)


def test_over_budget_is_a_warning_and_with_strict_a_failure(fleet_dir):
    """The (scaled-down) predictor says the plan takes microseconds; onnxruntime measures
    more than the 0.001 ms budget: budget_met false, a warning in the table, fleet.json and the
    manifest, one shared build for the two devices; --strict: exit 4."""
    res, doc = _run(fleet_dir, 0.001)
    assert res.exit_code == 0, res.output
    for dev in doc["devices"]:
        assert dev["predicted"]["latency_ms"] <= 0.001
        assert dev["measured"]["latency_ms"] > 0.001 * 1.05
        assert dev["budget_met"] is False and dev["status"] == "built"
        assert any(w.startswith("OVER BUDGET") for w in dev["warnings"])
    assert res.stdout.count("WARNING: over budget") == 2
    assert doc["version"] == 2 and doc["summary"]["over_budget"] == 2
    assert len(doc["builds"]) == 1 and doc["builds"][0]["devices"] == ["a", "b"]
    assert doc["devices"][0]["shares_build_with"] == ["b"]
    manifest = json.loads((fleet_dir / "out" / "a" / "manifest.json").read_text())
    assert manifest["budget_met"] is False
    res, doc = _run(fleet_dir, 0.001, "--strict")
    assert res.exit_code == 4, res.output
    assert [d["status"] for d in doc["devices"]] == ["failed", "failed"]
    assert "over the budget" in doc["devices"][0]["error"]


def test_plan_only_plans_every_device_and_builds_nothing(fleet_dir):
    res, doc = _run(fleet_dir, 1.0, "--plan-only")
    assert res.exit_code == 0, res.output
    assert [d["status"] for d in doc["devices"]] == ["planned", "planned"]
    assert all(d["plan"] is not None and d["budget_met"] is None for d in doc["devices"])
    assert doc["plans"] and doc["builds"] == [] and doc["plan_only"] is True
    assert sorted(p.name for p in (fleet_dir / "out").iterdir()) == [
        ".fleetc-output", "fleet.html", "fleet.json"]
