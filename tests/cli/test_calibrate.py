"""`fleetc targets calibrate`: a target's predictor package from a proxy's and K measurements.

Devices here are simulated additive kernel-cost models over the real probe set (their units
come from the real probe models), so the expected outcome is known exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.cli import cli
from toolchain.measure.probe import probe_set, write_probes
from toolchain.predict.kernel import features
from toolchain.predict.latency import design_units, load_predictor
from toolchain.target import load_target


def _cost(units, conv_scale: float = 1.0, other_scale: float = 1.0, model: float = 0.05):
    total = model
    for u in units:
        f = features(u)
        c = 0.01 + 0.8 * f["macs"] + 0.05 * (f["in_elems"] + f["out_elems"])
        total += c * (conv_scale if u.cls in ("conv", "dwconv") else other_scale)
    return total


@pytest.fixture(scope="module")
def probes():
    names = [p.name for p in probe_set(("fp32",), "quick")]
    return {n: design_units(n) for n in names}


def _csv(path, rows):
    path.write_text("design,latency_ms\n" + "".join(f"{d},{t:.6f}\n" for d, t in rows))
    return path


def _fit_proxy(tmp_path, probes):
    data = _csv(tmp_path / "proxy.csv", [(n, _cost(u)) for n, u in probes.items()])
    result = CliRunner().invoke(cli, ["predictor", "fit", "--target", "host-ort-1t",
                                      "--data", str(data)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("conv_scale, other_scale, path", [(3.0, 3.0, "reuse"),
                                                            (2.5, 0.6, "adapt")])
def test_calibrated_package_predicts_the_target(tmp_path, probes, conv_scale, other_scale,
                                                 path):
    _fit_proxy(tmp_path, probes)
    names = sorted(probes)
    sampled = names[::5]                       # K = 12 measured designs on the target
    truth = {n: _cost(probes[n], conv_scale, other_scale, 0.3) for n in names}
    few = _csv(tmp_path / "few.csv", [(n, truth[n]) for n in sampled])
    result = CliRunner().invoke(cli, ["targets", "calibrate", "rpi4", "--proxy", "host-ort-1t",
                                      "--measurements", str(few)])
    assert result.exit_code == 0, result.output
    assert f": {path} from" in result.output
    package = load_predictor(load_target("rpi4"))      # what compile / predict will load
    assert package.meta["target"] == "rpi4" and package.meta["calibration"]["path"] == path
    held = [n for n in names if n not in sampled]
    pred = np.array([package.predict_units(probes[n]).latency_ms for n in held])
    true = np.array([truth[n] for n in held])
    proxy = load_predictor(load_target("host-ort-1t"))
    raw = np.array([proxy.predict_units(probes[n]).latency_ms for n in held])
    err = np.median(np.abs(pred - true) / true)
    assert err < 0.1
    # better than the proxy rescaled by the best single factor
    factor = np.median(true / raw)
    assert err <= np.median(np.abs(factor * raw - true) / true) + 1e-9
    assert package.meta["calibration"]["samples"] == len(sampled)
    # the product path reads it like a fitted package: `fleetc predict` on a model file
    model = write_probes([p for p in probe_set(("fp32",), "quick") if p.name == held[0]],
                         tmp_path / "models")[0]
    out = CliRunner().invoke(cli, ["predict", str(model), "--target", "rpi4", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["latency_ms"] == pytest.approx(pred[0], rel=1e-6)


def test_calibrate_bad_input(tmp_path, probes):
    few = _csv(tmp_path / "few.csv", [(n, 1.0) for n in sorted(probes)[:5]])
    runner = CliRunner()
    from toolchain.home import targets_dir

    (targets_dir(create=True) / "bare.toml").write_text(   # a target without any predictor
        'name = "bare"\npredictor = "bare"\ntvm_target = { kind = "llvm" }\n'
        '[measure]\nkind = "local-tvm"\nthreads = 1\n')
    no_proxy = runner.invoke(cli, ["targets", "calibrate", "rpi4", "--proxy", "bare",
                                   "--measurements", str(few)])
    assert no_proxy.exit_code == 2 and "no latency predictor" in no_proxy.output
    same = runner.invoke(cli, ["targets", "calibrate", "rpi4", "--proxy", "rpi4",
                               "--measurements", str(few)])
    assert same.exit_code == 2 and "same target" in same.output
    _fit_proxy(tmp_path, probes)
    unknown = _csv(tmp_path / "unknown.csv", [("no-such-design", 1.0), ("other", 2.0)])
    bad = runner.invoke(cli, ["targets", "calibrate", "rpi4", "--proxy", "host-ort-1t",
                              "--measurements", str(unknown)])
    assert bad.exit_code == 2 and "at least 3" in bad.output
