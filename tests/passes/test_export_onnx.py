"""export_onnx: IR -> ONNX that passes the checker and computes what the IR describes, with the
IR's names, opsets and attributes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from passes.infer_shapes import infer_shapes
from tests.helpers import random_feeds, run_ort
from toolchain.measure import zoo

F = TensorProto.FLOAT
CUSTOM = "com.example"


def _tiny(opset: int = 17):
    """A small net using several attribute kinds: Conv (ints, auto_pad string), Clip with
    min/max inputs, Concat (int), Reshape to a weight shape, Gemm (transB), Softmax."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    inits = [w("w1", 4, 3, 3, 3), w("b1", 4), w("w2", 4, 3, 1, 1), w("fc", 5, 8 * 4 * 4),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "flat")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", strides=[2, 2],
                         auto_pad="SAME_UPPER"),
        helper.make_node("Clip", ["a", "lo", "hi"], ["c"], name="relu6"),
        helper.make_node("Conv", ["x", "w2"], ["d"], name="conv2", strides=[2, 2],
                         kernel_shape=[1, 1]),
        helper.make_node("Concat", ["c", "d"], ["e"], name="cat", axis=1),
        helper.make_node("Reshape", ["e", "flat"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["g"], name="fc", transB=1, alpha=0.5),
        helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", F, [1, 5])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


_MODELS = {
    "tiny-opset13": lambda: _tiny(13),
    "tiny-opset17": lambda: _tiny(17),
    "mobilenet_v2": lambda: zoo.mobilenet_v2(32, 0.25, 10),
    "resnet10": lambda: zoo.resnet(32, 10, 0.25, 10),
}


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_round_trip_keeps_outputs_names_and_opset(name):
    model = _MODELS[name]()
    exported = export_onnx(import_onnx(model))
    onnx.checker.check_model(exported, full_check=True)
    feeds = random_feeds(model, seed=1)
    (want,), (got,) = run_ort(model, feeds), run_ort(exported, feeds)
    assert np.std(want) > 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # same nodes (names, ops, wiring) in the same (already topological) order
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in exported.graph.node] == \
        [(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    assert [i.name for i in exported.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    assert sorted(i.name for i in exported.graph.initializer) == \
        sorted(i.name for i in model.graph.initializer)
    assert [(o.domain, o.version) for o in exported.opset_import] == \
        [(o.domain, o.version) for o in model.opset_import]
    assert exported.ir_version == model.ir_version and exported.graph.name == model.graph.name


def test_weights_and_shapes_are_written_as_the_ir_holds_them():
    model = _tiny()
    graph = import_onnx(model)
    exported = export_onnx(graph)
    for init in exported.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), graph.initializers[init.name])
    x, y = exported.graph.input[0], exported.graph.output[0]
    assert [d.dim_value for d in x.type.tensor_type.shape.dim] == [1, 3, 8, 8]
    assert [d.dim_value for d in y.type.tensor_type.shape.dim] == [1, 5]
    assert exported.graph.value_info == []  # intermediate shapes only on request


def test_with_shapes_writes_intermediate_value_info():
    graph = import_onnx(_tiny())
    exported = export_onnx(graph, with_shapes=True)
    shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
              for vi in exported.graph.value_info}
    assert set(shapes) == {"a", "c", "d", "e", "f", "g"}  # not x, y or weights
    assert shapes["a"] == (1, 4, 4, 4) and shapes["e"] == (1, 8, 4, 4) and shapes["f"] == (1, 128)
    onnx.checker.check_model(exported, full_check=True)


def test_weights_false_writes_large_weights_as_typed_inputs():
    graph = import_onnx(zoo.resnet(32, 10, 0.25, 10))
    exported = export_onnx(graph, weights=False)
    kept = {i.name for i in exported.graph.initializer}
    as_inputs = [i.name for i in exported.graph.input][1:]
    assert as_inputs and kept and not kept & set(as_inputs)
    assert all(graph.initializers[n].size > 4096 for n in as_inputs)
    assert all(graph.initializers[n].size <= 4096 for n in kept)
    assert set(as_inputs) | kept == set(graph.initializers)
    big = next(i for i in exported.graph.input if i.name == as_inputs[0])
    assert tuple(d.dim_value for d in big.type.tensor_type.shape.dim) == \
        graph.initializers[as_inputs[0]].shape


def test_every_attribute_kind_round_trips_exactly():
    node = helper.make_node("Foo", ["x"], ["y"], name="foo", domain=CUSTOM, i=3, f=0.25,
                            s="abc", ints=[1, 2], floats=[0.5, 1.5], strings=["a", "b"],
                            t=numpy_helper.from_array(np.arange(3, dtype=np.int64)))
    node.attribute.append(helper.make_attribute("empty", [], attr_type=AttributeProto.INTS))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [2])],
                          [helper.make_tensor_value_info("y", F, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid(CUSTOM, 2)])
    exported = export_onnx(import_onnx(model))
    (out,) = exported.graph.node
    assert (out.name, out.op_type, out.domain) == ("foo", "Foo", CUSTOM)
    assert sorted(out.attribute, key=lambda a: a.name) == sorted(node.attribute,
                                                                 key=lambda a: a.name)
    assert [(o.domain, o.version) for o in exported.opset_import] == [("", 17), (CUSTOM, 2)]


def test_a_pass_edit_is_exported_and_runs():
    model = _tiny()
    graph = import_onnx(model)
    # as a pass would: nodes added without import's attribute types, then shapes re-inferred
    graph.initializers["two"] = np.array(2.0, np.float32)
    graph.add_node("scale", "Mul", ["g", "two"], ["g2"])  # undoes the Gemm's alpha=0.5
    graph.set_input("softmax", 0, "g2")
    graph.add_node("hard", "HardSigmoid", ["y"], ["z"], {"alpha": 0.25, "beta": 0.5})
    graph.outputs = ["z"]
    infer_shapes(graph)
    graph.validate()
    exported = export_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    names = [n.name for n in exported.graph.node]
    assert names.index("fc") < names.index("scale") < names.index("softmax") < names.index("hard")
    feeds = random_feeds(model)
    p = run_ort(model, feeds)[0].astype(np.float64)  # softmax(L / 2)
    q = p**2 / (p**2).sum(axis=-1, keepdims=True)     # softmax(L)
    np.testing.assert_allclose(run_ort(exported, feeds)[0], 0.25 * q + 0.5, rtol=1e-5)


def test_export_is_deterministic_and_ir_version_at_least_4():
    graph = import_onnx(_tiny())
    assert export_onnx(graph).SerializeToString() == export_onnx(graph).SerializeToString()
    graph.ir_version = 3
    assert export_onnx(graph).ir_version == 4
