"""prune_channels: propagation through BN / activations / depthwise, importance, reconstruction."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from passes.prune_channels import PruneChannelsPass, prune_site
from tests.helpers import run_ort
from toolchain.calib import CalibData
from toolchain.errors import BadInputError
from toolchain.measure import zoo
from toolchain.pipeline import PassContext

RNG = np.random.default_rng(0)


def _model(nodes, inits, cin=4, size=6, out_shape=(1, 3, 6, 6)):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _calib(n=16, cin=4, size=6, seed=1):
    x = np.random.default_rng(seed).normal(size=(n, cin, size, size)).astype(np.float32)
    return CalibData({"x": x}, None, "test")


def _outputs(model, calib):
    return np.concatenate([run_ort(model, {"x": calib.inputs["x"][i:i + 1]})[0]
                           for i in range(len(calib))])


def _chain_model():
    """conv A (3x3, 4->8) -> BN -> Relu -> depthwise 3x3 -> Clip -> conv B (1x1, 8->3).
    A's channels 4..7 are dead (zero weights, zero BN shift), so pruning them changes nothing."""
    a = RNG.normal(size=(8, 4, 3, 3))
    a[4:] = 0
    beta = RNG.normal(0, 0.1, 8)
    beta[4:] = 0
    nodes = [
        helper.make_node("Conv", ["x", "a"], ["a_out"], name="A", kernel_shape=[3, 3],
                         pads=[1] * 4),
        helper.make_node("BatchNormalization", ["a_out", "s", "beta", "m", "v"], ["bn"],
                         name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "dw", "dwb"], ["d"], name="dw", kernel_shape=[3, 3],
                         pads=[1] * 4, group=8),
        helper.make_node("Clip", ["d", "lo", "hi"], ["c"], name="clip"),
        helper.make_node("Conv", ["c", "b"], ["y"], name="B", kernel_shape=[1, 1]),
    ]
    dwb = RNG.normal(size=8)
    dwb[4:] = 0
    inits = {"a": a, "s": RNG.uniform(0.5, 1.5, 8), "beta": beta, "m": np.zeros(8),
             "v": np.ones(8), "dw": RNG.normal(size=(8, 1, 3, 3)), "dwb": dwb, "lo": 0.0,
             "hi": 6.0, "b": RNG.normal(size=(3, 8, 1, 1))}
    return _model(nodes, inits)


@pytest.mark.parametrize("reconstruct", [False, True])
def test_dead_channels_are_the_ones_pruned_and_outputs_do_not_change(reconstruct):
    model, calib = _chain_model(), _calib()
    graph = import_onnx(model)
    site = prune_site(graph, "A")
    assert site.path == ("bn", "relu", "dw", "clip") and site.consumers == ("B",)
    result = PruneChannelsPass(widths={"A": 0.5}, reconstruct=reconstruct).run(
        graph, PassContext(calib=calib))
    graph.validate()
    assert result.changed and result.stats["channels_kept"] == {"A": 4}
    assert graph.shape("a_out") == (1, 4, 6, 6)
    assert graph.node("dw")["attrs"]["group"] == 4
    assert graph.initializers[graph.node("B")["inputs"][1]].shape == (3, 4, 1, 1)
    np.testing.assert_allclose(_outputs(export_onnx(graph), calib), _outputs(model, calib),
                               atol=1e-3, rtol=1e-3)


def _redundant_model():
    """conv A (1x1, 4->8) -> conv B (1x1, 8->3); A's channels 6, 7 are small linear mixes of
    channels 0..5, so B can be refit exactly on 6 channels (but not by slicing alone)."""
    a = RNG.normal(size=(8, 4, 1, 1))
    a[6] = 0.3 * a[0] - 0.2 * a[3]
    a[7] = 0.25 * a[1] + 0.2 * a[5]
    nodes = [helper.make_node("Conv", ["x", "a"], ["h"], name="A", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["h", "b", "bb"], ["y"], name="B", kernel_shape=[1, 1])]
    return _model(nodes, {"a": a, "b": RNG.normal(size=(3, 8, 1, 1)), "bb": np.zeros(3)})


