"""The built test models: valid ONNX, run in onnxruntime, right output shapes, sane activations."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from toolchain.measure import zoo


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})[0]


def _input(model: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


SMALL = {
    "mbv2": lambda: zoo.mobilenet_v2(32, 0.25, 10),
    "mbv2_se_hswish_k5": lambda: zoo.mobilenet_v2(32, 0.25, 10, se=True, hard_swish=True,
                                                  kernel_sizes=[3, 3, 5, 5, 5, 3, 3]),
    "resnet10": lambda: zoo.resnet(32, 10, 0.25, 10),
    "resnet26": lambda: zoo.resnet(32, 26, 0.25, 10),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_models_are_valid_and_run(name):
    model = SMALL[name]()
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == zoo.OPSET
    y0, y1 = _run(model, _input(model, 0)), _run(model, _input(model, 1))
    assert y0.shape == (1, 10)
    assert np.all(np.isfinite(y0))
    # Neither exploded nor vanished: logits of order one that depend on the input.
    assert 1e-2 < np.abs(y0).max() < 1e3
    assert np.abs(y0 - y1).max() > 1e-3


def test_mobilenet_structure():
    model = zoo.mobilenet_v2(32, 0.25, 10, se=True, hard_swish=True,
                             kernel_sizes=[3, 3, 5, 5, 5, 3, 3])
    ops = [n.op_type for n in model.graph.node]
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and all(names)
    # Residual adds where stride is 1 and channels match: the 10 of MobileNetV2, plus block0
    # because at width 0.25 the stem and block0 both have 8 channels.
    assert ops.count("Add") == 11
    assert "block0.add" in names and "block1.add" not in names
    assert {"Clip", "HardSwish", "HardSigmoid", "GlobalAveragePool", "Mul", "Gemm"} <= set(ops)
    assert ops.count("BatchNormalization") == 52
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and next(a.i for a in n.attribute if a.name == "group") > 1]
    assert len(depthwise) == 17
    kernels = {next(tuple(a.ints) for a in n.attribute if a.name == "kernel_shape")
               for n in depthwise}
    assert kernels == {(3, 3), (5, 5)}


def test_resnet_has_downsample_paths():
    model = zoo.resnet(32, 18, 0.25, 10)
    names = [n.name for n in model.graph.node]
    assert sum(n.endswith("downsample.conv") for n in names) == 3
    assert sum(n.endswith(".add") for n in names) == 8
    assert _run(model, _input(model)).shape == (1, 10)


def test_seed_determines_weights_and_cache_returns_copies():
    a, b = zoo.mobilenet_v2(32, 0.25, 10, seed=3), zoo.mobilenet_v2(32, 0.25, 10, seed=3)
    assert a.SerializeToString() == b.SerializeToString()
    a.graph.node.pop()
    assert len(zoo.mobilenet_v2(32, 0.25, 10, seed=3).graph.node) == len(b.graph.node)
    c = zoo.mobilenet_v2(32, 0.25, 10, seed=4)
    assert a.graph.initializer[0].raw_data != c.graph.initializer[0].raw_data


def test_bad_kernel_sizes():
    with pytest.raises(ValueError, match="kernel_sizes"):
        zoo.mobilenet_v2(32, 0.25, 10, kernel_sizes=[3, 5])
    with pytest.raises(ValueError, match="depth"):
        zoo.resnet(32, 19)
