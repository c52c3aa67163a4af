"""toolchain.predict.accuracy: scores vs fp32 and labels, batching, resizing, sensitivity cache."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh

from passes.resize_input import resize_images
from toolchain.errors import BadInputError
from toolchain.predict.accuracy import (
    AccuracyEstimator,
    choice_key,
    effective_drop,
    measure_sensitivity,
)
from toolchain.space import Choice, Plan


def classifier(W: np.ndarray, batch="N", size: int = 4, baked: bool = False) -> onnx.ModelProto:
    """GlobalAveragePool over an NCHW image, then a Gemm to 3 classes; `baked`: the flatten is
    a Reshape to [1, -1], which only works with a batch of 1."""
    flat = (h.make_node("Reshape", ["p", "s"], ["f"]) if baked
            else h.make_node("Flatten", ["p"], ["f"]))
    nodes = [h.make_node("GlobalAveragePool", ["x"], ["p"]), flat,
             h.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    inits = [nh.from_array(W, "W"), nh.from_array(np.array([1, -1], np.int64), "s")]
    g = h.make_graph(nodes, "c", [h.make_tensor_value_info("x", 1, [batch, 2, size, size])],
                     [h.make_tensor_value_info("y", 1, [batch, 3])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 2, 4, 4)).astype(np.float32)
    W = rng.standard_normal((3, 2)).astype(np.float32)
    labels = (x.mean((2, 3)) @ W.T).argmax(1)
    labels[:5] = (labels[:5] + 1) % 3          # the fp32 model gets exactly 90% right
    return x, W, labels


def test_top1_with_labels_and_batches(data):
    x, W, labels = data
    est = AccuracyEstimator(classifier(W), {"x": x}, labels, batch=7)
    assert est.baseline.metric == "top1"
    assert est.baseline.top1 == pytest.approx(90.0)
    assert est.drop(classifier(W)) == pytest.approx(0.0)
    # A fixed batch of 1 (run with a free batch, or per sample when a reshape bakes the 1
    # in) gives the same outputs.
    assert est.score(classifier(W, batch=1)).top1 == pytest.approx(90.0)
    assert np.allclose(est.outputs(classifier(W, batch=1, baked=True)),
                       est.outputs(classifier(W)), atol=1e-6)
    worse = est.score(classifier(-W))
    assert worse.top1 < 50 and est.baseline.value - worse.value > 40


def test_agreement_and_cosine_without_labels(data):
    x, W, _ = data
    est = AccuracyEstimator(classifier(W), {"x": x})
    assert est.baseline.metric == "agreement" and est.baseline.value == 100.0
    assert est.baseline.cosine == pytest.approx(1.0)
    noisy = W + np.random.default_rng(1).normal(0, 0.3, W.shape).astype(np.float32)
    s = est.score(classifier(noisy))
    assert 0 < s.agreement < 100 and 0 < s.cosine < 1


def test_mismatched_calibration_data_is_bad_input(data):
    x, W, labels = data
    with pytest.raises(BadInputError, match="no array for model input"):
        AccuracyEstimator(classifier(W), {"image": x})
    with pytest.raises(BadInputError, match="labels"):
        AccuracyEstimator(classifier(W), {"x": x}, labels[:10])


def test_smaller_input_resolution_is_fed_resized(data):
    x, W, labels = data
    est = AccuracyEstimator(classifier(W), {"x": x}, labels)
    # Average pooling commutes with a 2x bilinear downscale: the same predictions.
    assert est.score(classifier(W, size=2)).top1 == pytest.approx(90.0)
    assert resize_images(x, 2, 2).shape == (50, 2, 2, 2)
    assert np.allclose(resize_images(x, 4, 4), x)


def test_sensitivity_is_measured_once_and_cached(data, tmp_path):
    x, W, labels = data
    est = AccuracyEstimator(classifier(W), {"x": x}, labels)
    calls = []

    def apply(plan: Plan) -> onnx.ModelProto:
        calls.append(plan)
        return classifier(-W) if "gemm" in plan.kernels else classifier(W)

    kernels = {"gemm": [Choice(), Choice("int8"), Choice("int8", 0.5)]}
    cache = tmp_path / "sens"                     # an entry folder: drops.json + digests
    table = measure_sensitivity(est, apply, kernels, cache=cache)
    assert len(calls) == 2                        # int8 and w0.5, each once
    assert table.kernel("gemm", Choice("int8", 0.5)) == pytest.approx(
        table.drops[choice_key("kernel", "gemm", "int8")] * 2)
    raw = json.loads((cache / "drops.json").read_text())   # [drop, output cosine] per change
    assert raw[choice_key("kernel", "gemm", "int8")][0] > 40
    assert raw[choice_key("kernel", "gemm", "int8")][1] < 0
    assert table.drops == {k: effective_drop(*v) for k, v in raw.items()}
    measure_sensitivity(est, apply, kernels, cache=cache)
    assert len(calls) == 2                        # served from the cache


def test_effective_drop_floors_gains_and_grades_by_cosine():
    assert effective_drop(-0.8, 1.0) == 0.0                 # a single-change "gain" is noise
    assert effective_drop(0.0, 0.99) == pytest.approx(0.1)  # 1% cosine lost = 0.1 point
    assert effective_drop(2.0, 0.995) == pytest.approx(2.05)
