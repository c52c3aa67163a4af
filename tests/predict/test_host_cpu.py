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
