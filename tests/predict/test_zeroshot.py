"""Zero-shot latency estimates for targets nobody has measured (toolchain/predict/zeroshot.py):
what they are, how they are labelled, that measurements replace them, and that the shipped
evidence (targets/zeroshot.json) matches the shipped published tables."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.cli import cli
from toolchain.errors import BadInputError
from toolchain.home import predictors_dir
from toolchain.predict import zeroshot
from toolchain.predict.kernel import KernelPredictor
from toolchain.predict.latency import builtin_predictors_dir, load_predictor, model_units
from toolchain.target import load_target, parse_target

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "tests" / "fixtures" / "digits_mbv2.onnx"
EDGE = ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "pixel-a76")


@pytest.fixture(scope="module")
def units():
    return model_units(DIGITS)


def test_peak_and_spec_vector():
    assert zeroshot.peak_gops(4, 1.5, 128) == pytest.approx(48.0)
    assert zeroshot.peak_gops(4, 1.5, 128, int8_dot=True, precision="int8") == 192.0
    assert zeroshot.peak_gops(4, 1.5, 128, precision="int8") == 96.0
    assert zeroshot.peak_gops(4, 1.5, 128, precision="fp16") == 48.0
    assert zeroshot.peak_gops(4, 1.5, 128, fp16_simd=True, precision="fp16") == 96.0
    v = zeroshot.spec_vector({"cores": 128, "freq_ghz": 0.921, "simd_bits": 32, "gpu": True})
    assert v == pytest.approx([math.log(2 * 128 * 0.921), 1.0])
    nano = zeroshot.target_spec(load_target("jetson-nano"))   # a CUDA target: its GPU
    assert nano["gpu"] and nano["cores"] == 128
    assert not zeroshot.target_spec(load_target("rpi4"))["gpu"]


@pytest.mark.parametrize("name", EDGE)
def test_every_edge_target_has_an_estimate_from_an_empty_home(name, units):
    target = load_target(name)
    assert not (predictors_dir() / target.predictor).exists()
    model = load_predictor(target)
    anchor = KernelPredictor.load(builtin_predictors_dir() / zeroshot.ANCHOR)
    record = model.meta["zeroshot"]
    assert model.name == f"{target.predictor}-zeroshot" and model.meta["target"] is None
    assert record["validated"] is False and "UNVALIDATED" in record["label"]
    ratio = record["speed_ratio"]
    doc = zeroshot.load_model()
    expect = math.exp(doc["slopes_vector"] @ (
        zeroshot.spec_vector(zeroshot.target_spec(target))
        - zeroshot.spec_vector(zeroshot.target_spec(load_target(zeroshot.ANCHOR)))))
    assert ratio == pytest.approx(expect, rel=1e-3)
    got = model.predict_units(units, strict=True).latency_ms
    assert got == pytest.approx(ratio * anchor.predict_units(units).latency_ms, rel=1e-3)
    in_manifest = zeroshot.manifest_estimate(name, model.name)
    assert in_manifest == {k: record[k] for k in in_manifest}


def test_measurements_replace_the_estimate(units):
    folder = predictors_dir(create=True) / "rpi4"
    shutil.copytree(builtin_predictors_dir() / "host-ort-1t", folder)
    model = load_predictor(load_target("rpi4"))
    assert "zeroshot" not in model.meta and model.name == "host-ort-1t"
    assert zeroshot.manifest_estimate("rpi4", model.name) is None


def test_no_estimate_for_local_targets_or_targets_without_specs(tmp_path):
    local = parse_target({"name": "local", "tvm_target": {"kind": "llvm"}, "predictor": "local",
                          "measure": {"kind": "local-tvm", "threads": 1},
                          "features": {"cores": 1, "freq_ghz": 2.6, "simd_bits": 512}})
    with pytest.raises(BadInputError, match="no latency predictor for target local"):
        load_predictor(local)     # measurable here: profile it instead
    assert "zeroshot" not in load_predictor(load_target("host-tvm")).meta   # shipped package
    bare = parse_target({"name": "bare", "tvm_target": {"kind": "llvm"}, "predictor": "bare",
                         "measure": {"kind": "rpc", "rpc_key": "bare"},
                         "features": {"cores": 4, "freq_ghz": "fast"}})
    with pytest.raises(BadInputError, match="no latency predictor for target bare"):
        load_predictor(bare)


def test_damaged_model_file_is_bad_input(tmp_path, monkeypatch):
    bad = tmp_path / "zeroshot.json"
    bad.write_text('{"slopes": {"log_peak_gops": "x"}}')
    monkeypatch.setattr(zeroshot, "model_path", lambda: bad)
    with pytest.raises(BadInputError, match="zero-shot model is damaged"):
        load_predictor(load_target("rpi4"))


def test_label_says_when_the_error_is_unknown():
    record = zeroshot.estimate_record({"anchor": "host-ort-1t"}, 1.5)
    assert record["expected_error"] is None
    assert record["label"].endswith("expected error unknown")


def _sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(gzip.decompress(data) if path.suffix == ".gz" else data).hexdigest()


def test_shipped_evidence_spans_device_classes_and_matches_the_shipped_tables():
    doc = json.loads(zeroshot.model_path().read_text())
    err = doc["expected_error"]
    assert err["devices"] >= 10 and len(err["classes"]) >= 4
    assert 0 < err["median_abs_rel_err"] <= err["p90_abs_rel_err"]
    assert "leave one device" in err["method"]
    per_device = [d["median_abs_rel_err"] for d in doc["per_device"].values()
                  if d["median_abs_rel_err"] is not None]
    assert np.median(per_device) == pytest.approx(err["median_abs_rel_err"], abs=1e-3)
    for name, sha in doc["fitted_on"]["files_sha256"].items():
        assert _sha(ROOT / "data" / name) == sha, name
    assert _sha(ROOT / "data" / "device_specs.csv") == doc["fitted_on"]["specs_sha256"]
    label = zeroshot.estimate_record(zeroshot.load_model())["label"]
    assert f"median |error| {100 * err['median_abs_rel_err']:.0f}%" in label


def test_cli_targets_and_predict_show_the_label():
    runner = CliRunner()
    listing = runner.invoke(cli, ["targets"])
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0]: line for line in listing.output.splitlines()}
    for name in EDGE:
        assert " ZERO-SHOT " in rows[name]
    assert " package " in rows["host-ort-1t"] and " package " in rows["host-tvm"]
    assert "ZERO-SHOT: ZERO-SHOT estimate, UNVALIDATED" in listing.output
    assert "expected error: median" in listing.output
    text = runner.invoke(cli, ["predict", str(DIGITS), "-t", "rpi4"])
    assert text.exit_code == 0, text.output
    assert "total" in text.output and "UNVALIDATED" in text.output.splitlines()[-1]
    out = runner.invoke(cli, ["predict", str(DIGITS), "-t", "pixel-a76", "--json"])
    doc = json.loads(out.output)
    assert doc["validated"] is False and doc["latency_estimate"]["kind"] == "zero-shot"
    shown = runner.invoke(cli, ["predictor", "show", "-t", "jetson-nano"])
    assert shown.exit_code == 0 and shown.output.startswith("no package: ZERO-SHOT")
