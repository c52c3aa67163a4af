"""quantize: per-kernel int8 QDQ through onnxruntime's quantize_static."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from passes.export_onnx import export_onnx
from passes.fold_batchnorm import FoldBatchnormPass
from passes.import_onnx import import_onnx
from passes.quantize import QuantizePass
from tests.helpers import run_ort
from toolchain.calib import CalibData
from toolchain.errors import BadInputError
from toolchain.measure import zoo
from toolchain.pipeline import PassContext, Pipeline


def _calib(n=8, res=32, seed=1):
    x = np.random.default_rng(seed).normal(size=(n, 3, res, res)).astype(np.float32)
    return CalibData({"input": x}, None, "test")


def test_only_the_named_kernels_are_quantized():
    model = zoo.mobilenet_v2(32, 0.25, 10)
    graph = import_onnx(model)
    kernels = ("block3.expand.conv", "block3.project.conv", "head.fc")
    calib = _calib(16)
    # as the rewrite runs it: fold_batchnorm, then quantize, on the same kernels
    records = Pipeline([FoldBatchnormPass(kernels=kernels), QuantizePass(kernels=kernels)]).run(
        graph, PassContext(calib=calib, facts={"shapes"}))
    graph.validate()
    assert [r.changed for r in records] == [True, True]
    out = export_onnx(graph)
    for k in kernels:
        w = graph.node(k)["inputs"][1]
        producer = graph.producer(w)
        assert producer is not None and graph.op(producer) == "DequantizeLinear"
        assert graph.initializers[graph.node(producer)["inputs"][0]].dtype == np.int8
    # per-channel weight scales, one per output channel
    dq = graph.producer(graph.node("block3.expand.conv")["inputs"][1])
    assert graph.initializers[graph.node(dq)["inputs"][1]].shape == (48,)
    # everything else stays float
    assert graph.producer(graph.node("block4.expand.conv")["inputs"][1]) is None
    assert "block3.expand.bn" not in graph  # folded into the int8 conv
    assert "block4.expand.bn" in graph
    ops = {n.op_type for n in out.graph.node}
    assert not ops & {"QLinearConv", "ConvInteger", "DynamicQuantizeLinear"}  # QDQ format only
    # On a calibration sample (inside the calibrated ranges) int8 stays near fp32. Random-weight
    # models amplify any change ~5-10x (fp16 rounding of these kernels moves the logits 0.2%),
    # so this only catches gross errors; tests/predict/test_digits_accuracy.py measures real
    # accuracy.
    feeds = {"input": calib.inputs["input"][:1]}
    a, b = run_ort(out, feeds)[0], run_ort(model, feeds)[0]
    assert a.shape == b.shape
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.3
    assert out.graph.node[-1].op_type != "DequantizeLinear"  # logits are not clipped


def test_no_kernels_no_change():
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    nodes = len(graph)
    assert not QuantizePass().run(graph, PassContext(calib=_calib())).changed
    assert len(graph) == nodes


@pytest.mark.parametrize(("kernels", "match"), [
    (("nope",), "no kernel named"), (("block4.add",), "not a Conv, Gemm")])
def test_bad_kernels(kernels, match):
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    with pytest.raises(BadInputError, match=match):
        QuantizePass(kernels=kernels).run(graph, PassContext(calib=_calib()))


def test_no_preprocessing_advice_and_no_logging_changes(caplog):
    """onnxruntime's quantizer advises shape pre-processing on the root logger at every call;
    fleetc's import already inferred every shape and says so on the temporary copy, without
    touching the logging configuration."""
    root = logging.getLogger()
    filters, level = list(root.filters), root.level
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    with caplog.at_level(logging.WARNING):
        QuantizePass(kernels=("head.fc",)).run(graph, PassContext(calib=_calib(4)))
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert root.filters == filters and root.level == level
