"""Helpers shared by several passes: op sets, kernel lookup, running a graph on calibration
data. Not a pass."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from passes.export_onnx import export_onnx, to_value_info
from passes.group_kernels import group_kernels
from toolchain.calib import CalibData, feeds
from toolchain.errors import BadInputError
from toolchain.ir import Graph

__all__ = ["run_collect", "kernel_nodes", "PER_CHANNEL_OPS"]

# Ops that act on each channel alone: a channel pruned before them can be pruned after them.
PER_CHANNEL_OPS = frozenset({
    "BatchNormalization", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu",
    "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Dropout", "Identity"})


def run_collect(graph: Graph, calib: CalibData, tensors: list[str]
                ) -> Iterator[dict[str, np.ndarray]]:
    """Run the graph in onnxruntime over the calibration samples, yielding, per run, the values
    of `tensors` (any intermediate tensor names). One thread, no graph optimisation, so the
    values are exactly the IR's tensors."""
    import onnxruntime as ort
    from onnx import helper

    model = export_onnx(graph)
    known = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in known:
            info = graph.tensors.get(t)
            model.graph.output.append(to_value_info(t, info) if info else
                                      helper.make_empty_tensor_value_info(t))
            known.add(t)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    for feed in feeds(calib, graph):
        yield dict(zip(tensors, sess.run(tensors, feed), strict=True))


def kernel_nodes(graph: Graph, names: list[str], what: str) -> dict[str, tuple[str, ...]]:
    """Kernel name -> its node names (anchor first); BadInputError for an unknown kernel."""
    kernels = {k.name: k for k in group_kernels(graph)}
    unknown = sorted(n for n in names if n not in kernels)
    if unknown:
        raise BadInputError(f"{what}: no kernel named {unknown[0]!r} in this model "
                            "(see `fleetc inspect` for kernel names)")
    return {n: kernels[n].nodes for n in names}
