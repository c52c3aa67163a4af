"""Per-node costs: MACs, FLOPs, parameter count and bytes, activation bytes.

Counting rules (documented in README, "inspect"):
- MACs count multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul only:
  Conv = output elements x (input channels / group) x kernel area; ConvTranspose = input
  elements x (output channels / group) x kernel area; Gemm/MatMul = output elements x the
  reduced dimension.
- FLOPs = 2 x MACs (+ one per output element for a bias), plus one per output element for
  every other op with a known output (pooling: one per window element).
- params = elements of the weights a node reads (each weight counted once per model);
  weight_bytes the same in bytes; activation_bytes = bytes of the node's non-weight inputs and
  of its outputs.
Requires "shapes"; produces "costs" (node meta "count_costs.*").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["CountCostsPass", "count_costs", "node_macs"]

logger = logging.getLogger(__name__)


def _numel(shape) -> int:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return 0
    return int(np.prod(shape))


def node_macs(graph: Graph, name: str) -> int:
    d = graph.node(name)
    op, ins, outs = d["op_type"], d["inputs"], d["outputs"]
    out_shape = graph.shape(outs[0]) if outs else None
    if op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        w_index = 3 if op == "QLinearConv" else 1
        w = graph.shape(ins[w_index]) if len(ins) > w_index else None
        if w is None or _numel(w) == 0:
            return 0
        area = int(np.prod(w[2:])) if len(w) > 2 else 1
        if op == "ConvTranspose":
            return _numel(graph.shape(ins[0])) * w[1] * area
        return _numel(out_shape) * w[1] * area
    if op == "Gemm":
        a = graph.shape(ins[0])
        if a is None or len(a) != 2:
            return 0
        k = a[0] if d["attrs"].get("transA", 0) else a[1]
        return _numel(out_shape) * int(k)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = graph.shape(ins[0])
        if a is None or not a:
            return 0
        return _numel(out_shape) * int(a[-1])
    return 0


def _flops(graph: Graph, name: str, macs: int) -> int:
    d = graph.node(name)
    out_elems = sum(_numel(graph.shape(t)) for t in d["outputs"] if t)
    if macs:
        has_bias = d["op_type"] in ("Conv", "Gemm") and len(d["inputs"]) > 2 and d["inputs"][2]
        return 2 * macs + (out_elems if has_bias else 0)
    if d["op_type"] in ("MaxPool", "AveragePool"):
        return out_elems * int(np.prod(d["attrs"].get("kernel_shape", [1])))
    if d["op_type"] in ("GlobalAveragePool", "GlobalMaxPool"):
        return _numel(graph.shape(d["inputs"][0]))
    return out_elems


def count_costs(graph: Graph) -> None:
    seen: set[str] = set()
    for name in graph.topo():
        d = graph.node(name)
        macs = node_macs(graph, name)
        params = weight_bytes = act_bytes = 0
        for t in d["inputs"]:
            if not t:
                continue
            if graph.is_weight(t):
                if t not in seen:
                    seen.add(t)
                    params += int(graph.initializers[t].size)
                    weight_bytes += int(graph.initializers[t].nbytes)
            else:
                info = graph.tensors.get(t)
                act_bytes += info.nbytes if info else 0
        act_bytes += sum(graph.tensors[t].nbytes for t in d["outputs"] if t in graph.tensors)
        d["meta"].update({"count_costs.macs": macs, "count_costs.flops": _flops(graph, name, macs),
                          "count_costs.params": params, "count_costs.weight_bytes": weight_bytes,
                          "count_costs.activation_bytes": act_bytes})


@dataclass
class CountCostsPass(Pass):
    """Annotate every node with its MACs, FLOPs, parameters and activation bytes."""

    name = "count_costs"
    requires = frozenset({"shapes"})
    produces = frozenset({"costs"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        count_costs(graph)
        total = sum(graph.node(n)["meta"]["count_costs.macs"] for n in graph.nx)
        return PassResult(changed=False, stats={"macs": total})
