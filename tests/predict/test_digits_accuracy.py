"""Real accuracy on the digits fixture before and after rewrites (issue 3, "Done when").

Prints the measured test-set accuracies (run with -s to see them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from passes import load_and_analyze
from toolchain.calib import load_calib
from toolchain.compile.rewrite import apply_plan, rewrite

FIXTURES = Path(__file__).parent.parent / "fixtures"
MODEL = FIXTURES / "digits_mbv2.onnx"


def _accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batch = sess.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else len(x)
    logits = np.concatenate([sess.run(None, {name: x[i:i + step]})[0]
                             for i in range(0, len(x), step)])
    return float((logits.argmax(axis=1) == y).mean() * 100)


@pytest.fixture(scope="module")
def digits():
    model = onnx.load(MODEL)
    graph = load_and_analyze(model)
    calib = load_calib(FIXTURES / "digits_calib.npz", graph)
    test = np.load(FIXTURES / "digits_test.npz")
    x, y = test["inputs"], test["labels"]
    return model, graph.space, calib, x, y, _accuracy(model, x, y)


def _plan(kernels):
    return {"version": 1, "target": None, "model": {"input_shape": {}}, "kernels": kernels,
            "skip_blocks": []}


def test_fixture_is_accurate_and_small(digits):
    _, _, calib, x, y, base = digits
    print(f"\ndigits fp32 test accuracy: {base:.2f}% on {len(y)} images")
    assert base >= 95.0
    assert MODEL.stat().st_size < 5e6
    assert x.shape[1:] == (1, 64, 64) and x.dtype == np.float32 and len(calib) == 256


def test_all_int8_loses_at_most_one_point(digits):
    model, space, calib, x, y, base = digits
    int8 = apply_plan(model, _plan({k: {"precision": "int8"} for k in space.options}),
                      calib=calib)
    acc = _accuracy(int8, x, y)
    print(f"\ndigits all-int8: {acc:.2f}% (fp32 {base:.2f}%, drop {base - acc:.2f} points)")
    assert base - acc <= 1.0


def test_pruning_to_075_with_reconstruction(digits):
    model, space, calib, x, y, base = digits
    prunable = [k for k, o in space.options.items() if 0.75 in o.get("width", [])]
    assert len(prunable) >= 10
    plan = _plan({k: {"precision": "fp32", "width": 0.75} for k in prunable})
    with_lsq = _accuracy(apply_plan(model, plan, calib=calib), x, y)
    without = _accuracy(rewrite(model, plan, calib=calib, reconstruct=False).model, x, y)
    print(f"\ndigits {len(prunable)} kernels pruned to width 0.75: {with_lsq:.2f}% with "
          f"least-squares reconstruction, {without:.2f}% without (fp32 {base:.2f}%)")
    assert base - with_lsq <= 2.0
    assert with_lsq > without + 10.0  # measured: 98.9% vs 32.2%
