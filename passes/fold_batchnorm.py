"""Fold a BatchNormalization into the Conv it alone follows, for the kernels about to be int8.

Rule: W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), exact up to
float rounding. Run just before the quantize pass on the same kernels, so a quantized kernel is
one Conv (onnxruntime fuses DQ -> Conv -> Q into an integer kernel; a Conv followed by a float
BN would stay float). Pre-conditions: the BN is the Conv output's only reader, neither output
is a graph output (folding would rename it), weights and BN parameters are initializers,
inference mode. A kernel that does not meet them is left as it is (quantize still runs on it).
Post-conditions: outputs unchanged up to float rounding; the Conv keeps its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from passes.common import kernel_nodes
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["FoldBatchnormPass", "fold_batchnorm"]


def fold_batchnorm(graph: Graph, anchor: str) -> bool:
    """Fold the BatchNormalization that alone reads a Conv's output into the Conv."""
    d = graph.node(anchor)
    out = d["outputs"][0]
    users = graph.consumers(out)
    if d["op_type"] != "Conv" or len(users) != 1 or graph.op(users[0]) != "BatchNormalization" \
            or out in graph.outputs or not graph.is_weight(d["inputs"][1]):
        return False
    bn = graph.node(users[0])
    if bn["attrs"].get("training_mode", 0) or bn["outputs"][0] in graph.outputs or \
            not all(graph.is_weight(t) for t in bn["inputs"][1:5]):
        return False
    gamma, beta, mean, var = (graph.initializers[t].astype(np.float64) for t in bn["inputs"][1:5])
    scale = gamma / np.sqrt(var + float(bn["attrs"].get("epsilon", 1e-5)))
    W = graph.initializers[d["inputs"][1]]
    b = (graph.initializers[d["inputs"][2]].astype(np.float64)
         if len(d["inputs"]) > 2 and d["inputs"][2] else np.zeros(W.shape[0]))
    new_w, new_b = graph.fresh_name(f"{anchor}.weight_bn"), graph.fresh_name(f"{anchor}.bias_bn")
    graph.initializers[new_w] = (W * scale.reshape(-1, *[1] * (W.ndim - 1))).astype(W.dtype)
    graph.initializers[new_b] = ((b - mean) * scale + beta).astype(W.dtype)
    for t in (new_w, new_b):
        graph.tensors[t] = TensorInfo(graph.initializers[t].shape, W.dtype.name)
    graph.set_input(anchor, 1, new_w)
    if len(d["inputs"]) == 2:
        d["inputs"].append("")
    graph.set_input(anchor, 2, new_b)
    graph.replace_uses(bn["outputs"][0], out)
    graph.remove_node(users[0])
    graph.remove_unused()
    return True


@dataclass
class FoldBatchnormPass(Pass):
    """Fold each named kernel's following BatchNormalization into its Conv."""

    name = "fold_batchnorm"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    kernels: tuple[str, ...] = field(default_factory=tuple)  # kernel names (the int8 ones)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.kernels:
            return PassResult(changed=False, stats={"folded": 0})
        kernel_nodes(graph, list(self.kernels), "int8")   # unknown names: BadInputError
        folded = sum(fold_batchnorm(graph, k) for k in self.kernels)
        return PassResult(changed=bool(folded), stats={"folded": folded})
