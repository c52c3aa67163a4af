"""to_fp16: per-kernel float16 with the rest of the graph blocked."""
from __future__ import annotations

import numpy as np
import pytest

from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from passes.to_fp16 import ToFp16Pass
from tests.helpers import random_feeds, run_ort
from toolchain.errors import BadInputError
from toolchain.measure import zoo
from toolchain.pipeline import PassContext


def test_named_kernels_run_in_fp16_the_rest_in_fp32():
    model = zoo.mobilenet_v2(32, 0.25, 10, se=True, hard_swish=True)
    graph = import_onnx(model)
    result = ToFp16Pass(kernels=("block16.expand.conv", "last.conv")).run(graph, PassContext())
    graph.validate()
    assert result.changed and result.stats["nodes_fp16"] == 6  # conv + bn + act, twice
    assert graph.initializers[graph.node("last.conv")["inputs"][1]].dtype == np.float16
    assert graph.dtype(graph.node("last.conv")["inputs"][0]) == "float16"
    assert graph.initializers[graph.node("block16.dw.conv")["inputs"][1]].dtype == np.float32
    out = export_onnx(graph)
    assert out.graph.input[0].type.tensor_type.elem_type == 1  # io types kept float32
    feeds = random_feeds(model)
    a, b = run_ort(out, feeds)[0], run_ort(model, feeds)[0]
    assert a.dtype == np.float32 and a.shape == b.shape
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-2


def test_no_kernels_no_change():
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    assert not ToFp16Pass().run(graph, PassContext()).changed


def test_unknown_kernel():
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    with pytest.raises(BadInputError, match="no kernel named"):
        ToFp16Pass(kernels=("nope",)).run(graph, PassContext())
