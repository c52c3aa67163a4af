"""Regression: a concat network compiles with only an accuracy limit (issue 22). The shipped
predictor has no Concat/int8: every plan with int8 on both sides of the concat was priced at
infinity, such a plan passed the (latency-free) budget, and the report's plot then failed with
`OverflowError: cannot convert float infinity to integer` after the TVM build."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.predict.test_fallback import concat_model
from toolchain.cli import cli

pytestmark = pytest.mark.xdist_group("tvm_build")


def test_concat_model_compiles_with_an_accuracy_limit_only(tmp_path):
    path, calib, out = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "out"
    onnx.save(concat_model(), path)
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    np.savez(calib, inputs=x)
    result = CliRunner().invoke(cli, ["compile", str(path), "-t", "host-ort-1t",
                                      "--max-accuracy-drop", "1", "--calib", str(calib),
                                      "--no-measure", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "inf ms" not in result.output and "OverflowError" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("Concat/int8" in w and "fallback" in w for w in manifest["warnings"])
    assert np.isfinite(manifest["predicted"]["latency_ms"])
    assert "<svg" in (out / "report.html").read_text()
