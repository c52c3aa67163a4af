"""compile_model / `fleetc compile` on a small MobileNetV2-style model with labelled data.

The target's predictor is replaced by a MAC-proportional cost function (tests/compile/test_tables)
so these tests depend on the rewrite, accuracy and TVM stages, not on a fitted package."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from passes.emit_tvm import EmitError, elf_arch
from tests.compile.test_tables import fake_cost
from toolchain.cli import cli
from toolchain.compile.driver import compile_model, prepare
from toolchain.errors import InfeasibleError
from toolchain.measure.zoo import resnet
from toolchain.space import Plan

pytestmark = pytest.mark.xdist_group("tvm_build")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 32x32 ResNet-10 (width 0.25, 10 classes: every kind of choice, few kernels, so the
    sensitivity measurement stays short) and 32 labelled calibration samples whose labels are
    the fp32 model's own predictions (so the fp32 top-1 is 100%)."""
    import onnxruntime as ort

    folder = tmp_path_factory.mktemp("compile")
    model = resnet(32, depth=10, width=0.25, num_classes=10)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString())
    name = sess.get_inputs()[0].name
    labels = np.array([sess.run(None, {name: x[i:i + 1]})[0].argmax() for i in range(32)])
    np.savez(folder / "calib.npz", inputs=x, labels=labels.astype(np.int64))
    np.savez(folder / "bad.npz", inputs=x[:, :, :16, :16])
    return path, folder / "calib.npz", folder / "bad.npz"


@pytest.fixture(scope="module")
def prep(files):
    path, calib, _ = files
    return prepare(path, calib, cache=False)


def _cost(prep):
    return fake_cost(prep.kernels, prep.space)


def test_compile_meets_budget_and_writes_everything(prep, tmp_path):
    cost = _cost(prep)
    full = cost(Plan()).latency_ms
    out = tmp_path / "out"
    res = compile_model(prep, "host-ort-1t", out, latency_ms=0.6 * full, cost=cost,
                        predictor_name="macs", measure_latency=False)
    assert sorted(p.name for p in out.iterdir()) == [
        ".fleetc-output", "manifest.json", "model.onnx", "model.so", "plan.json", "report.html"]
    m = json.loads((out / "manifest.json").read_text())
    assert m == res.manifest
    for key in ("version", "target", "inputs", "tools", "plan", "predicted", "measured",
                "artifacts", "warnings"):
        assert key in m
    assert m["predicted"]["latency_ms"] <= 0.6 * full + 1e-6
    assert m["measured"]["metric"] == "top1" and m["measured"]["baseline_accuracy"] == 100.0
    assert m["measured"]["accuracy_drop"] == pytest.approx(100.0 - m["measured"]["accuracy"])
    # The chosen plan has the least measured drop of all measured candidates.
    assert m["measured"]["accuracy_drop"] == min(c.measured_drop for c in res.candidates)
    so = next(a for a in m["artifacts"] if a["path"] == "model.so")
    assert so["arch"] == elf_arch((out / "model.so").read_bytes()) == m["tvm"]["arch"]
    assert m["tvm"]["checked_against_onnxruntime"]
    assert Plan.load(out / "plan.json").to_json() == res.plan.to_json()
    html = (out / "report.html").read_text()
    assert "<svg" in html and "chosen:" in html and "front:" in html
    # Deterministic: the same inputs give a byte-identical plan.
    again = compile_model(prep, "host-ort-1t", tmp_path / "again", latency_ms=0.6 * full,
                          cost=cost, measure_latency=False)
    assert (tmp_path / "again" / "plan.json").read_bytes() == (out / "plan.json").read_bytes()
    assert again.manifest["plan"] == m["plan"]


