"""Units of what onnxruntime really runs in mixed-precision models: the rewritten model's units
(`model_units`, onnxruntime's own answer) and the plan's units (`units_under_plan`, no rewrite)
must agree on the kernels onnxruntime runs otherwise than the plan says."""
from __future__ import annotations

import logging
from collections import Counter

import pytest

from passes import load_and_analyze
from toolchain.compile.rewrite import apply_plan
from toolchain.measure.zoo import mobilenet_v2, resnet
from toolchain.predict.latency import model_units
from toolchain.predict.units import INT8_ASYM, INT8_NCHW, units_under_plan
from toolchain.space import Choice, Plan


def _kinds(units) -> Counter:
    return Counter(u.kind for u in units)


def _both(base, plan, caplog):
    graph = load_and_analyze(base)
    caplog.set_level(logging.ERROR, logger="toolchain")   # no calibration data: warns
    rewritten = apply_plan(base, plan)
    return _kinds(model_units(rewritten)), _kinds(units_under_plan(graph, plan))


@pytest.mark.parametrize("stem_int8", [False, True])
def test_stem_max_pool_priced_alike_by_model_and_plan_paths(stem_int8, caplog):
    # after a float stem onnxruntime runs the pool on uint8 in NCHW; after an int8 stem it
    # runs NhwcMaxPool on uint8, priced as float (see units._runtime_int8)
    base = resnet(64, 10, 0.25)
    compute = [k.name for k in load_and_analyze(base).kernels if k.is_compute]
    int8 = compute if stem_int8 else compute[1:]
    direct, planned = _both(base, Plan(kernels={k: Choice("int8") for k in int8}), caplog)
    kind = "MaxPool/fp32" if stem_int8 else f"MaxPool/{INT8_NCHW}"
    assert direct[kind] == planned[kind] == 1


def test_float_conv_between_int8_convs_runs_on_runtime_quantized_weights(caplog):
    base = mobilenet_v2(64, 0.5)
    compute = [k.name for k in load_and_analyze(base).kernels if k.is_compute]
    middle = next(k for k in compute if k.endswith("expand.conv"))   # int8 on both sides
    plan = Plan(kernels={k: Choice("int8") for k in compute if k != middle})
    direct, planned = _both(base, plan, caplog)
    assert direct[f"conv/{INT8_ASYM}"] == planned[f"conv/{INT8_ASYM}"] == 1
    assert direct["conv/fp32"] == planned["conv/fp32"] == 0
