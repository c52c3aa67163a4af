"""The device-conditioned predictor of a fleet device known only by a fingerprint, with the
shipped predictor packages of the profiled targets."""
import math
import os
import shutil
from pathlib import Path

import pytest

from toolchain.fleet.pricing import conditioned_predictor
from toolchain.measure.probe import probe_set
from toolchain.predict.latency import (
    builtin_predictors_dir,
    design_units,
    load_predictor,
    predictors_dir,
)
from toolchain.target import load_target


def test_fingerprint_device_gets_a_mix_and_a_held_out_error(tmp_path):
    """A device 1.7x slower than host-ort on the fingerprint designs is explained by host-ort
    alone, and the leave-one-device-out error is computed over the profiled devices' stored
    measurements, including packages measured with probes the set has since retired."""
    host = load_predictor(load_target("host-ort"))
    names = [p.name for p in probe_set(("fp32", "int8"), "fingerprint")]
    csv = tmp_path / "fp.csv"
    csv.write_text("design,latency_ms\n" + "".join(
        f"{n},{1.7 * host.predict_units(design_units(n)).latency_ms:.6f}\n" for n in names))
    retired = "gemm-9216-4096-relu-fp32"   # an `mlp` probe took its place in session 8
    assert design_units(retired) is None
    # a user's copy of the host-ort package (it takes precedence) measured before that change
    user = predictors_dir() / "host-ort"
    assert Path(os.environ["FLEETC_HOME"]) in user.parents
    shutil.copytree(builtin_predictors_dir() / "host-ort", user)
    csv_path = user / "measurements.csv"
    header, rest = csv_path.read_text().split("\n", 1)
    csv_path.write_text(f"{header}\n{retired},4.1,,2.0,4.1,4,1,0,wall,host-ort,onnxruntime,0,"
                        f"2026-12-01T00:00:00Z\n{rest}")   # first: among the designs scored
    model = conditioned_predictor(load_target("jetson-nano"), csv)
    meta = model.meta
    mix = dict(zip(meta["conditioned"]["devices"], meta["conditioned"]["mix"], strict=True))
    assert mix["host-ort"] == pytest.approx(1.7, rel=0.01) and mix["host-ort-1t"] < 0.01
    held = meta["held_out"]["leave_one_device_out_median_abs_rel_err"]
    assert set(held) == {"host-ort", "host-ort-1t"}
    assert all(0 < e < 0.5 and math.isfinite(e) for e in held.values())
    assert meta["training_fit"]["median_abs_rel_err"] < 0.01
