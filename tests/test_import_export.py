"""Round trip ONNX -> IR -> ONNX on real architectures: checker-valid, same outputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from tests.helpers import LIGHT_MODELS, random_feeds, randomize_weights, run_ort
from toolchain.compile.inspection import inspect
from toolchain.measure import zoo


def test_light_models_are_there():
    assert len(LIGHT_MODELS) == 9


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_round_trip_numerics(path):
    model = randomize_weights(onnx.load(str(path)), seed=1)
    graph = import_onnx(model)
    graph.validate()
    exported = export_onnx(graph).SerializeToString()   # serialized once: checker and ORT
    onnx.checker.check_model(exported)
    feeds = random_feeds(model, seed=2)
    want = run_ort(model, feeds)
    got = run_ort(exported, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape
        assert np.std(w) > 0, "outputs are uniform: the comparison would be meaningless"
        assert np.max(np.abs(w - g)) <= 1e-5


def _tiny(nodes, inits, name_nodes=True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])
    g = helper.make_graph(nodes, "tiny", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_names_are_unique_and_deterministic():
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
             helper.make_node("Relu", ["a"], ["b"], name="c"),   # repeated name
             helper.make_node("Relu", ["b"], ["d"]),             # no name
             helper.make_node("Relu", ["d"], ["y"], name="Relu_2")]  # collides with derived
    model = _tiny(nodes, [w])
    names = import_onnx(model).topo()
    assert len(set(names)) == 4
    assert names == import_onnx(model).topo()
    assert "Relu_2" in names and "Conv_0" in names and "Relu_1" in names


def test_symbolic_batch_taken_as_one_with_a_note():
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    graph = import_onnx(_tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [w]))
    assert graph.shape("x") == (1, 3, 8, 8)
    assert graph.shape("y") == (1, 3, 8, 8)
    assert any("batch" in n for n in graph.notes)


def test_constant_subgraphs_are_folded():
    shape = numpy_helper.from_array(np.array([3, 3, 1, 1], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Constant", [], ["k"], value_float=2.0),
             helper.make_node("Conv", ["x", "w"], ["a"]),
             helper.make_node("Mul", ["a", "k"], ["y"])]
    model = _tiny(nodes, [shape])
    graph = import_onnx(model)
    assert sorted(graph.op(n) for n in graph.nx) == ["Conv", "Mul"]
    assert np.allclose(graph.initializers["w"], 0.5)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    np.testing.assert_allclose(run_ort(export_onnx(graph), feeds)[0],
                               run_ort(model, feeds)[0], atol=1e-6)


def test_input_model_is_not_modified(tmp_path):
    path = tmp_path / "m.onnx"
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    onnx.save(_tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [w]), str(path))
    before = path.read_bytes()
    graph = import_onnx(path)
    graph.remove_node(graph.topo()[0])
    assert path.read_bytes() == before


_ZOO = {
    "mbv2": lambda: zoo.mobilenet_v2(resolution=64, width=0.5),
    "mbv2-se-hswish-k5": lambda: zoo.mobilenet_v2(resolution=64, width=0.5, se=True,
                                                  hard_swish=True, kernel_sizes=5),
    "resnet18": lambda: zoo.resnet(resolution=64, depth=18, width=0.5),
    "resnet26-bottleneck": lambda: zoo.resnet(resolution=64, depth=26, width=0.25),
}


@pytest.mark.parametrize("name", sorted(_ZOO))
def test_round_trip_and_inspect_built_models(name):
    model = _ZOO[name]()
    graph = import_onnx(model)
    exported = export_onnx(graph)
    onnx.checker.check_model(exported)
    feeds = random_feeds(model, seed=3)
    want, got = run_ort(model, feeds)[0], run_ort(exported, feeds)[0]
    assert np.std(want) > 0
    assert np.max(np.abs(want - got)) <= 1e-5
    report = inspect(model)
    ops = {k["op_type"] for k in report["kernels"]}
    assert {"Conv", "Gemm"} <= ops
    assert report["skip_blocks"], "residual blocks must be found"
    if name.startswith("mbv2"):
        assert any(k["op_type"] == "Conv" and k["options"] for k in report["kernels"])