def test_infeasible_budget_names_best_reachable_and_leaves_nothing(prep, tmp_path):
    cost = _cost(prep)
    out = tmp_path / "out"
    with pytest.raises(InfeasibleError, match="best reachable") as err:
        compile_model(prep, "host-ort-1t", out, latency_ms=0.01 * cost(Plan()).latency_ms,
                      cost=cost, measure_latency=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # ... and the plan that reaches it: "the fastest plan (input 1x3x16x16, 7 kernels int8,
    # ...) is predicted at X ms"
    assert "the fastest plan (" in str(err.value) and "kernels int8" in str(err.value)


def test_accuracy_limit_is_checked_on_predicted_then_measured_drops(prep, tmp_path):
    cost = _cost(prep)
    tight = 0.4 * cost(Plan()).latency_ms
    with pytest.raises(InfeasibleError, match="least predicted drop reachable"):
        compile_model(prep, "host-ort-1t", tmp_path / "out", latency_ms=tight,
                      max_accuracy_drop=0.0, cost=cost, measure_latency=False)
    # Sensitivity that predicts no loss at all: the plans pass on prediction, their measured
    # drop breaks the limit, the retries tighten, and the error gives the best measured drop.
    sens = prep.sensitivity(("fp32", "int8"))
    blind = replace(prep, _sens={("fp32", "int8"): replace(
        sens, drops={k: 0.0 for k in sens.drops})})
    with pytest.raises(InfeasibleError, match="best measured drop is [1-9]"):
        compile_model(blind, "host-ort-1t", tmp_path / "out", latency_ms=tight,
                      max_accuracy_drop=0.0, cost=cost, measure_latency=False)
    assert list(tmp_path.iterdir()) == []


def test_failing_tvm_build_leaves_no_output(prep, tmp_path, monkeypatch):
    home = Path(tmp_path / "home")
    (home / "targets").mkdir(parents=True)
    (home / "targets" / "broken.toml").write_text(
        'name = "broken"\nprecisions = ["fp32", "int8"]\n'
        'tvm_target = { kind = "llvm", mtriple = "bogus-unknown-none" }\n'
        '[measure]\nkind = "local-tvm"\n')
    monkeypatch.setenv("FLEETC_HOME", str(home))
    cost = _cost(prep)
    out = tmp_path / "build" / "out"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous build")
    (out / ".fleetc-output").write_text("compile\n")   # a previous compile output
    with pytest.raises(EmitError, match="failed in pass"):
        compile_model(prep, "broken", out, latency_ms=0.8 * cost(Plan()).latency_ms,
                      cost=cost, measure_latency=False)
    # The previous OUTDIR is untouched and no temporary folder is left beside it.
    assert sorted(p.name for p in out.iterdir()) == [".fleetc-output", "old.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["out"]


@pytest.mark.parametrize("args, message", [
    (["--target", "no-such-target", "--latency-ms", "1"], "unknown target"),
    (["--target", "host-ort-1t", "--energy-mj", "1"], "energy model"),
    (["--target", "host-ort-1t", "--latency-ms", "-1"], "positive"),
    (["--target", "host-ort-1t", "--latency-ms", "1", "--calib", "BAD"], "shape"),
])
def test_bad_input_exits_2_without_output(files, tmp_path, args, message):
    path, _, bad = files
    args = [str(bad) if a == "BAD" else a for a in args]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compile", str(path), *args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cross_target_with_energy_estimate_from_power(prep, tmp_path):
    cost = _cost(prep)
    full = cost(Plan()).latency_ms
    out = tmp_path / "rpi4"
    res = compile_model(prep, "rpi4", out, energy_mj=0.7 * full * 6.4, cost=cost,
                        predictor_name="macs")
    m = res.manifest
    assert m["predicted"]["energy_mj"] == pytest.approx(m["predicted"]["latency_ms"] * 6.4,
                                                       rel=1e-3)
    assert m["predicted"]["energy_mj"] <= 0.7 * full * 6.4 + 1e-6
    assert any("ESTIMATE" in w for w in m["warnings"])
    assert m["measured"]["latency_ms"] is None          # an RPC device: not timed here
    tar = next(a for a in m["artifacts"] if a["path"] == "model.tar")
    assert tar["arch"] == "aarch64" and m["tvm"]["cross"]
    if (out / "model.so").exists():                     # a cross compiler is installed
        assert elf_arch((out / "model.so").read_bytes()) == "aarch64"



def test_a_candidate_the_rewrite_refuses_is_left_out_with_a_warning(prep, tmp_path,
                                                                     monkeypatch):
    """Issue 22: the light Inception-v1's candidate with int8 on an overflowing activation made
    onnxruntime's quantizer fail, and compile exited 1. Such a candidate is now left out."""
    from toolchain.compile.driver import Prepared
    from toolchain.errors import BadInputError

    score = Prepared.score

    every = set(prep.space.options)

    def all_int8(plan):
        return {k for k, c in plan.kernels.items() if c.precision == "int8"} == every

    def refuse_uniform_int8(self, plan):
        if all_int8(plan):
            raise BadInputError("int8: activation 'x' is not finite on the calibration data")
        return score(self, plan)
    monkeypatch.setattr(Prepared, "score", refuse_uniform_int8)
    cost = _cost(prep)
    res = compile_model(prep, "host-ort-1t", tmp_path / "out",
                        latency_ms=0.8 * cost(Plan()).latency_ms, cost=cost,
                        measure_latency=False)
    assert not all_int8(res.plan)
    assert not any(all_int8(c.plan) for c in res.candidates)
    left_out = [w for w in res.manifest["warnings"] if "candidate plan was left out" in w]
    assert len(left_out) == 1 and "not finite" in left_out[0]

    def refuse_all(self, plan):
        raise BadInputError("int8: activation 'x' is not finite on the calibration data")
    monkeypatch.setattr(Prepared, "score", refuse_all)
    with pytest.raises(InfeasibleError, match="no candidate plan could be built"):
        compile_model(prep, "host-ort-1t", tmp_path / "none",
                      latency_ms=0.8 * cost(Plan()).latency_ms, cost=cost,
                      measure_latency=False)
    assert not (tmp_path / "none").exists()
