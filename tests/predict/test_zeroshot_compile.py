"""`fleetc compile` with only a latency budget for an edge target nobody has measured, from an
empty FLEETC_HOME (no predictor package but the shipped host ones): the zero-shot estimate
prices the plans, the search runs, TVM builds for the device, the manifest labels the estimate.

The digits fixture's sensitivity table (what each change costs in accuracy: the same for every
target, measured by tests/compile) is replaced by a fixed 0.5-point drop per change, so the
test spends its time on the pricing, the search, the rewrite and the TVM build. One target
here (about 20 CPU-seconds); every tests/predict/test_zeroshot.py case prices the digits model
with each of the five edge targets' estimates, and benchmarks/zeroshot_compile.py runs the
full command for all five."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolchain.cli import cli
from toolchain.compile.driver import Prepared, prepare
from toolchain.home import predictors_dir
from toolchain.predict.accuracy import SensitivityTable, _plans_to_measure

pytestmark = pytest.mark.xdist_group("tvm_build")

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "tests" / "fixtures" / "digits_mbv2.onnx"
CALIB = ROOT / "tests" / "fixtures" / "digits_calib.npz"


def _half_point(self: Prepared, precisions, progress=None) -> SensitivityTable:
    kernels = {k: self.space.choices(k, precisions) for k in self.space.options}
    todo = _plans_to_measure(kernels, self.space.blocks, self.space.resolutions,
                             self.space.input_name, self.input_shape)
    return SensitivityTable({key: 0.5 for key, _ in todo}, self.estimator.baseline)


@pytest.fixture(scope="module")
def prep():
    return prepare(DIGITS, CALIB, samples=16, cache=False)


def test_cli_compile_rpi4_from_an_empty_home(prep, tmp_path, monkeypatch):
    """The command of the issue: it failed with 'no latency predictor for target rpi4 yet'."""
    monkeypatch.setattr(Prepared, "sensitivity", _half_point)
    monkeypatch.setattr("toolchain.compile.driver.prepare", lambda *a, **k: prep)
    assert not predictors_dir().exists() or not any(predictors_dir().iterdir())
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compile", str(DIGITS), "--target", "rpi4",
                                      "--latency-ms", "1000", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "ZERO-SHOT estimate, UNVALIDATED" in result.output
    assert "expected error: median |error|" in result.output
    m = json.loads((out / "manifest.json").read_text())
    estimate = m["latency_estimate"]
    assert m["predictor"] == "rpi4-zeroshot" and estimate["kind"] == "zero-shot"
    assert estimate["validated"] is False and estimate["expected_error"]["devices"] >= 10
    assert f"latency: {estimate['label']}" in m["warnings"] and estimate["speed_ratio"] > 0
    assert 0 < m["predicted"]["latency_ms"] <= 1000.0 and (out / "model.tar").is_file()
