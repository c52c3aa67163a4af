"""The shipped host-tvm predictor package: fitted on TVM-built probes of this CPU, its error on
models the fit never saw recorded with the evidence (benchmarks/predictor_package.py)."""
from __future__ import annotations

import csv
import gzip
import io

import numpy as np
import pytest

from toolchain.predict.latency import builtin_predictors_dir, load_predictor
from toolchain.target import load_target


def test_host_tvm_package_records_its_code_cpu_and_unseen_model_error():
    target = load_target("host-tvm")
    model = load_predictor(target)
    meta = model.meta
    assert meta["target"] == "host-tvm" and "default schedules" in meta["schedules"]
    assert {"conv/fp32", "dwconv/fp32", "gemm/fp32"} <= set(meta["kinds"])
    # a CPU record: on another CPU fleetc calibrates the package before using it
    assert meta["cpu"]["isa"] and meta["cpu"]["threads"] == target.measure.threads
    unseen = meta["unseen_models"]
    folder = builtin_predictors_dir() / "host-tvm"
    text = gzip.decompress((folder / unseen["file"]).read_bytes()).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == unseen["models"] >= 20
    rel = [abs(float(r["predicted_ms"]) / float(r["measured_ms"]) - 1) for r in rows]
    assert np.median(rel) == pytest.approx(unseen["median_abs_rel_err"], abs=1e-3)
    assert unseen["median_abs_rel_err"] <= 0.10     # the bar, on unseen models
    trained = {r["design"] for r in csv.DictReader((folder / "measurements.csv").open())}
    assert not trained & {r["model"] for r in rows}   # never fitted on the unseen models
