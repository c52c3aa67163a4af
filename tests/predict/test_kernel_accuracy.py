"""End to end on this machine: profile a probe subset, fit, predict models the predictor never
saw, and compare with their measured latency (a loose bound; the benchmark reports the real
figures on the full probe set)."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from toolchain.cli import cli
from toolchain.measure.ort_backend import time_ort
from toolchain.measure.timing import TimingConfig
from toolchain.measure.zoo import mobilenet_v2, resnet
from toolchain.predict.kernel import KernelPredictor, spearman
from toolchain.predict.latency import predict_model


def _cli(*args):
    import toolchain.cli.measure  # noqa: F401
    import toolchain.cli.predict  # noqa: F401
    return CliRunner().invoke(cli, list(args))


@pytest.mark.xdist_group("timing")
def test_fit_on_probes_predicts_unseen_models(tmp_path, monkeypatch):
    # fp32-only copy of host-ort-1t, so the quick subset needs no quantization (test time).
    home = Path(tmp_path / "home")
    (home / "targets").mkdir(parents=True)
    monkeypatch.setenv("FLEETC_HOME", str(home))
    (home / "targets" / "cpu1.toml").write_text(
        'name = "cpu1"\ntvm_target = "llvm"\nprecisions = ["fp32"]\n'
        '[measure]\nkind = "local-ort"\nthreads = 1\n')
    data = tmp_path / "cpu1.csv"
    profiled = _cli("profile", "--probe", "--subset", "quick", "--target", "cpu1", "-o",
                    str(data), "--repeats", "5", "--max-seconds", "0.5")
    assert profiled.exit_code == 0, profiled.output
    fitted = _cli("predictor", "fit", "--target", "cpu1", "--data", str(data))
    assert fitted.exit_code == 0, fitted.output
    model = KernelPredictor.load(home / "predictors" / "cpu1")
    assert model.meta["training"]["hash"].startswith("sha256:")

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    cases = {"squeezenet": onnx.load(str(light / "light_squeezenet.onnx")),
             "resnet10-96": resnet(96, 10, 0.5), "mbv2-64": mobilenet_v2(64, 0.5)}
    config = TimingConfig(repeats=7, max_seconds=1.5)
    measured, predicted = [], []
    for name, m in cases.items():
        pred = predict_model(model, m)
        assert pred.complete, (name, pred.unknown)
        measured.append(time_ort(m, 1, config).median_ms)
        predicted.append(pred.latency_ms)
    errors = [p / y - 1 for p, y in zip(predicted, measured, strict=True)]
    assert all(abs(e) < 0.5 for e in errors), list(zip(cases, measured, predicted, strict=True))
    assert spearman(measured, predicted) == pytest.approx(1.0)

    shown = _cli("predict", str(tmp_path / "m.onnx"), "--target", "cpu1")
    assert shown.exit_code == 2 and "no such model" in shown.output
    onnx.save(cases["mbv2-64"], tmp_path / "m.onnx")
    shown = _cli("predict", str(tmp_path / "m.onnx"), "--target", "cpu1")
    assert shown.exit_code == 0 and "total" in shown.output and "INCOMPLETE" not in shown.output
