"""Fold constant subgraphs into weights.

Rule: a `Constant` node becomes a weight; a node whose inputs are all weights is evaluated once
with ONNX's reference evaluator and its outputs become weights; a `Shape` (of dims `start:end`
when given) or `Size` of any tensor becomes a weight when the dims it reads are known.
Quantize/dequantize nodes are never folded (they carry the int8 plan), nor are random ops.
Post-condition: no node computes only from constants; outputs are unchanged. Invalidates
"shapes" (new weights, fewer nodes) when it changed anything.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from onnx import helper
from onnx.reference import ReferenceEvaluator

from passes.export_onnx import attribute_proto
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["FoldConstantsPass", "fold_constants"]

logger = logging.getLogger(__name__)

_NEVER = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal",
          "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
          "If", "Loop", "Scan"}
_MAX_FOLD_BYTES = 1 << 30  # larger results stay nodes (memory), never silently dropped


def _shape_slice(graph: Graph, d: dict) -> np.ndarray | None:
    """Shape's output, dims [start:end] of its input's shape, if those dims are all known.
    ONNX's start/end (opset 15) follow Python's slice rule: negative counts from the end,
    out-of-range clamps, so a Python slice computes them exactly."""
    info = graph.tensors.get(d["inputs"][0])
    if info is None or info.shape is None:
        return None
    dims = info.shape[int(d["attrs"].get("start", 0)):d["attrs"].get("end")]
    if not all(isinstance(s, int) for s in dims):
        return None
    return np.array(dims, dtype=np.int64)


def _evaluate(graph: Graph, name: str) -> list[np.ndarray] | None:
    d = graph.node(name)
    if d["op_type"] == "Shape":  # its input is an activation: never run, read off its shape
        dims = _shape_slice(graph, d)
        return None if dims is None else [dims]
    if d["op_type"] == "Size":
        info = graph.tensors.get(d["inputs"][0])
        return [np.array(info.numel, dtype=np.int64)] if info is not None and info.known else None
    feeds = {t: graph.initializers[t] for t in d["inputs"] if t}
    types = d.get("attr_types", {})
    node = helper.make_node(d["op_type"], d["inputs"], d["outputs"], domain=d["domain"] or None)
    node.attribute.extend(attribute_proto(k, v, types.get(k)) for k, v in d["attrs"].items())
    ins = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for t, a in feeds.items()]
    outs = [helper.make_empty_tensor_value_info(t) for t in d["outputs"] if t]
    model = helper.make_model(helper.make_graph([node], "fold", ins, outs),
                              opset_imports=[helper.make_opsetid(k, v)
                                             for k, v in graph.opset.items()])
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
    except Exception as err:  # an op the reference cannot run stays a node
        logger.debug("not folding %s (%s): %s", name, d["op_type"], err)
        return None


def _foldable(graph: Graph, name: str) -> bool:
    d = graph.node(name)
    if d["op_type"] in _NEVER or d["domain"] not in ("", "ai.onnx"):
        return False
    if d["op_type"] in ("Shape", "Size"):
        return True
    return all(t == "" or t in graph.initializers for t in d["inputs"])


def fold_constants(graph: Graph) -> int:
    """Fold what can be folded; returns the number of nodes removed."""
    folded = 0
    for name in graph.topo():
        if name not in graph or not _foldable(graph, name):
            continue
        values = _evaluate(graph, name)
        if values is None or sum(v.nbytes for v in values) > _MAX_FOLD_BYTES:
            continue
        outs = [t for t in graph.node(name)["outputs"] if t]
        graph.remove_node(name)
        for t, v in zip(outs, values, strict=False):
            graph.initializers[t] = v
            graph.tensors[t] = TensorInfo(tuple(int(s) for s in v.shape), v.dtype.name)
        folded += 1
    if folded:
        graph.remove_unused()
    return folded


@dataclass
class FoldConstantsPass(Pass):
    """Evaluate constant subgraphs once and keep their results as weights."""

    name = "fold_constants"
    invalidates = frozenset({"shapes", "kernels", "costs", "space"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = fold_constants(graph)
        return PassResult(changed=folded > 0, stats={"nodes_folded": folded})


