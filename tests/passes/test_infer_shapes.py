"""infer_shapes: every tensor gets its shape and dtype from ONNX shape inference."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes import load_and_analyze
from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from passes.infer_shapes import InferShapesPass, infer_shapes
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import PassContext, Pipeline

CUSTOM = "com.example"


def _ir(nodes: list[tuple], inputs: dict, weights: dict, outputs: list[str]) -> Graph:
    """An IR built directly, with no shapes beyond inputs and weights. Nodes are
    (name, op_type, inputs, outputs, attrs[, domain])."""
    graph = Graph()
    graph.opset = {"": 17, CUSTOM: 1}
    for name, (shape, dtype) in inputs.items():
        graph.inputs.append(name)
        graph.tensors[name] = TensorInfo(shape, dtype)
    for name, arr in weights.items():
        graph.initializers[name] = arr
        graph.tensors[name] = TensorInfo(arr.shape, arr.dtype.name)
    for name, op, ins, outs, attrs, *domain in nodes:
        graph.add_node(name, op, ins, outs, attrs, domain=domain[0] if domain else "")
    graph.outputs = list(outputs)
    return graph


def _classifier() -> Graph:
    rng = np.random.default_rng(0)
    nodes = [("conv", "Conv", ["x", "w"], ["a"], {"pads": [1] * 4, "strides": [2, 2]}),
             ("relu", "Relu", ["a"], ["r"], {}),
             ("pool", "GlobalAveragePool", ["r"], ["p"], {}),
             ("flat", "Flatten", ["p"], ["f"], {}),
             ("fc", "Gemm", ["f", "fc"], ["y"], {"transB": 1}),
             ("shape", "Shape", ["r"], ["s"], {}),
             ("half", "Cast", ["y"], ["h"], {"to": TensorProto.FLOAT16})]
    weights = {"w": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
               "fc": rng.normal(size=(10, 8)).astype(np.float32)}
    return _ir(nodes, {"x": ((1, 3, 8, 8), "float32")}, weights, ["h", "s"])


EXPECTED = {"a": TensorInfo((1, 8, 4, 4), "float32"), "r": TensorInfo((1, 8, 4, 4), "float32"),
            "p": TensorInfo((1, 8, 1, 1), "float32"), "f": TensorInfo((1, 8), "float32"),
            "y": TensorInfo((1, 10), "float32"), "s": TensorInfo((4,), "int64"),
            "h": TensorInfo((1, 10), "float16")}


def test_fills_every_intermediate_shape_and_dtype():
    graph = _classifier()
    assert not any(t in graph.tensors for t in EXPECTED)
    result = InferShapesPass().run(graph, PassContext())
    assert {t: graph.tensors[t] for t in EXPECTED} == EXPECTED
    assert graph.tensors["x"] == TensorInfo((1, 3, 8, 8), "float32")  # the input keeps its own
    assert result.stats == {"tensors_updated": len(EXPECTED), "unknown_shapes": 0}
    # edges carry the shapes too
    assert graph.nx.edges["conv", "relu", "a"]["shape"] == (1, 8, 4, 4)
    assert graph.nx.edges["relu", "shape", "r"]["dtype"] == "float32"
    assert graph.nx.edges["fc", "half", "y"]["shape"] == (1, 10)


def test_inferring_again_updates_nothing():
    graph = _classifier()
    infer_shapes(graph)
    tensors = dict(graph.tensors)
    result = InferShapesPass().run(graph, PassContext())
    assert result.stats["tensors_updated"] == 0 and not result.changed
    assert graph.tensors == tensors


def test_a_new_input_shape_propagates():
    graph = _classifier()
    infer_shapes(graph)
    graph.tensors["x"] = TensorInfo((2, 3, 16, 16), "float32")
    # the intermediates a, r, p, f, y and the graph output h (s, the shape's length, stays)
    assert infer_shapes(graph) == 6
    assert graph.shape("a") == (2, 8, 8, 8) and graph.shape("p") == (2, 8, 1, 1)
    assert graph.shape("f") == (2, 8) and graph.shape("y") == (2, 10)
    assert graph.tensors["h"] == TensorInfo((2, 10), "float16")
    assert graph.tensors["s"] == TensorInfo((4,), "int64")


def test_weight_shapes_come_from_the_arrays():
    graph = _classifier()
    infer_shapes(graph)
    graph.initializers["w"] = np.zeros((4, 3, 3, 3), np.float32)  # as a pruning pass would
    graph.initializers["fc"] = np.zeros((10, 4), np.float32)
    infer_shapes(graph)
    assert graph.tensors["w"] == TensorInfo((4, 3, 3, 3), "float32")
    assert graph.shape("a") == (1, 4, 4, 4) and graph.shape("f") == (1, 4)


def test_produces_the_shapes_fact():
    ctx = PassContext(facts=set())
    records = Pipeline([InferShapesPass()]).run(_classifier(), ctx)
    assert "shapes" in ctx.facts and records[0].stats["tensors_updated"] == len(EXPECTED)


@pytest.mark.parametrize(("nodes", "inputs", "unknown"), [
    ([("foo", "Foo", ["x"], ["f"], {}, CUSTOM), ("relu", "Relu", ["f"], ["y"], {})],
     {"x": ((2, 6), "float32")}, {"f", "y"}),
    ([("reshape", "Reshape", ["x", "s"], ["y"], {})],
     {"x": ((2, 6), "float32"), "s": ((2,), "int64")}, {"y"}),
], ids=["custom-op", "reshape-to-a-runtime-shape"])
def test_shapes_inference_cannot_know_stay_unknown(nodes, inputs, unknown):
    graph = _ir(nodes, inputs, {}, ["y"])
    result = InferShapesPass().run(graph, PassContext())
    assert {t for t, i in graph.tensors.items() if not i.known} == unknown
    assert result.stats["unknown_shapes"] == len(unknown)
    if "foo" in graph:  # nothing is known about an opaque op's output, not even its dtype
        assert graph.tensors["f"] == TensorInfo(None, "unknown")
    else:               # the rank is known, the dims are not
        assert len(graph.shape("y")) == 2 and graph.dtype("y") == "float32"


def _conv_model():
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
         helper.make_node("Relu", ["a"], ["y"], name="r")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_output_shape_follows_a_new_input_shape():
    """A graph output declared with static dims follows the input: ONNX's non-strict inference
    kept the declared (stale) shape, and with it its producer's costs and the exported shape."""
    graph = import_onnx(_conv_model())
    assert graph.shape("y") == (1, 8, 6, 6)
    graph.tensors["x"] = TensorInfo((1, 3, 16, 16), "float32")
    assert infer_shapes(graph) == 2
    assert graph.shape("a") == (1, 8, 14, 14)
    assert graph.tensors["y"] == TensorInfo((1, 8, 14, 14), "float32")
    assert graph.nx.edges["c", "r", "a"]["shape"] == (1, 8, 14, 14)


