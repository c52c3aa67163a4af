"""shrink_kernels: KxK -> centre kxk, shapes unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from passes.shrink_kernels import ShrinkKernelsPass
from tests.helpers import random_feeds, run_ort
from toolchain.errors import BadInputError
from toolchain.pipeline import PassContext


def _conv_model(W: np.ndarray, pads: int | str, group: int = 1):
    """x (1 x C x 9 x 9) -> Conv -> y; `pads` on every side, or an auto_pad mode."""
    k = W.shape[2]
    cin = W.shape[1] * group
    padding = {"auto_pad": pads} if isinstance(pads, str) else {"pads": [pads] * 4}
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[k, k],
                            group=group, **padding)
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 9, 9])],
                          [numpy_helper.from_array(W.astype(np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("k", "size", "group"), [(5, 3, 1), (7, 3, 4), (7, 5, 1)])
def test_centre_taps_when_the_border_is_zero_give_identical_outputs(k, size, group):
    rng = np.random.default_rng(0)
    W = np.zeros((4, 4 // group, k, k))
    cut = (k - size) // 2
    W[:, :, cut:k - cut, cut:k - cut] = rng.normal(size=(4, 4 // group, size, size))
    model = _conv_model(W, k // 2, group)
    graph = import_onnx(model)
    assert ShrinkKernelsPass(sizes={"conv": size}).run(graph, PassContext()).changed
    graph.validate()
    out = export_onnx(graph)
    conv = out.graph.node[0]
    assert [a.ints for a in conv.attribute if a.name == "kernel_shape"][0] == [size, size]
    assert graph.initializers[graph.node("conv")["inputs"][1]].shape[2:] == (size, size)
    feeds = random_feeds(model)
    a, b = run_ort(out, feeds)[0], run_ort(model, feeds)[0]
    assert a.shape == b.shape == (1, 4, 9, 9)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_same_size_is_no_change():
    graph = import_onnx(_conv_model(np.ones((2, 2, 5, 5)), 2))
    assert not ShrinkKernelsPass(sizes={"conv": 5}).run(graph, PassContext()).changed


@pytest.mark.parametrize(("sizes", "pads", "match"), [
    ({"conv": 4}, 2, "smaller odd size"), ({"conv": 7}, 2, "smaller odd size"),
    ({"nope": 3}, 2, "not a Conv"), ({"conv": 3}, 0, "output shape"),
    ({"conv": 3}, "VALID", r"^kernel_size: Conv 'conv' has auto_pad=VALID \(no padding to give "
     r"back\); shrinking to 3 would change its output shape$")])
def test_illegal_shrinks(sizes, pads, match):
    graph = import_onnx(_conv_model(np.ones((2, 2, 5, 5)), pads))
    with pytest.raises(BadInputError, match=match):
        ShrinkKernelsPass(sizes=sizes).run(graph, PassContext())


def test_same_padding_keeps_the_output_shape():
    graph = import_onnx(_conv_model(np.ones((4, 4, 5, 5)), "SAME_UPPER"))
    assert ShrinkKernelsPass(sizes={"conv": 3}).run(graph, PassContext()).changed
    assert graph.node("conv")["attrs"] == {"kernel_shape": [3, 3], "group": 1,
                                           "auto_pad": "SAME_UPPER"}
    out = export_onnx(graph)
    assert run_ort(out, random_feeds(out))[0].shape == (1, 4, 9, 9)
