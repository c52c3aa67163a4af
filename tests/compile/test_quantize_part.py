"""The sensitivity step's int8 rewrite of one kernel (known ranges: onnxruntime's quantizer runs on
the part of the model it edits, spliced back) builds the model that quantizing the whole model
builds (issue 22: seconds per kernel on ResNet-50 were the whole model's serialization)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort

from passes import analyze
from passes.common import kernel_nodes
from passes.export_onnx import export_onnx
from passes.fold_batchnorm import fold_batchnorm
from passes.import_onnx import import_onnx
from passes.quantize import (
    _float_outputs,
    _nodes_to_quantize,
    _run_quantize_static,
    quantize,
    reference_ranges,
)
from toolchain.calib import CalibData
from toolchain.measure.zoo import resnet


def _outputs(graph, x):
    sess = ort.InferenceSession(export_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0]
                           for i in range(len(x))])


def test_one_kernel_int8_by_its_part_equals_the_whole_model_quantized():
    graph = import_onnx(resnet(32, depth=10, width=0.25, num_classes=10))
    analyze(graph)
    for k in graph.kernels:
        if graph.op(k.name) == "Conv":
            fold_batchnorm(graph, k.name)
    analyze(graph)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    calib = CalibData({graph.inputs[0]: x}, None, "test")
    calib = calib.with_ranges(reference_ranges(graph, calib))
    kernels = [k.name for k in graph.kernels if graph.op(k.name) in ("Conv", "Gemm")]
    assert len(kernels) >= 8
    for name in kernels:
        part = graph.copy()
        quantize(part, [name], calib)
        whole = graph.copy()
        nodes = _nodes_to_quantize(whole, kernel_nodes(whole, [name], "int8"))
        new = import_onnx(_run_quantize_static(export_onnx(whole), nodes, calib, whole))
        _float_outputs(new)
        ops = Counter(part.op(n) for n in part.topo())
        assert ops == Counter(new.op(n) for n in new.topo()), name
        assert ops["QuantizeLinear"] >= 1, name
        np.testing.assert_allclose(_outputs(part, x), _outputs(new, x), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
