"""group_kernels: an anchor (Conv / Gemm / MatMul with a weight) absorbs its BN, bias and
activation chain; every other node is a kernel of its own, named after itself."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.count_costs import CountCostsPass
from passes.group_kernels import GroupKernelsPass
from passes.import_onnx import import_onnx
from toolchain.measure import zoo
from toolchain.pipeline import PassContext, Pipeline

F = TensorProto.FLOAT


def _graph(nodes, inputs: dict, weights: dict, outputs: dict):
    """Import a one-off model; outputs are name -> rank, declared with symbolic dims."""
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, F, [f"{n}{i}" for i in range(r)])
         for n, r in outputs.items()],
        [numpy_helper.from_array(rng.uniform(0.5, 1.5, s).astype(np.float32), n)
         for n, s in weights.items()])
    return import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _group(graph):
    """Run count_costs + group_kernels; returns the group_kernels result."""
    return Pipeline([CountCostsPass(), GroupKernelsPass()]).run(
        graph, PassContext(facts={"shapes"}))[-1]


_BN = {f"bn.{p}": (4,) for p in ("scale", "bias", "mean", "var")}


def _conv_bn_relu_pool():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", *_BN], ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2])]
    return _graph(nodes, {"x": (1, 3, 8, 8)}, {"w": (4, 3, 3, 3), **_BN}, {"y": 4})


def test_conv_bn_relu_is_one_kernel_anchor_first():
    graph = _conv_bn_relu_pool()
    record = _group(graph)
    conv, pool = graph.kernels
    assert (conv.name, conv.op_type) == ("conv", "Conv")
    assert conv.nodes == ("conv", "bn", "relu")
    assert conv.fused == ("BatchNormalization", "Relu")
    assert (pool.name, pool.nodes, pool.fused) == ("pool", ("pool",), ())
    assert {n: graph.node(n)["meta"]["group_kernels.kernel"] for n in graph.nx} == {
        "conv": "conv", "bn": "conv", "relu": "conv", "pool": "pool"}
    assert not record.changed and record.stats == {"kernels": 2, "fused_nodes": 2}


def test_kernel_fields_come_from_the_anchor_and_the_chain():
    graph = _conv_bn_relu_pool()
    _group(graph)
    k = graph.kernels[0]
    assert k.input_shape == (1, 3, 8, 8)
    assert k.output_shape == (1, 4, 4, 4)        # the Relu's output, the end of the chain
    assert k.weight_shape == (4, 3, 3, 3)
    assert (k.kernel_shape, k.strides, k.group) == ((3, 3), (2, 2), 1)
    assert k.dtype == "float32" and k.is_compute and not k.depthwise
    meta = [graph.node(n)["meta"] for n in k.nodes]
    assert k.macs == 64 * 27 == meta[0]["count_costs.macs"]
    assert k.flops == 2 * 64 * 27 + 64 + 64      # conv + one per output of BN and Relu
    assert k.params == 108 + 4 * 4               # conv weight + the BN's four vectors
    assert k.weight_bytes == k.params * 4
    assert k.activation_bytes == (3 * 64 + 64) * 4  # kernel input + chain output, not inner


@pytest.mark.parametrize(("nodes", "weights", "kernel", "fused"), [
    ([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
      helper.make_node("Add", ["m", "b"], ["y"], name="bias")],
     {"w": (5, 6), "b": (6,)}, "mm", ("Add",)),
    ([helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc", transB=1),
      helper.make_node("Relu", ["g"], ["y"], name="act")],
     {"w": (6, 5), "b": (6,)}, "fc", ("Relu",)),
    ([helper.make_node("Gemm", ["x", "w"], ["g"], name="fc"),
      helper.make_node("Add", ["g", "b"], ["a"], name="bias"),
      helper.make_node("Mul", ["s", "a"], ["m"], name="scale"),
      helper.make_node("Sigmoid", ["m"], ["y"], name="act")],
     {"w": (5, 6), "b": (6,), "s": (6,)}, "fc", ("Add", "Mul", "Sigmoid")),
], ids=["matmul+bias", "gemm+relu", "gemm+bias+scale+sigmoid"])
def test_gemm_and_matmul_absorb_bias_scale_and_activation(nodes, weights, kernel, fused):
    graph = _graph(nodes, {"x": (2, 5)}, weights, {"y": 2})
    _group(graph)
    (k,) = graph.kernels
    assert k.name == kernel and k.nodes[0] == kernel and k.fused == fused
    assert k.output_shape == (2, 6) and k.weight_shape == weights["w"]
    assert k.macs == 2 * 6 * 5


def _conv_then(nodes, extra_inputs=(), outputs=("y",), conv_weight_is_input=False):
    """x -> Conv(conv) -> c, followed by `nodes`."""
    inputs = {"x": (1, 4, 6, 6), **{t: (1, 4, 6, 6) for t in extra_inputs}}
    weights = {"s": (4, 1, 1)}
    if conv_weight_is_input:
        inputs["w"] = (4, 4, 3, 3)
    else:
        weights["w"] = (4, 4, 3, 3)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4)
    return _graph([conv, *nodes], inputs, weights, {o: 4 for o in outputs})


@pytest.mark.parametrize("graph_fn", [
    lambda: _conv_then([helper.make_node("Relu", ["c"], ["y"], name="n"),
                        helper.make_node("Sigmoid", ["c"], ["z"], name="other")],
                       outputs=("y", "z")),
    lambda: _conv_then([helper.make_node("Relu", ["c"], ["y"], name="n")],
                       outputs=("y", "c")),
    lambda: _conv_then([helper.make_node("MaxPool", ["c"], ["y"], name="n",
                                         kernel_shape=[2, 2])]),
    lambda: _conv_then([helper.make_node("Add", ["c", "x"], ["y"], name="n")]),
    lambda: _conv_then([helper.make_node("Mul", ["c", "g"], ["y"], name="n")],
                       extra_inputs=("g",)),
    lambda: _conv_then([helper.make_node("Relu", ["c"], ["y"], name="n")],
                       conv_weight_is_input=True),
], ids=["output-read-twice", "output-is-graph-output", "not-fusable-op", "residual-add",
        "gating-mul", "weight-not-constant"])
def test_chain_stops(graph_fn):
    graph = graph_fn()
    _group(graph)
    kernels = {k.name: k for k in graph.kernels}
    assert kernels["conv"].nodes == ("conv",) and kernels["conv"].fused == ()
    assert kernels["n"].nodes == ("n",)
    assert graph.node("n")["meta"]["group_kernels.kernel"] == "n"


def test_a_conv_without_a_constant_weight_is_not_compute():
    graph = _conv_then([helper.make_node("Relu", ["c"], ["y"], name="n")],
                       conv_weight_is_input=True)
    _group(graph)
    assert not graph.kernels[0].is_compute and graph.kernels[0].weight_shape is None


def test_mobilenet_block_kernels():
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    record = _group(graph)
    kernels = {k.name: k for k in graph.kernels}
    # every node is in exactly one kernel, kernels listed in topological order of anchors
    members = [n for k in graph.kernels for n in k.nodes]
    assert sorted(members) == sorted(graph.nx) and len(set(members)) == len(members)
    topo = graph.topo()
    assert [k.name for k in graph.kernels] == sorted(kernels, key=topo.index)
    assert kernels["block4.expand.conv"].nodes == (
        "block4.expand.conv", "block4.expand.bn", "block4.expand.act")
    assert kernels["block4.expand.conv"].fused == ("BatchNormalization", "Clip")
    dw = kernels["block4.dw.conv"]
    assert dw.depthwise and dw.group == dw.weight_shape[0] and dw.fused[-1] == "Clip"
    assert kernels["block4.project.conv"].fused == ("BatchNormalization",)
    assert kernels["block4.add"].nodes == ("block4.add",)
    assert kernels["head.fc"].nodes == ("head.fc",)  # its output is the graph output
    assert "block4.expand.bn" not in kernels
    assert record.stats == {"kernels": len(kernels), "fused_nodes": len(graph) - len(kernels)}


def test_grouping_twice_gives_the_same_kernels():
    graph = import_onnx(zoo.resnet(32, 10, 0.25, 10))
    first = GroupKernelsPass().run(graph, PassContext(facts={"shapes", "costs"}))
    kernels = list(graph.kernels)
    second = GroupKernelsPass().run(graph, PassContext(facts={"shapes", "costs"}))
    assert not first.changed and not second.changed
    assert graph.kernels == kernels
    assert kernels[0].nodes == ("stem.conv", "stem.bn", "stem.act")