def test_input_shapes_override_reaches_a_declared_output_its_costs_and_the_export():
    graph = load_and_analyze(_conv_model(), {"x": (2, 3, 16, 16)})
    assert graph.shape("y") == (2, 8, 14, 14)
    (kernel,) = graph.kernels
    assert kernel.nodes == ("c", "r") and kernel.output_shape == (2, 8, 14, 14)
    assert kernel.macs == 2 * 8 * 14 * 14 * 3 * 3 * 3
    (out,) = export_onnx(graph).graph.output
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [2, 8, 14, 14]


@pytest.mark.parametrize(("nodes", "inputs", "declared"), [
    ([("foo", "Foo", ["x"], ["y"], {}, CUSTOM)], {"x": ((2, 6), "float32")},
     TensorInfo((2, 3), "float32")),
    ([("reshape", "Reshape", ["x", "s"], ["y"], {})],
     {"x": ((2, 6), "float32"), "s": ((2,), "int64")}, TensorInfo((3, "n"), "float32")),
], ids=["custom-op", "reshape-to-a-runtime-shape"])
def test_a_declared_output_fills_what_inference_cannot_know(nodes, inputs, declared):
    graph = _ir(nodes, inputs, {}, ["y"])
    graph.tensors["y"] = declared  # as import_onnx declares it
    assert infer_shapes(graph) == 0
    assert graph.tensors["y"] == declared
