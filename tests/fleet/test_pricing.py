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

# Designs of each profiled package's measurements kept besides the fingerprint designs: the
# held-out error is scored on the first 200 (fleet.pricing._scored_designs), and every one
# costs a probe build, int8 ones a quantization (about 0.1-0.2 s each). The first SCORED of
# the same 200, in the same order, give about the same figures: held-out errors 0.113
# (host-ort) and 0.148 (host-ort-1t), against 0.118 and 0.102 with all 200.
SCORED = 40


def _user_copy(name: str, fingerprint: set[str], first: str = "") -> Path:
    """The built-in package `name` copied to the user's predictors folder (it takes
    precedence), its measurements cut to the fingerprint designs and the first SCORED others,
    `first` put before them."""
    user = predictors_dir() / name
    assert Path(os.environ["FLEETC_HOME"]) in user.parents
    shutil.copytree(builtin_predictors_dir() / name, user)
    csv_path = user / "measurements.csv"
    header, *rows = csv_path.read_text().splitlines()
    others = [r for r in rows if r.split(",", 1)[0] not in fingerprint][:SCORED]
    keep = [r for r in rows if r.split(",", 1)[0] in fingerprint or r in others]
    csv_path.write_text("\n".join([header, *([first] if first else []), *keep]) + "\n")
    return user


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
    # users' copies of both profiled packages (they take precedence), host-ort's measured
    # before that change: the retired probe is the first of the designs scored
    _user_copy("host-ort", set(names), first=f"{retired},4.1,,2.0,4.1,4,1,0,wall,host-ort,"
                                            f"onnxruntime,0,2026-12-01T00:00:00Z")
    _user_copy("host-ort-1t", set(names))
    model = conditioned_predictor(load_target("jetson-nano"), csv)
    meta = model.meta
    mix = dict(zip(meta["conditioned"]["devices"], meta["conditioned"]["mix"], strict=True))
    assert mix["host-ort"] == pytest.approx(1.7, rel=0.01) and mix["host-ort-1t"] < 0.01
    held = meta["held_out"]["leave_one_device_out_median_abs_rel_err"]
    assert set(held) == {"host-ort", "host-ort-1t"}
    assert all(0 < e < 0.5 and math.isfinite(e) for e in held.values())
    assert meta["training_fit"]["median_abs_rel_err"] < 0.01


def test_fewshot_devices_calibrated_in_one_batch_equal_one_by_one(tmp_path):
    """Few-shot devices that measured the same designs are calibrated together
    (`device_predictors`); each gets exactly the predictor it gets alone, and a device whose
    CSV has too few designs fails alone."""
    from toolchain.fleet.pricing import device_predictor, device_predictors
    from toolchain.fleet.spec import Device

    rows = (Path(__file__).parents[1] / "fixtures" / "standin" / "standin.csv").read_text()
    header, *lines = rows.strip().splitlines()
    devices = []
    for i, factor in enumerate((0.7, 1.9, 3.1)):
        csv = tmp_path / f"d{i}.csv"
        csv.write_text("\n".join([header] + [
            f"{ln.split(',')[0]},{float(ln.split(',')[1]) * factor * (1 + 0.03 * (j % 5)):.6g}"
            for j, ln in enumerate(lines)]) + "\n")
        devices.append(Device(f"d{i}", "rpi4", 10.0, proxy="host-ort-1t", measurements=csv))
    few = tmp_path / "few.csv"
    few.write_text("\n".join([header] + lines[:2]) + "\n")
    devices.insert(1, Device("few", "rpi4", 10.0, proxy="host-ort-1t", measurements=few))
    targets = {n: load_target(n) for n in ("rpi4", "host-ort-1t")}
    batch = device_predictors(devices, targets)
    assert isinstance(batch[1], Exception) and "at least 3" in str(batch[1])
    for d, got in zip(devices, batch, strict=True):
        if d.name == "few":
            continue
        alone, name, warnings = device_predictor(d, targets["rpi4"], targets["host-ort-1t"])
        assert (got[0].weights, got[0].model, got[1], got[2]) == \
            (alone.weights, alone.model, name, warnings)
        assert got[0].meta == alone.meta
    scales = [got[0].meta["calibration"]["scales"] for got in (batch[0], batch[2], batch[3])]
    assert scales[0] != scales[1] != scales[2]     # each device its own calibration
