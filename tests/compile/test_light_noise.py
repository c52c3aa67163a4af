"""No expected-failure noise: the light SqueezeNet (a batch of 1 baked into a Reshape by the
opset upgrade) is scored batched, and onnxruntime is never asked to run what fails, so nothing
it prints reaches stderr; a real run-time error still prints."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import LIGHT_DIR
from toolchain.compile.driver import prepare
from toolchain.predict.accuracy import AccuracyEstimator
from toolchain.space import Choice, Plan


def test_light_squeezenet_sensitivity_runs_print_no_onnxruntime_errors(tmp_path, capfd):
    x = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", inputs=x)
    prep = prepare(LIGHT_DIR / "light_squeezenet.onnx", tmp_path / "calib.npz", cache=False)
    assert prep.estimator._batched           # the baked Reshape runs batched on a copy
    kernel = next(iter(prep.space.options))
    for plan in (Plan(kernels={kernel: Choice("int8")}),
                 Plan(input_shape={prep.space.input_name: [1, 3, 112, 112]})):
        prep.estimator.score(prep._rewrite_light(plan))
    err = capfd.readouterr().err
    assert "[E:onnxruntime" not in err and "cannot be reshaped" not in err


def test_a_real_run_time_error_still_prints(capfd):
    """A Reshape to the input's shape plus one element fails at every batch size."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Add", ["s", "one"], ["t"]),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array([0, 1], np.int64), "one")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(Exception, match="Reshape"):
        AccuracyEstimator(model, {"x": np.zeros((8, 6), np.float32)})
    assert capfd.readouterr().err.count("[E:onnxruntime") == 1
