"""resize_input: fully convolutional models at another input size."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from passes.resize_input import ResizeInputPass, resize_images
from tests.helpers import random_feeds, run_ort
from toolchain.errors import BadInputError
from toolchain.measure import zoo
from toolchain.pipeline import PassContext


def test_resize_keeps_output_shape_and_runs():
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    result = ResizeInputPass(shapes={"input": (1, 3, 24, 24)}).run(graph, PassContext())
    assert result.changed
    assert graph.shape("input") == (1, 3, 24, 24)
    assert graph.shape("stem.conv.out") == (1, 8, 12, 12)
    model = export_onnx(graph)
    out = run_ort(model, random_feeds(model))[0]
    assert out.shape == (1, 10)


def test_same_shape_is_no_change():
    graph = import_onnx(zoo.resnet(32, 10, 0.25, 10))
    assert not ResizeInputPass(shapes={"input": (1, 3, 32, 32)}).run(graph, PassContext()).changed


def _flatten_model():
    """Conv -> Flatten -> Gemm: the classifier sees every pixel, so the size is fixed."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "g"], ["y"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.ones((3, 2 * 16 * 16), np.float32), "g")]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("model", "shape", "match"), [
    (lambda: zoo.mobilenet_v2(32, 0.25, 10), (1, 1, 24, 24), "only the spatial size"),
    (lambda: zoo.mobilenet_v2(32, 0.25, 10), (2, 3, 24, 24), "only the spatial size"),
    (_flatten_model, (1, 1, 8, 8), "not fully convolutional"),
])
def test_illegal_resizes(model, shape, match):
    graph = import_onnx(model())
    name = graph.inputs[0]
    with pytest.raises(BadInputError, match=match):
        ResizeInputPass(shapes={name: shape}).run(graph, PassContext())


@pytest.mark.parametrize("size", [(16, 16), (5, 12), (8, 8)])
def test_resize_images_matches_onnx_resize_linear(size):
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel")
    g = helper.make_graph([node], "r",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array([2, 3, *size], np.int64), "sizes")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    expected = run_ort(model, {"x": x})[0]
    got = resize_images(x, *size)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
