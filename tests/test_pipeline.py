"""Pipeline: requirements, invalidation, timing records, IR validation in debug mode."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.count_costs import CountCostsPass
from passes.discover_space import DiscoverSpacePass
from passes.fold_constants import FoldConstantsPass
from passes.group_kernels import GroupKernelsPass
from passes.import_onnx import import_onnx
from passes.infer_shapes import InferShapesPass
from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassResult, Pipeline, PipelineError


def _graph() -> Graph:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])
    w = numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Add", ["x", "r"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [x], [y], [w])
    return import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@dataclass
class _Breaker(Pass):
    name = "breaker"

    def run(self, graph, ctx):
        graph.node("add")["inputs"][0] = "ghost"
        return PassResult(changed=True)


def test_requires_are_checked_and_name_the_pass():
    with pytest.raises(PipelineError, match="group_kernels requires .*costs"):
        Pipeline([GroupKernelsPass()]).run(_graph(), PassContext(facts={"shapes"}))


def test_records_and_facts():
    graph = _graph()
    ctx = PassContext(facts=set())
    records = Pipeline([InferShapesPass(), CountCostsPass(), GroupKernelsPass(),
                        DiscoverSpacePass(), FoldConstantsPass()]).run(graph, ctx)
    assert [r.name for r in records] == ["infer_shapes", "count_costs", "group_kernels",
                                         "discover_space", "fold_constants"]
    assert all(r.seconds >= 0 for r in records)
    assert records[1].stats["macs"] == 8 * 6 * 6 * 8 * 9
    assert records[2].stats == {"kernels": 2, "fused_nodes": 1}
    assert records[3].stats["skippable_blocks"] == 1
    assert not records[4].changed and "space" in ctx.facts


def test_changed_pass_invalidates_facts():
    @dataclass
    class Touch(Pass):
        name = "touch"
        invalidates = frozenset({"kernels"})

        def run(self, graph, ctx):
            return PassResult(changed=True)

    ctx = PassContext(facts=set())
    Pipeline([InferShapesPass(), CountCostsPass(), GroupKernelsPass(), Touch()]).run(_graph(), ctx)
    assert "kernels" not in ctx.facts and "shapes" in ctx.facts


def test_debug_validates_ir_after_each_pass():
    with pytest.raises(PipelineError, match="after pass breaker .*infer_shapes"):
        Pipeline([InferShapesPass(), _Breaker()]).run(_graph(), PassContext(debug=True))
    Pipeline([InferShapesPass(), _Breaker()]).run(_graph(), PassContext(debug=False))


def test_skippable_block_and_kernel_grouping():
    graph = _graph()
    Pipeline([CountCostsPass(), GroupKernelsPass(), DiscoverSpacePass()]).run(
        graph, PassContext(facts={"shapes"}))
    kernels = graph.kernels
    assert [k.name for k in kernels] == ["conv", "add"]
    assert kernels[0].fused == ("Relu",) and kernels[0].nodes == ("conv", "relu")
    space = graph.space
    assert space.blocks == {"add": ("conv", "relu", "add")}
    assert "width" not in space.options["conv"]  # tied to the residual add
    assert graph.node("relu")["meta"]["group_kernels.kernel"] == "conv"


def _conv5(pads):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    w = numpy_helper.from_array(np.ones((8, 8, 5, 5), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=pads, name="c")],
                          "g", [x], [y], [w])
    return import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("pads, sizes", [([2, 2, 2, 2], [5, 3]), ([0, 0, 0, 0], None),
                                         ([1, 1, 1, 1], [5, 3])])
def test_kernel_shrink_offered_only_when_pads_allow(pads, sizes):
    graph = _conv5(pads)
    Pipeline([CountCostsPass(), GroupKernelsPass(), DiscoverSpacePass()]).run(
        graph, PassContext(facts={"shapes"}))
    assert graph.space.options["c"].get("kernel_size") == sizes
