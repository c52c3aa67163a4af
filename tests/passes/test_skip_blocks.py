"""skip_blocks: a residual block becomes its identity path."""
from __future__ import annotations

import numpy as np
import pytest

from passes.export_onnx import export_onnx
from passes.import_onnx import import_onnx
from passes.skip_blocks import SkipBlocksPass
from tests.helpers import random_feeds, run_ort
from toolchain.errors import BadInputError
from toolchain.measure import zoo
from toolchain.pipeline import PassContext


def _zero_branch(graph, block: str) -> None:
    """Zero the BN scale and shift that end the block's residual branch: f(x) == 0."""
    bn = graph.node(f"{block}.project.bn")
    for t in bn["inputs"][1:3]:
        graph.initializers[t] = np.zeros_like(graph.initializers[t])


def test_skipping_a_zeroed_block_reproduces_outputs():
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    _zero_branch(graph, "block4")
    before = export_onnx(graph)
    result = SkipBlocksPass(blocks=("block4.add",)).run(graph, PassContext())
    graph.validate()
    after = export_onnx(graph)
    assert result.changed and result.stats["nodes_removed"] == 9
    assert not any(n.name.startswith("block4.") for n in after.graph.node)
    feeds = random_feeds(before)
    np.testing.assert_allclose(run_ort(after, feeds)[0], run_ort(before, feeds)[0], atol=1e-5)


def test_skip_changes_outputs_of_a_live_block_but_not_shapes():
    graph = import_onnx(zoo.resnet(32, 10, 0.25, 10))
    before = export_onnx(graph)
    SkipBlocksPass(blocks=("layer1.0.add",)).run(graph, PassContext())
    feeds = random_feeds(before)
    a, b = run_ort(export_onnx(graph), feeds)[0], run_ort(before, feeds)[0]
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-4


def test_no_blocks_no_change():
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    nodes = len(graph)
    assert not SkipBlocksPass().run(graph, PassContext()).changed
    assert len(graph) == nodes


@pytest.mark.parametrize("block", ["block1.add", "nope", "block3.project.conv"])
def test_not_skippable(block):
    graph = import_onnx(zoo.mobilenet_v2(32, 0.25, 10))
    with pytest.raises(BadInputError, match="not a skippable residual block"):
        SkipBlocksPass(blocks=(block,)).run(graph, PassContext())
