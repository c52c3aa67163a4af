"""fold_batchnorm: a BatchNormalization folded into the Conv it alone follows (int8 kernels)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.export_onnx import export_onnx
from passes.fold_batchnorm import FoldBatchnormPass, fold_batchnorm
from passes.import_onnx import import_onnx
from tests.helpers import random_feeds, run_ort
from toolchain.errors import BadInputError
from toolchain.measure import zoo
from toolchain.pipeline import PassContext


def _conv_bn(extra_reader: bool = False, bn_is_output: bool = False):
    """x -> Conv(c) -> BN(bn) -> Relu(r) [-> also Identity(i) reading the conv output]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")]
    for name, lo in (("gamma", 0.5), ("beta", -1.0), ("mean", -1.0), ("var", 0.1)):
        inits.append(numpy_helper.from_array(
            (lo + rng.random(4)).astype(np.float32), name))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c_out"], name="c", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c_out", "gamma", "beta", "mean", "var"],
                              ["bn_out"], name="bn", epsilon=1e-3)]
    outputs = ["bn_out"] if bn_is_output else ["y"]
    if not bn_is_output:
        nodes.append(helper.make_node("Relu", ["bn_out"], ["y"], name="r"))
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["c_out"], ["z"], name="i"))
        outputs.append("z")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 4, 8, 8]) for o in outputs],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_folds_the_bn_into_the_conv_exactly():
    model = _conv_bn()
    graph = import_onnx(model)
    result = FoldBatchnormPass(kernels=("c",)).run(graph, PassContext(facts={"shapes"}))
    graph.validate()
    assert result.changed and result.stats == {"folded": 1}
    assert "bn" not in graph and graph.consumers("c_out") == ["r"]
    # W' = W * gamma / sqrt(var + eps), b' = (b - mean) * s + beta
    d = graph.node("c")
    s = (numpy_helper.to_array(model.graph.initializer[2])
         / np.sqrt(numpy_helper.to_array(model.graph.initializer[5]) + 1e-3))
    w = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(graph.initializers[d["inputs"][1]], w * s[:, None, None, None],
                               rtol=1e-6)
    feeds = random_feeds(model)
    np.testing.assert_allclose(run_ort(export_onnx(graph), feeds)[0], run_ort(model, feeds)[0],
                               rtol=1e-4, atol=1e-5)


def test_a_zoo_block_folds_and_nothing_is_left_the_second_time():
    model = zoo.mobilenet_v2(32, 0.25, 10)
    graph = import_onnx(model)
    assert fold_batchnorm(graph, "block3.expand.conv")
    assert "block3.expand.bn" not in graph
    assert graph.consumers("block3.expand.conv.out") == ["block3.expand.act"]
    assert not fold_batchnorm(graph, "block3.expand.conv")  # nothing left to fold
    feeds = random_feeds(model)
    np.testing.assert_allclose(run_ort(export_onnx(graph), feeds)[0], run_ort(model, feeds)[0],
                               atol=1e-5)


def test_no_kernels_no_change():
    graph = import_onnx(_conv_bn())
    nodes = len(graph)
    assert not FoldBatchnormPass().run(graph, PassContext(facts={"shapes"})).changed
    assert len(graph) == nodes


@pytest.mark.parametrize("model", [_conv_bn(extra_reader=True), _conv_bn(bn_is_output=True)],
                         ids=["conv-output-read-twice", "bn-is-graph-output"])
def test_left_alone_when_folding_would_change_another_reader(model):
    graph = import_onnx(model)
    assert not FoldBatchnormPass(kernels=("c",)).run(graph, PassContext(facts={"shapes"})).changed
    assert "bn" in graph


def test_unknown_kernel_is_bad_input():
    graph = import_onnx(_conv_bn())
    with pytest.raises(BadInputError, match="no kernel named"):
        FoldBatchnormPass(kernels=("nope",)).run(graph, PassContext(facts={"shapes"}))
