"""Shape and dtype inference through ONNX's own inference (with data propagation).

Rule: every tensor gets a `TensorInfo` from onnx.shape_inference; graph inputs keep the fixed
shapes import gave them. A graph output's declared shape is not an input of inference: the
inferred dims win, and a declared dim (or dtype) only fills one inference leaves unknown - so
outputs follow a new input shape. Post-condition: fact "shapes"; other tensors whose shape ONNX
cannot infer keep shape None (an op the toolchain does not understand leaves its outputs
unknown).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from passes.export_onnx import export_onnx
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["InferShapesPass", "infer_shapes", "value_info_to_tensorinfo"]

logger = logging.getLogger(__name__)


def value_info_to_tensorinfo(vi: onnx.ValueInfoProto) -> TensorInfo:
    t = vi.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = "unknown"
    if not t.HasField("shape"):
        return TensorInfo(None, dtype)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in t.shape.dim)
    return TensorInfo(dims, dtype)


def _over_declared(inferred: TensorInfo, declared: TensorInfo | None) -> TensorInfo:
    """A graph output's info: the inferred dims and dtype where inference knows them, the
    declared ones (the model's, or the last inference's) only where it does not."""
    if declared is None:
        return inferred
    dtype = inferred.dtype if inferred.dtype != "unknown" else declared.dtype
    if inferred.shape is None or declared.shape is None:
        return TensorInfo(inferred.shape if inferred.shape is not None else declared.shape, dtype)
    if len(inferred.shape) != len(declared.shape):
        return TensorInfo(inferred.shape, dtype)
    return TensorInfo(tuple(i if isinstance(i, int) or d is None else d
                            for i, d in zip(inferred.shape, declared.shape, strict=True)), dtype)


def infer_shapes(graph: Graph) -> int:
    """Refresh `graph.tensors` from ONNX shape inference; returns how many tensors changed."""
    model = export_onnx(graph, weights=False)
    # Graph outputs go to inference untyped: non-strict ONNX inference keeps a declared dim that
    # contradicts the inferred one, so a declaration made stale by a new input shape would win.
    for vi in model.graph.output:
        vi.ClearField("type")
    inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                 data_prop=True)
    found = {vi.name: value_info_to_tensorinfo(vi)
             for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    outputs = set(graph.outputs)
    changed = 0
    for name in graph.nx:
        for t in graph.node(name)["outputs"]:
            if not t:
                continue
            new = found.get(t, TensorInfo(None, "unknown"))
            if t in outputs:
                new = _over_declared(new, graph.tensors.get(t))
            if graph.tensors.get(t) != new:
                graph.tensors[t] = new
                changed += 1
    for w, arr in graph.initializers.items():
        graph.tensors[w] = TensorInfo(tuple(int(d) for d in arr.shape), arr.dtype.name)
    graph.refresh_edges()
    return changed


@dataclass
class InferShapesPass(Pass):
    """Annotate every tensor with its shape and dtype."""

    name = "infer_shapes"
    produces = frozenset({"shapes"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = infer_shapes(graph)
        unknown = sum(1 for i in graph.tensors.values() if not i.known)
        return PassResult(changed=False, stats={"tensors_updated": changed,
                                                "unknown_shapes": unknown})
