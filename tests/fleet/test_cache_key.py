"""The fleet's build cache key covers every predictor package a device's build reads."""
from __future__ import annotations

import shutil
from pathlib import Path

from toolchain.fleet.cache import device_key
from toolchain.fleet.run import build_key
from toolchain.fleet.spec import load_fleet
from toolchain.home import predictors_dir, tuning_dir
from toolchain.predict.latency import builtin_predictors_dir
from toolchain.space import Plan
from toolchain.target import load_target

FLEET = '''
model = "m.onnx"

[[device]]
name = "nano"
target = "jetson-nano"
latency_ms = 2.0
fingerprint = "fp.csv"

[[device]]
name = "host"
target = "host-ort-1t"
latency_ms = 2.0
'''

# three probe designs: the fewest a fingerprint may have (load_fleet checks it)
FP_CSV = ("design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,0.2\n"
          "conv-3-16-3-2-224-1-relu-fp16,0.15\nconv-3-16-3-2-224-1-relu-int8,0.1\n")


def _keys(folder: Path) -> dict[str, str]:
    fleet = load_fleet(folder / "fleet.toml")
    return {d.name: device_key(fleet, d, "model-sha", None) for d in fleet.devices}


def test_a_refitted_profiled_package_rebuilds_the_fingerprint_devices(tmp_path):
    """A device known by a fingerprint is priced by a mix of every profiled device's package
    (toolchain.fleet.pricing), so a refit of any of them changes its key; so does every other
    device's, since the fleet's candidate plans include each profiled package's fronts."""
    (tmp_path / "m.onnx").write_bytes(b"not read by the key")
    (tmp_path / "fp.csv").write_text(FP_CSV)
    (tmp_path / "fleet.toml").write_text(FLEET)
    before = _keys(tmp_path)
    assert before == _keys(tmp_path)   # stable
    user = predictors_dir() / "host-ort"   # the 2-thread package: not host's own predictor
    shutil.copytree(builtin_predictors_dir() / "host-ort", user)
    (user / "digests.json").unlink(missing_ok=True)   # edited on purpose (docs/fleet.md)
    (user / "model.json").write_text((user / "model.json").read_text() + "\n")
    after = _keys(tmp_path)
    assert after["nano"] != before["nano"]
    assert after["host"] != before["host"]   # its candidates include host-ort's fronts


def test_a_user_package_beside_the_built_in_one_counts(tmp_path):
    """A package under $FLEETC_HOME takes precedence over the built-in one of the same name;
    the key covers both (they once shared file names in the digest, and the built-in won)."""
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "fp.csv").write_text(FP_CSV)
    (tmp_path / "fleet.toml").write_text(FLEET)
    before = _keys(tmp_path)
    user = predictors_dir() / "host-ort-1t"
    shutil.copytree(builtin_predictors_dir() / "host-ort-1t", user)
    copied = _keys(tmp_path)
    assert copied["host"] != before["host"]   # a user package now exists
    (user / "digests.json").unlink(missing_ok=True)   # edited on purpose (docs/fleet.md)
    (user / "model.json").write_text((user / "model.json").read_text() + "\n")
    assert _keys(tmp_path)["host"] != copied["host"]


def test_fleetc_sources_are_in_the_key(tmp_path, monkeypatch):
    """An editable checkout keeps its version while its code changes: the key covers the
    sources themselves (their digest is stable while they are unchanged)."""
    import toolchain.fleet.cache as fleet_module

    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "fp.csv").write_text(FP_CSV)
    (tmp_path / "fleet.toml").write_text(FLEET)
    before = _keys(tmp_path)
    fleet_module._source_digest.cache_clear()
    assert _keys(tmp_path) == before
    monkeypatch.setattr(fleet_module, "_source_digest", lambda: "edited sources")
    after = _keys(tmp_path)
    assert all(after[name] != before[name] for name in before)


def test_tuning_records_and_calibration_are_in_the_key(tmp_path, monkeypatch):
    """Every TVM build applies the tuning database, and host packages are calibrated unless
    --no-calibrate: a new record or the other calibration setting is another build."""
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "fp.csv").write_text(FP_CSV)
    (tmp_path / "fleet.toml").write_text(FLEET)
    before = _keys(tmp_path)
    target = load_target("host-tvm")
    plan = Plan(target="host-tvm")
    build_before = build_key("m", None, plan, target)
    db = tuning_dir(create=True) / "llvm-x86_64" / "records.json"
    db.parent.mkdir(parents=True)
    db.write_text("{}\n")
    tuned = _keys(tmp_path)
    assert all(tuned[name] != before[name] for name in before)
    assert build_key("m", None, plan, target) != build_before
    monkeypatch.setenv("FLEETC_CALIBRATE", "1")
    calibrated = _keys(tmp_path)
    assert all(calibrated[name] != tuned[name] for name in tuned)
