"""Degenerate calibration: when the fp32 outputs do not vary with the inputs, accuracy cannot be
measured (every change would agree 100%): compile warns and scores changes by output distortion
(relative L2 vs fp32), limited by --max-distortion; float64 data is cast with a note."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tests.compile.test_opset import _model
from toolchain.cli import cli
from toolchain.compile.driver import prepare
from toolchain.predict.accuracy import AccuracyEstimator, degenerate_reason

pytestmark = pytest.mark.xdist_group("tvm_build")


def _constant_output(folder):
    """The tiny model with its first conv's weights zeroed: the output is the same for every
    input (what the onnx package's light models do with their constant-fill weights)."""
    model = _model(13)
    for init in model.graph.initializer:
        if init.name == "w1":
            init.CopyFrom(numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w1"))
    path = folder / "const.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16))
    np.savez(folder / "calib.npz", inputs=x)          # float64: cast with a note
    return path, folder / "calib.npz"


def test_degenerate_reason_rule():
    rng = np.random.default_rng(0)
    varying = rng.standard_normal((8, 4))
    assert degenerate_reason(varying, None) is None
    assert "do not vary" in degenerate_reason(np.tile(varying[:1], (8, 1)), None)
    assert "one class" in degenerate_reason(varying, np.zeros(8, np.int64))
    assert degenerate_reason(varying, np.arange(8) % 4) is None


def test_constant_output_model_is_scored_by_distortion(tmp_path, caplog):
    path, calib = _constant_output(tmp_path)
    prep = prepare(path, calib, cache=False)
    assert "input 'x' is float64; cast to float32" in caplog.text
    assert prep.estimator.metric == "distortion" and prep.estimator.baseline.value == 100.0
    assert any("accuracy cannot be measured" in w for w in prep.warnings)
    sens = prep.sensitivity(("fp32", "int8"))
    assert max(sens.drops.values()) > 0          # changes are not all free any more


def test_a_non_finite_output_is_the_largest_finite_distortion():
    """Pruning a constant-fill Inception-v1 overflowed (NaN outputs): its drop was NaN and the
    cost table refused it (exit 2). A non-finite output now counts as 1000% distortion."""
    est = AccuracyEstimator.__new__(AccuracyEstimator)
    est._ref, est.labels, est.samples, est.metric = np.ones((4, 3)), None, 4, "distortion"
    out = np.ones((4, 3))
    out[0, 0], out[1, 1] = np.nan, np.inf
    score = est._score(out)
    assert score.distortion == pytest.approx(500.0) and np.isfinite(score.value)


def test_a_varying_model_keeps_the_agreement_metric(tmp_path):
    model = _model(13)
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    est = AccuracyEstimator(model, {"x": x})
    assert est.degenerate is None and est.metric == "agreement"
    onnx.checker.check_model(model)


def test_cli_warns_and_limits_the_distortion(tmp_path):
    path, calib = _constant_output(tmp_path)
    result = CliRunner().invoke(cli, ["compile", str(path), "-t", "host-ort-1t",
                                      "--max-distortion", "30", "--max-accuracy-drop", "1",
                                      "--calib", str(calib), "--no-measure",
                                      "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "warning: accuracy cannot be measured with this calibration data" in result.output
    assert "warning: --max-accuracy-drop does not apply" in result.output
    assert "output distortion" in result.output
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["measured"]["metric"] == "distortion"
    assert m["measured"]["unit"] == "% relative L2 vs fp32"
    assert m["budgets"]["max_distortion_pct"] == 30.0 and m["budgets"]["max_accuracy_drop"] is None
    assert 0 <= m["measured"]["accuracy_drop"] <= 30.0
