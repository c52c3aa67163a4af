"""fold_constants: nodes computing only from constants become weights; outputs do not change."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from passes.export_onnx import export_onnx
from passes.fold_constants import FoldConstantsPass
from passes.infer_shapes import infer_shapes
from tests.helpers import random_feeds, run_ort
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import PassContext

CUSTOM = "com.example"


def _attr(a: AttributeProto):
    v = helper.get_attribute_value(a)
    if a.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(v)
    if a.type == AttributeProto.STRING:
        return v.decode()
    return list(v) if a.type in (AttributeProto.INTS, AttributeProto.FLOATS) else v


def _ir(nodes, inputs: dict, weights: dict, outputs: list[str]) -> Graph:
    """The IR of these onnx.helper nodes, built directly: import_onnx would fold on its own."""
    graph = Graph()
    graph.opset = {"": 21, CUSTOM: 1}  # ONNX's reference evaluator has QDQ from opset 19
    for name, shape in inputs.items():
        graph.inputs.append(name)
        graph.tensors[name] = TensorInfo(shape, "float32")
    for name, arr in weights.items():
        graph.initializers[name] = arr
        graph.tensors[name] = TensorInfo(arr.shape, arr.dtype.name)
    for n in nodes:
        graph.add_node(n.name, n.op_type, list(n.input), list(n.output),
                       {a.name: _attr(a) for a in n.attribute}, domain=n.domain)
    graph.outputs = list(outputs)
    infer_shapes(graph)
    graph.validate()
    return graph


def _fold(graph: Graph):
    return FoldConstantsPass().run(graph, PassContext(facts={"shapes"}))


def _same_outputs(before, after) -> None:
    feeds = random_feeds(before, seed=0)
    want, got = run_ort(before, feeds), run_ort(after, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape and np.std(w) > 0
        np.testing.assert_array_equal(g, w)


W0 = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)


def _constant_chain() -> Graph:
    """ws = Transpose(w0) * Constant(2) and shp = Shape(MatMul(x, ws)) are constant; the MatMul
    and the Reshape that reads shp are not."""
    nodes = [
        helper.make_node("Constant", [], ["k"], name="k",
                         value=numpy_helper.from_array(np.full(4, 2.0, np.float32))),
        helper.make_node("Transpose", ["w0"], ["wt"], name="t"),
        helper.make_node("Mul", ["wt", "k"], ["ws"], name="mul"),
        helper.make_node("MatMul", ["x", "ws"], ["m"], name="mm"),
        helper.make_node("Shape", ["m"], ["shp"], name="shape"),
        helper.make_node("Reshape", ["m", "shp"], ["y"], name="reshape"),
    ]
    return _ir(nodes, {"x": (2, 3)}, {"w0": W0}, ["y"])


def test_constant_subgraph_becomes_weights_with_the_same_values():
    graph = _constant_chain()
    before = export_onnx(graph)
    result = _fold(graph)
    graph.validate()
    assert result.changed and result.stats == {"nodes_folded": 4}
    assert sorted(graph.nx) == ["mm", "reshape"]
    np.testing.assert_array_equal(graph.initializers["ws"], W0.T * 2)
    np.testing.assert_array_equal(graph.initializers["shp"], [2, 4])
    assert graph.initializers["shp"].dtype == np.int64
    assert graph.tensors["ws"] == TensorInfo((3, 4), "float32")
    assert sorted(graph.initializers) == ["shp", "ws"]  # w0 and k were read only by folded nodes
    assert graph.producer("ws") is None and graph.node("mm")["inputs"] == ["x", "ws"]
    _same_outputs(before, export_onnx(graph))


def test_nothing_left_to_fold_is_no_change():
    graph = _constant_chain()
    _fold(graph)
    nodes, weights = sorted(graph.nx), dict(graph.initializers)
    result = _fold(graph)
    assert not result.changed and result.stats == {"nodes_folded": 0}
    assert sorted(graph.nx) == nodes and graph.initializers.keys() == weights.keys()


def test_a_graph_without_constants_is_no_change():
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m"], name="mm"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    graph = _ir(nodes, {"x": (2, 4)}, {"w0": W0}, ["y"])
    assert not _fold(graph).changed
    assert sorted(graph.nx) == ["mm", "relu"] and list(graph.initializers) == ["w0"]


def test_size_and_a_constant_graph_output_fold():
    nodes = [helper.make_node("Size", ["x"], ["n"], name="size"),
             helper.make_node("Cast", ["n"], ["nf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "nf"], ["y"], name="mul"),
             helper.make_node("Constant", [], ["z"], name="k", value_float=1.5)]
    graph = _ir(nodes, {"x": (2, 3)}, {}, ["y", "z"])
    before = export_onnx(graph)
    assert _fold(graph).stats == {"nodes_folded": 3}
    graph.validate()
    assert list(graph.nx) == ["mul"]
    assert graph.initializers["nf"] == np.float32(6) and graph.initializers["z"] == np.float32(1.5)
    feeds = random_feeds(before)
    got, want = run_ort(export_onnx(graph), feeds), run_ort(before, feeds)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1] == np.float32(1.5)


_INT8 = {"wq": np.arange(12, dtype=np.int8).reshape(4, 3), "scale": np.float32(0.1),
         "zp": np.int8(0)}


@pytest.mark.parametrize(("nodes", "weights", "kept"), [
    ([helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"], name="dq"),
      helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], _INT8, "dq"),
    ([helper.make_node("QuantizeLinear", ["w0", "scale", "zp"], ["q"], name="q"),
      helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["w"], name="dq"),
      helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
     {"w0": W0.T.copy(), "scale": np.float32(0.1), "zp": np.int8(0)}, "q"),
    ([helper.make_node("RandomNormal", [], ["r"], name="rand", shape=[2, 4]),
      helper.make_node("Add", ["r", "w0"], ["s"], name="add"),
      helper.make_node("Add", ["x", "s"], ["y"], name="out")],
     {"w0": np.ones((2, 4), np.float32)}, "rand"),
    ([helper.make_node("Foo", ["w0"], ["f"], name="foo", domain=CUSTOM),
      helper.make_node("Add", ["x", "f"], ["y"], name="add")],
     {"w0": np.ones((2, 4), np.float32)}, "foo"),
    ([helper.make_node("Foo", ["x"], ["f"], name="foo", domain=CUSTOM),
      helper.make_node("Shape", ["f"], ["s"], name="shape"),
      helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")], {}, "shape"),
], ids=["dequantize", "quantize", "random", "custom-domain", "shape-of-unknown-shape"])
def test_never_folded(nodes, weights, kept):
    graph = _ir(nodes, {"x": (2, 4)}, weights, ["y"])
    names = sorted(graph.nx)
    result = _fold(graph)
    assert kept in graph and sorted(graph.nx) == names
    assert not result.changed


@pytest.mark.parametrize(("attrs", "dims"), [
    ({"start": 1}, [2, 4]), ({"start": -1}, [4]), ({"end": -1}, [1, 2]),
    ({"start": 1, "end": 2}, [2]), ({"start": -9, "end": 9}, [1, 2, 4]),
    ({"start": 2, "end": 1}, []),
], ids=["start", "negative-start", "negative-end", "start-end", "clamped", "empty"])
def test_shape_with_start_and_end_folds_to_those_dims(attrs, dims):
    """Shape reads dims start:end (Python slice rules); it folded as a weight-only node before,
    a KeyError on its activation input that crashed import_onnx."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape", **attrs),
             helper.make_node("Concat", ["s", "minus1"], ["t"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="reshape")]
    graph = _ir(nodes, {"x": (1, 2, 4)}, {"minus1": np.array([-1], np.int64)}, ["y"])
    before = export_onnx(graph)
    result = _fold(graph)
    graph.validate()
    assert "shape" not in graph and "cat" not in graph and result.stats == {"nodes_folded": 2}
    assert sorted(graph.initializers) == ["t"]  # s and minus1 were read only by the Concat
    np.testing.assert_array_equal(graph.initializers["t"], [*dims, -1])
    assert graph.initializers["t"].dtype == np.int64
    _same_outputs(before, export_onnx(graph))


@pytest.mark.parametrize(("attrs", "folded"), [({"start": 1}, True), ({}, False),
                                               ({"end": 1}, False)],
                         ids=["known-dims", "whole-shape", "unknown-dim"])
def test_shape_of_a_partly_known_shape_folds_only_known_dims(attrs, folded):
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape", **attrs),
             helper.make_node("Concat", ["minus1", "s"], ["t"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="reshape")]
    graph = _ir(nodes, {"x": ("N", 2, 4)}, {"minus1": np.array([-1], np.int64)}, ["y"])
    result = _fold(graph)
    assert result.changed == folded and ("shape" in graph) != folded and ("cat" in graph) != folded
    if folded:
        np.testing.assert_array_equal(graph.initializers["t"], [-1, 2, 4])