def test_reconstruction_recovers_what_slicing_loses():
    model, calib = _redundant_model(), _calib(n=24)
    ref = _outputs(model, calib)
    errors = {}
    for reconstruct in (False, True):
        graph = import_onnx(model)
        PruneChannelsPass(widths={"A": 0.75}, reconstruct=reconstruct).run(
            graph, PassContext(calib=calib))
        assert graph.shape("h") == (1, 6, 6, 6)
        out = _outputs(export_onnx(graph), calib)
        errors[reconstruct] = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert errors[True] < 1e-3 < errors[False]


def test_width_one_is_no_change():
    graph = import_onnx(_chain_model())
    assert not PruneChannelsPass(widths={"A": 1.0}).run(graph, PassContext(calib=_calib())).changed


def test_zoo_model_prunes_into_gemm_and_runs():
    model = zoo.mobilenet_v2(32, 0.5, 10)
    graph = import_onnx(model)
    calib = CalibData({"input": np.random.default_rng(0).normal(
        size=(4, 3, 32, 32)).astype(np.float32)}, None, "test")
    PruneChannelsPass(widths={"last.conv": 0.5, "block3.expand.conv": 0.75}).run(
        graph, PassContext(calib=calib))
    graph.validate()
    fc = graph.initializers[graph.node("head.fc")["inputs"][1]]
    assert fc.shape == (10, 640)
    assert graph.node("block3.dw.conv")["attrs"]["group"] == 72
    out = export_onnx(graph)
    assert run_ort(out, {"input": calib.inputs["input"][:1]})[0].shape == (1, 10)


def _tied_model():
    nodes = [helper.make_node("Conv", ["x", "a"], ["h"], name="A", kernel_shape=[1, 1]),
             helper.make_node("Add", ["h", "x"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "b"], ["y"], name="B", kernel_shape=[1, 1])]
    return _model(nodes, {"a": RNG.normal(size=(4, 4, 1, 1)), "b": RNG.normal(size=(3, 4, 1, 1))})


def _output_model():
    nodes = [helper.make_node("Conv", ["x", "a"], ["y"], name="A", kernel_shape=[1, 1])]
    return _model(nodes, {"a": RNG.normal(size=(3, 4, 1, 1))})


def _flatten_axis2_model():
    """A's channels (1 x 4 x 1 x 1) flattened at axis 2 become the rows (4 x 1), not columns."""
    nodes = [helper.make_node("Conv", ["x", "a"], ["h"], name="A", kernel_shape=[6, 6]),
             helper.make_node("Flatten", ["h"], ["f"], name="flat", axis=2),
             helper.make_node("Gemm", ["f", "b"], ["y"], name="B", transB=1)]
    return _model(nodes, {"a": RNG.normal(size=(4, 4, 6, 6)), "b": RNG.normal(size=(3, 1))},
                  out_shape=(4, 3))


def _rank_raising_scale_model():
    """A (1 x 4 x 6 x 6) times a 1 x 1 x 1 x 1 x 1 weight: 1 x 1 x 4 x 6 x 6, the channels move
    to axis 2 and the 3-D Conv B reads a single input channel."""
    nodes = [helper.make_node("Conv", ["x", "a"], ["h"], name="A", kernel_shape=[1, 1]),
             helper.make_node("Mul", ["h", "k"], ["m"], name="scale"),
             helper.make_node("Conv", ["m", "b"], ["y"], name="B", kernel_shape=[1, 1, 1])]
    return _model(nodes, {"a": RNG.normal(size=(4, 4, 1, 1)), "k": np.ones((1, 1, 1, 1, 1)),
                          "b": RNG.normal(size=(3, 1, 1, 1, 1))}, out_shape=(1, 3, 4, 6, 6))


@pytest.mark.parametrize(("model", "kernel", "match"), [
    (_tied_model, "A", "tied by Add"),
    (_output_model, "A", "graph output"),
    (_chain_model, "nope", "not a Conv or Gemm"),
    (_chain_model, "dw", "grouped"),
    (_flatten_axis2_model, "A", "tied by Flatten node 'flat'"),
    (_rank_raising_scale_model, "A", "tied by Mul node 'scale'"),
])
def test_illegal_prunes(model, kernel, match):
    graph = import_onnx(model())
    with pytest.raises(BadInputError, match=match):
        PruneChannelsPass(widths={kernel: 0.5}).run(graph, PassContext(calib=_calib()))
