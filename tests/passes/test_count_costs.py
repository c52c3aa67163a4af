"""count_costs: MACs, FLOPs, params and bytes per node, by the README's counting rules."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.count_costs import CountCostsPass
from passes.import_onnx import import_onnx
from toolchain.measure import zoo
from toolchain.pipeline import PassContext, Pipeline, PipelineError

F = TensorProto.FLOAT


def _graph(nodes, inputs: dict, weights: dict, outputs: dict):
    """Import a one-off model. Outputs are declared with symbolic dims (name -> rank), so every
    shape the counts use comes from shape inference, not from the declaration."""
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, F, [f"{n}{i}" for i in range(r)])
         for n, r in outputs.items()],
        [numpy_helper.from_array(np.ones(s, np.float32), n) for n, s in weights.items()])
    return import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _count(graph):
    return CountCostsPass().run(graph, PassContext(facts={"shapes"}))


def _meta(graph, node: str, key: str) -> int:
    return graph.node(node)["meta"][f"count_costs.{key}"]


# Conv: MACs = output elements x input channels per group x kernel area.
@pytest.mark.parametrize(("x", "w", "attrs", "out", "macs"), [
    ((1, 3, 8, 8), (4, 3, 3, 3), {"pads": [1] * 4}, (1, 4, 8, 8), (4 * 8 * 8) * 3 * 9),
    ((1, 3, 8, 8), (4, 3, 3, 3), {}, (1, 4, 6, 6), (4 * 6 * 6) * 3 * 9),
    ((1, 3, 8, 8), (4, 3, 3, 3), {"pads": [1] * 4, "strides": [2, 2]}, (1, 4, 4, 4),
     (4 * 4 * 4) * 3 * 9),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"pads": [1] * 4}, (2, 4, 8, 8), (2 * 4 * 8 * 8) * 3 * 9),
    ((1, 3, 8, 8), (4, 3, 1, 1), {}, (1, 4, 8, 8), (4 * 8 * 8) * 3 * 1),
    ((1, 3, 8, 8), (4, 3, 1, 3), {"pads": [0, 1, 0, 1]}, (1, 4, 8, 8), (4 * 8 * 8) * 3 * 3),
    ((1, 4, 8, 8), (8, 2, 3, 3), {"pads": [1] * 4, "group": 2}, (1, 8, 8, 8),
     (8 * 8 * 8) * 2 * 9),
    ((1, 4, 8, 8), (4, 1, 3, 3), {"pads": [1] * 4, "group": 4}, (1, 4, 8, 8),
     (4 * 8 * 8) * 1 * 9),
], ids=["same", "valid", "stride2", "batch2", "1x1", "1x3", "grouped", "depthwise"])
def test_conv_macs(x, w, attrs, out, macs):
    graph = _graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", **attrs)],
                   {"x": x}, {"w": w}, {"y": 4})
    _count(graph)
    assert graph.shape("y") == out
    assert _meta(graph, "c", "macs") == macs
    assert _meta(graph, "c", "flops") == 2 * macs  # no bias
    assert _meta(graph, "c", "params") == int(np.prod(w))


def test_conv_with_bias_flops_params_and_bytes():
    graph = _graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", pads=[1] * 4)],
                   {"x": (1, 3, 8, 8)}, {"w": (4, 3, 3, 3), "b": (4,)}, {"y": 4})
    result = _count(graph)
    assert _meta(graph, "c", "macs") == 6912                     # 256 outputs x 3 x 9
    assert _meta(graph, "c", "flops") == 2 * 6912 + 256          # one bias add per output
    assert _meta(graph, "c", "params") == 108 + 4
    assert _meta(graph, "c", "weight_bytes") == (108 + 4) * 4
    assert _meta(graph, "c", "activation_bytes") == (3 * 64 + 4 * 64) * 4  # input + output
    assert not result.changed and result.stats == {"macs": 6912}


def test_conv_transpose_counts_input_elements():
    # ConvTranspose: input elements x output channels per group x kernel area
    graph = _graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="t", strides=[2, 2])],
                   {"x": (1, 4, 4, 4)}, {"w": (4, 2, 3, 3)}, {"y": 4})
    _count(graph)
    assert graph.shape("y") == (1, 2, 9, 9)
    assert _meta(graph, "t", "macs") == (4 * 4 * 4) * 2 * 9


# Gemm: output elements x the reduced dimension K (5 here), whichever operand is transposed.
@pytest.mark.parametrize(("x", "b", "attrs", "bias", "flops"), [
    ((2, 5), (5, 3), {}, True, 2 * 30 + 6),
    ((5, 2), (5, 3), {"transA": 1}, True, 2 * 30 + 6),
    ((2, 5), (3, 5), {"transB": 1}, True, 2 * 30 + 6),
    ((2, 5), (5, 3), {}, False, 2 * 30),
], ids=["plain", "transA", "transB", "no-bias"])
def test_gemm(x, b, attrs, bias, flops):
    inputs = ["x", "b", "c"] if bias else ["x", "b"]
    weights = {"b": b, "c": (3,)} if bias else {"b": b}
    graph = _graph([helper.make_node("Gemm", inputs, ["y"], name="g", **attrs)],
                   {"x": x}, weights, {"y": 2})
    _count(graph)
    assert graph.shape("y") == (2, 3)
    assert _meta(graph, "g", "macs") == 2 * 3 * 5
    assert _meta(graph, "g", "flops") == flops


@pytest.mark.parametrize(("x", "out"), [((4, 5), (4, 6)), ((1, 2, 4, 5), (1, 2, 4, 6))],
                         ids=["2d", "batched"])
def test_matmul_and_its_bias_add(x, out):
    graph = _graph([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", ["m", "b"], ["y"], name="bias")],
                   {"x": x}, {"w": (5, 6), "b": (6,)}, {"y": len(x)})
    _count(graph)
    elems = int(np.prod(out))
    assert _meta(graph, "mm", "macs") == elems * 5
    assert _meta(graph, "mm", "flops") == 2 * elems * 5
    assert _meta(graph, "bias", "macs") == 0
    assert _meta(graph, "bias", "flops") == elems  # one per output element


# Every other op: no MACs, one FLOP per output element (pooling: per window element).
@pytest.mark.parametrize(("op", "attrs", "flops"), [
    ("Relu", {}, 4 * 8 * 8),
    ("Sigmoid", {}, 4 * 8 * 8),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, (4 * 4 * 4) * 4),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1] * 4}, (4 * 8 * 8) * 9),
    ("GlobalAveragePool", {}, 4 * 8 * 8),  # one per input element, not per output (4)
    ("Flatten", {}, 4 * 8 * 8),
])
def test_ops_without_macs(op, attrs, flops):
    graph = _graph([helper.make_node(op, ["x"], ["y"], name="n", **attrs)],
                   {"x": (1, 4, 8, 8)}, {}, {"y": 2 if op == "Flatten" else 4})
    result = _count(graph)
    assert _meta(graph, "n", "macs") == 0 and result.stats["macs"] == 0
    assert _meta(graph, "n", "flops") == flops
    assert _meta(graph, "n", "params") == 0


def test_a_shared_weight_is_counted_once():
    graph = _graph([helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
                    helper.make_node("MatMul", ["a", "w"], ["y"], name="second")],
                   {"x": (4, 5)}, {"w": (5, 5)}, {"y": 2})
    result = _count(graph)
    assert (_meta(graph, "first", "params"), _meta(graph, "second", "params")) == (25, 0)
    assert _meta(graph, "second", "weight_bytes") == 0
    assert _meta(graph, "second", "activation_bytes") == 2 * 4 * 5 * 4  # a and y, no weight
    assert result.stats["macs"] == 2 * (4 * 5 * 5)


def test_counting_twice_gives_the_same_numbers():
    graph = _graph([helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
                    helper.make_node("Relu", ["a"], ["y"], name="r")],
                   {"x": (1, 3, 8, 8)}, {"w": (4, 3, 3, 3)}, {"y": 4})
    first = _count(graph)
    metas = {n: dict(graph.node(n)["meta"]) for n in graph.nx}
    second = _count(graph)
    assert not first.changed and not second.changed
    assert first.stats == second.stats == {"macs": 3888}
    assert {n: graph.node(n)["meta"] for n in graph.nx} == metas


def test_requires_shapes():
    graph = _graph([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": (1, 4)}, {},
                   {"y": 2})
    with pytest.raises(PipelineError, match="count_costs requires .*shapes"):
        Pipeline([CountCostsPass()]).run(graph, PassContext(facts=set()))


def test_mobilenet_v2_matches_the_published_count():
    # MobileNetV2 1.0 at 224x224: the MACs reported for torchvision's mobilenet_v2 (Conv2d and
    # Linear, grouped convs divided by g) are 300,774,272 ("300M multiply-adds", Sandler et al.,
    # table 4), 1280 x 1000 of them in the classifier. At 64x64 every feature map is 2/7 the side
    # of the 224 one (32..2 vs 112..7), so the convolutions do 4/49 of their MACs.
    classifier = 1280 * 1000
    graph = import_onnx(zoo.mobilenet_v2(64, 1.0, 1000))
    macs = _count(graph).stats["macs"]
    assert macs == (300_774_272 - classifier) * 4 // 49 + classifier
    assert _meta(graph, "head.fc", "macs") == classifier
    bn = [n for n in graph.nx if graph.op(n) == "BatchNormalization"]
    assert bn and all(_meta(graph, n, "macs") == 0 for n in bn)
