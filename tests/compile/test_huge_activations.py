"""Regression (issue 22): constant-fill models (the onnx package's light Inception-v1) reach
activations near 1e20. Pruning's statistics overflowed float32 to NaN, the pruned model's
activations became NaN, and onnxruntime's quantizer then failed on the NaN ranges ("scale
issue"): compile exited 1."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.import_onnx import import_onnx
from passes.prune_channels import prune_channels, reference_grams
from toolchain.calib import CalibData
from toolchain.compile.rewrite import rewrite
from toolchain.errors import BadInputError
from toolchain.space import Choice, Plan


def huge_model(weight: float = 1e6, layers: int = 4) -> onnx.ModelProto:
    """1x1 convs 8 -> 16 -> ... with every weight `weight`: the last conv's input is ~1e21
    with the default 1e6, so its squares overflow float32."""
    nodes, inits, x, cin = [], [], "x", 8
    for i in range(layers):
        w = numpy_helper.from_array(np.full((16, cin, 1, 1), weight, np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        x, cin = f"c{i}", 16
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["y"], name="flat"))
    graph = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 8, 6, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _calib(n: int = 8) -> CalibData:
    x = np.abs(np.random.default_rng(0).standard_normal((n, 8, 6, 6))).astype(np.float32)
    return CalibData({"x": x}, None, "test")


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_pruning_before_huge_activations_stays_finite_and_int8_rewrites():
    model = huge_model()
    calib = _calib()
    assert np.all(np.isfinite(_run(model, calib.inputs["x"][:1])))
    # the old float32 product overflowed here: its reconstruction was NaN
    graph = import_onnx(model)
    kept = prune_channels(graph, {"conv2": 0.5}, calib)
    assert kept == {"conv2": 8}
    assert all(np.all(np.isfinite(a)) for a in graph.initializers.values())
    # the plan that failed: pruned and int8 around the huge tensor
    plan = Plan(kernels={"conv2": Choice("int8", width=0.5), "conv3": Choice("int8")})
    out = _run(rewrite(model, plan, calib=calib).model, calib.inputs["x"][:1])
    assert np.all(np.isfinite(out))


def test_reference_statistics_prune_like_a_fresh_run():
    model, calib = huge_model(weight=0.5), _calib()
    fresh, cached = import_onnx(model), import_onnx(model)
    prune_channels(fresh, {"conv1": 0.5}, calib)
    grams = reference_grams(import_onnx(model), ["conv1", "conv2"], calib)
    assert sorted(grams) == ["conv2", "conv3"]    # the consumers
    prune_channels(cached, {"conv1": 0.5}, calib.with_grams(grams))
    x = calib.inputs["x"][:2]
    from passes.export_onnx import export_onnx
    a = np.concatenate([_run(export_onnx(fresh), x[i:i + 1]) for i in range(2)])
    b = np.concatenate([_run(export_onnx(cached), x[i:i + 1]) for i in range(2)])
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_int8_of_a_non_finite_activation_is_a_clear_error():
    model = huge_model(weight=1e12)    # overflows float32 to inf at the third conv
    calib = _calib()
    with pytest.raises(BadInputError, match="not finite"):
        rewrite(model, Plan(kernels={"conv3": Choice("int8")}), calib=calib)
