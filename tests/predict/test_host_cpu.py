"""Predictor packages record the CPU they were measured on; another CPU is told apart."""
from __future__ import annotations

import json

import pytest

from toolchain.errors import BadInputError
from toolchain.predict.kernel import KernelPredictor, cpu_record, describe_cpu, same_cpu

_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz
flags\t\t: fpu sse sse2 ssse3 fma avx avx2 avx512f avx512_vnni amx_int8 hypervisor
processor\t: 1
vendor_id\t: GenuineIntel
"""


def test_cpu_record_reads_vendor_model_and_isa_flags_only():
    rec = cpu_record(1, _XEON)
    assert rec == {"vendor": "GenuineIntel",
                   "model": "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz",
                   "isa": ["amx_int8", "avx", "avx2", "avx512_vnni", "avx512f", "fma", "sse",
                           "sse2", "ssse3"], "threads": 1}
    here = cpu_record(1)
    assert here["vendor"] and here["isa"] == sorted(here["isa"])
    assert same_cpu(here, cpu_record(4))            # threads are the target's, not the CPU's
    assert not same_cpu(None, here)                 # not recorded: another CPU
    assert not same_cpu({**here, "isa": here["isa"][:-1]}, here)   # one ISA flag fewer
    assert not same_cpu({**here, "model": "other"}, here)
    assert "unrecorded" in describe_cpu(None) and "GenuineIntel" in describe_cpu(rec)


def test_package_round_trips_its_cpu_and_rejects_a_bad_one(tmp_path):
    rec = cpu_record(2, _XEON)
    KernelPredictor({"Add/fp32": {"kernel": 0.01}}, {"model": 0.1},
                    {"name": "p", "cpu": rec}).save(tmp_path / "ok")
    assert KernelPredictor.load(tmp_path / "ok").meta["cpu"] == rec
    KernelPredictor({"Add/fp32": {"kernel": 0.01}}, {"model": 0.1},
                    {"name": "p", "cpu": {"vendor": 3}}).save(tmp_path / "bad")
    with pytest.raises(BadInputError, match="not a CPU record"):
        KernelPredictor.load(tmp_path / "bad")
    assert "cpu" not in json.loads((tmp_path / "ok" / "model.json").read_text())


def test_another_cpus_package_is_calibrated_once_then_served_from_the_cache(tmp_path,
                                                                           monkeypatch):
    """A package recording another CPU: the first load measures the calibration probes and
    rescales the package to them; the second load reads the cached calibration (no timing);
    a package recording this CPU, and FLEETC_CALIBRATE=0, are used as they are."""
    from toolchain.predict import latency
    from toolchain.target import load_target

    monkeypatch.setenv("FLEETC_CALIBRATE", "1")
    target = load_target("host-ort-1t")
    shipped = latency.load_predictor(target, calibrate=False)
    probes = ["conv-3-16-3-2-224-1-relu-fp32", "conv-256-512-3-2-14-1-relu-fp32",
              "pool-maxpool-64-112-3-2-fp32", "op-concat-32-112-fp32"]
    monkeypatch.setattr(latency, "_calibration_probes", lambda: probes)
    calls = []

    def measure(target, csv):   # this "CPU" runs everything 0.7x the package's prediction
        calls.append(csv)
        csv.write_text("design,latency_ms\n")
        designs = [latency.design_units(p) for p in probes]
        return designs, [0.7 * shipped.predict_units(u).latency_ms for u in designs]
    monkeypatch.setattr(latency, "_measure_probes", measure)
    KernelPredictor(shipped.weights, shipped.model,
                    {**shipped.meta, "cpu": cpu_record(1, _XEON)}).save(tmp_path / "xeon")

    first = latency.load_predictor(target, tmp_path / "xeon")
    second = latency.load_predictor(target, tmp_path / "xeon")
    assert len(calls) == 1                                   # measured once, then cached
    assert second.weights == first.weights and same_cpu(second.meta["cpu"], cpu_record())
    assert second.meta["measured_cpu"]["vendor"] == "GenuineIntel"
    units = latency.design_units("conv-64-64-3-1-56-1-relu-fp32")
    ratio = second.predict_units(units).latency_ms / shipped.predict_units(units).latency_ms
    assert ratio == pytest.approx(0.7, rel=0.05)
    assert "leave-one-out" in latency.predictor_error(second.meta)

    KernelPredictor(shipped.weights, shipped.model,
                    {**shipped.meta, "cpu": cpu_record(1)}).save(tmp_path / "here")
    assert latency.load_predictor(target, tmp_path / "here").weights == shipped.weights
    monkeypatch.setenv("FLEETC_CALIBRATE", "0")
    assert latency.load_predictor(target, tmp_path / "xeon").weights == shipped.weights
    assert len(calls) == 1


def test_no_calibrate_options(tmp_path, monkeypatch):
    """`predict --no-calibrate` uses the package as it is (no timing); compile's option turns
    calibration off for the whole run (fleet workers read the same environment)."""
    import onnx
    from click.testing import CliRunner

    from tests.predict.test_fallback import concat_model
    from toolchain.cli import cli
    from toolchain.predict import latency

    monkeypatch.setenv("FLEETC_CALIBRATE", "1")

    def measure(target, csv):
        raise AssertionError("calibration ran")
    monkeypatch.setattr(latency, "_measure_probes", measure)
    onnx.save(concat_model(), tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "m.onnx"), "-t", "host-ort-1t",
                                      "--no-calibrate"])
    assert result.exit_code == 0 and "predictor error 4.2%" in result.output
    CliRunner().invoke(cli, ["compile", str(tmp_path / "none.onnx"), "-t", "host-ort-1t",
                             "--no-calibrate", "-o", str(tmp_path / "out")])
    assert latency.calibration_enabled() is False
