"""Property: default-scheduled TVM builds of random legal plans of the digits fixture and a zoo
MobileNetV2 compute what onnxruntime computes on the same rewritten model (emit_tvm's check:
element-wise tolerance, cosine similarity for int8 QDQ). One drawn plan per model: a TVM build
costs seconds and the suite's budget is tight (FLEETC_HYPOTHESIS=explore draws new ones)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from passes import load_and_analyze
from passes.emit_tvm import emit_tvm
from tests.compile.test_rewrite_properties import plans
from toolchain.calib import synthetic_calib
from toolchain.compile.rewrite import apply_plan
from toolchain.measure import zoo
from toolchain.target import load_target

pytestmark = pytest.mark.xdist_group("tvm_build")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "digits_mbv2.onnx"
MODELS = {
    "digits": lambda: __import__("onnx").load(str(FIXTURE)),
    "mbv2": lambda: zoo.mobilenet_v2(32, 0.25, 10, kernel_sizes=[3, 3, 5, 5, 5, 3, 3]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_scheduled_builds_of_random_plans_match_onnxruntime(name, tmp_path):
    model = MODELS[name]()
    graph = load_and_analyze(model)
    calib = synthetic_calib(graph, n=8, warn=False)
    target = load_target("host-tvm")
    built = []
    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value

    def own_channels(plan):   # the shared strategy draws 3-channel resolutions
        for shape in plan["model"]["input_shape"].values():
            shape[1] = channels
        return plan

    @settings(max_examples=1, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(plan=plans(graph.space).map(own_channels))
    def check(plan):
        out = apply_plan(model, plan, calib=calib)
        res = emit_tvm(out, target, tmp_path / str(len(built)))  # EmitError on a mismatch
        assert res.checked and "default" in res.schedules.values()
        assert "none" not in res.schedules.values()
        built.append(res)

    check()
    assert len(built) == 1
