"""`fleetc compile` checks the latency budget on the measured result (issue 22), builds a given
plan (issue 23) and has a default objective without budgets; on the tiny conv + fc model of the
fuzz suite, so each compile takes seconds."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.fuzzing.bases import model_bytes
from tests.helpers import random_feeds, run_ort
from toolchain.cli import cli
from toolchain.compile.driver import compile_model, prepare
from toolchain.compile.tables import PlanCosts
from toolchain.predict.kernel import KernelPredictor
from toolchain.predict.latency import builtin_predictors_dir, load_predictor, predict_model
from toolchain.space import Choice, Plan
from toolchain.target import load_target

pytestmark = pytest.mark.xdist_group("tvm_build")


@pytest.fixture
def tiny(tmp_path):
    model = tmp_path / "tiny.onnx"
    model.write_bytes(model_bytes("tiny"))
    calib = tmp_path / "calib.npz"
    np.savez(calib, inputs=np.random.default_rng(0).standard_normal((16, 3, 8, 8))
             .astype(np.float32))
    return model, calib


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _scaled_predictor(home, factor: float) -> None:
    """The shipped host-ort-1t package with every weight times `factor`, as the user's own:
    its predictions are `factor` x the shipped ones (the predictor is linear)."""
    shipped = KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t")
    weights = {k: {f: v * factor for f, v in w.items()} for k, w in shipped.weights.items()}
    model = {f: v * factor for f, v in shipped.model.items()}
    KernelPredictor(weights, model, shipped.meta).save(home / "predictors" / "host-ort-1t")


def test_a_measured_budget_miss_warns_and_strict_exits_3(tiny, tmp_path, monkeypatch):
    model, calib = tiny
    full = predict_model(load_predictor(load_target("host-ort-1t")), str(model)).latency_ms
    home = tmp_path / "home"
    monkeypatch.setenv("FLEETC_HOME", str(home))
    _scaled_predictor(home, 0.1)
    # Every plan meets the budget on the scaled prediction (0.1 x); the model, timed, cannot
    # (it would need to run 4x faster than the shipped predictor says).
    budget = 0.25 * full
    out = tmp_path / "out"
    result = _run("compile", model, "-t", "host-ort-1t", "--latency-ms", budget, "--calib",
                  calib, "-o", out)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["measured"]["latency_ms"] > 1.05 * budget and m["budget_met"] is False
    assert m["predicted"]["latency_ms"] <= budget and m["latency_retries"] is None
    assert "latency budget" in result.stdout and "MISSED" in result.stdout
    miss = [w for w in m["warnings"] if w.startswith("measured latency")]
    assert len(miss) == 1 and f"misses the latency budget {budget:g} ms" in miss[0]
    assert result.stderr.count(miss[0]) == 1
    html = (out / "report.html").read_text()
    assert "latency budget MISSED" in html and "(measured latency)" in html and ">budget<" in html
    # --strict: the same miss is exit 3, one line, nothing written.
    strict = _run("compile", model, "-t", "host-ort-1t", "--latency-ms", budget, "--calib",
                  calib, "--strict", "-o", tmp_path / "strict")
    assert strict.exit_code == 3, strict.output
    assert "misses the latency budget" in strict.stderr and "(--strict)" in strict.stderr
    assert not (tmp_path / "strict").exists()
    # Not measured (--no-measure): null, and --strict has nothing to fail on.
    unmeasured = _run("compile", model, "-t", "host-ort-1t", "--latency-ms", budget, "--calib",
                      calib, "--no-measure", "--strict", "--json", "-o", tmp_path / "nm")
    assert unmeasured.exit_code == 0 and json.loads(unmeasured.stdout)["budget_met"] is None


def test_without_a_budget_least_latency_at_1_point_json_and_warnings_once(tiny, tmp_path):
    model, _ = tiny
    result = _run("compile", model, "-t", "host-ort-1t", "--json", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)          # stdout is the manifest and nothing else
    assert m == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["budgets"] == {"latency_ms": None, "energy_mj": None, "max_accuracy_drop": 1.0,
                            "max_distortion_pct": None}
    assert m["objective"] == "least latency" and m["measured"]["accuracy_drop"] <= 1.0
    assert "no budget given" in result.stderr and "1 point" in result.stderr
    # Each warning is printed once (the no-calibration one was printed three times).
    assert any("no calibration data" in w for w in m["warnings"])
    assert result.stderr.count("no calibration data") == 1
    for w in m["warnings"]:
        assert result.stderr.count(w) == 1


def test_a_given_plan_is_built_as_given(tiny, tmp_path):
    model, calib = tiny
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "target": None, "model": {"input_shape": {}},
                                "kernels": {"conv": {"precision": "int8", "width": 0.75}},
                                "skip_blocks": []}))
    out = tmp_path / "out"
    result = _run("compile", model, "-t", "host-ort-1t", "--plan", plan, "--calib", calib,
                  "-o", out)
    assert result.exit_code == 0, result.output
    assert "sensitivity" not in result.stderr and "evolutionary" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        ".fleetc-output", "manifest.json", "model.onnx", "model.so", "plan.json", "report.html"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["solver"] == "given" and m["predicted"]["accuracy_drop"] is None
    assert m["plan"]["kernels"] == {"conv": {"precision": "int8", "width": 0.75}}
    assert m["plan"]["target"] == "host-ort-1t" and m["measured"]["accuracy"] is not None
    assert "plan by given" in result.stdout
    # An all-fp32 plan is the plain conversion: same outputs as the input model.
    plan.write_text(json.dumps({"version": 1, "kernels": {}}))
    fp32 = _run("compile", model, "-t", "host-ort-1t", "--plan", plan, "--calib", calib,
                "--json", "-o", tmp_path / "fp32")
    assert fp32.exit_code == 0, fp32.output
    m = json.loads(fp32.stdout)
    assert m["plan"]["kernels"] == {} and m["measured"]["accuracy_drop"] == 0.0
    feeds = random_feeds(onnx.load(str(model)))
    built = onnx.load(str(tmp_path / "fp32" / "model.onnx"))
    np.testing.assert_allclose(run_ort(built, feeds)[0], run_ort(onnx.load(str(model)), feeds)[0],
                               rtol=1e-5, atol=1e-6)
    # Options that need a search are refused with --plan; so is a plan the model does not fit.
    bad = _run("compile", model, "-t", "host-ort-1t", "--plan", plan, "--retry", "-o",
               tmp_path / "bad")
    assert bad.exit_code == 2 and "--plan builds the plan as given" in bad.stderr
    plan.write_text(json.dumps({"version": 1, "kernels": {"nope": {"precision": "int8"}}}))
    bad = _run("compile", model, "-t", "host-ort-1t", "--plan", plan, "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and "'nope'" in bad.stderr and not (tmp_path / "bad").exists()


def test_retry_replans_with_the_measured_ratio(tiny, tmp_path, monkeypatch):
    """--retry: the first plan measures 1.5x the budget, so the predicted budget becomes
    min(budget, its prediction) / 1.5 and the plan found there meets the budget; the manifest
    lists both attempts. Without retries the miss is kept and flagged. Latency is a cost
    proportional to the conv's work and the timings are given, so the test is exact."""
    import toolchain.compile.driver as driver

    def cost(plan: Plan) -> PlanCosts:
        c = plan.kernels.get("conv", Choice())
        return PlanCosts((0.5 if c.precision == "int8" else 1.0) * c.width + 0.01)

    prep = prepare(tiny[0], tiny[1], cache=False)
    budget = 0.9
    timings = iter([1.5 * budget, 0.9 * budget])
    monkeypatch.setattr(driver, "_measured_latency", lambda tgt, model, say: next(timings))
    res = compile_model(prep, "host-ort-1t", tmp_path / "out", latency_ms=budget, cost=cost,
                        latency_retries=2)
    m = res.manifest
    first, second = m["latency_retries"]
    assert first["measured_latency_ms"] == 1.5 * budget and first["budget_met"] is False
    tightened = min(budget, first["predicted_latency_ms"]) / 1.5
    assert second["predicted_latency_budget_ms"] == pytest.approx(tightened, abs=1e-4)
    assert second["predicted_latency_ms"] <= tightened + 1e-6 and second["budget_met"] is True
    assert m["budget_met"] is True and m["measured"]["latency_ms"] == 0.9 * budget
    assert m["predicted"]["latency_ms"] == second["predicted_latency_ms"]
    monkeypatch.setattr(driver, "_measured_latency", lambda tgt, model, say: 1.5 * budget)
    kept = compile_model(prep, "host-ort-1t", tmp_path / "miss", latency_ms=budget, cost=cost)
    assert kept.manifest["budget_met"] is False and kept.manifest["latency_retries"] is None
    assert kept.manifest["predicted"]["latency_ms"] == first["predicted_latency_ms"]
    assert any(w.startswith("measured latency") and "--retry" in w
               for w in kept.manifest["warnings"])
    # --retry without a latency budget: nothing to check, one attempt recorded.
    free = compile_model(prep, "host-ort-1t", tmp_path / "free", max_accuracy_drop=5.0,
                         cost=cost, latency_retries=2)
    assert free.manifest["budget_met"] is None
    assert [a["predicted_latency_budget_ms"] for a in free.manifest["latency_retries"]] == [None]
