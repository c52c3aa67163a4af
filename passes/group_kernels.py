"""Kernel grouping: which nodes an inference runtime executes as one.

Rule: a Conv / ConvTranspose / Gemm / MatMul node (the anchor) absorbs the chain that follows
it while each next node is the only reader of the previous output, the previous output is not
a graph output, and the node is a BatchNormalization, a bias or scale (Add / Mul with a
weight), or an activation (Relu, Clip, HardSwish, HardSigmoid, Sigmoid, LeakyRelu, Tanh) -
as onnxruntime and TVM fuse them. Every other node is a kernel of its own. The kernel takes the
anchor's name. Requires "shapes" and "costs"; produces "kernels" (node meta
"group_kernels.kernel"; the list in graph.kernels).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassResult
from toolchain.space import Kernel

__all__ = ["GroupKernelsPass", "group_kernels", "ANCHORS", "ACTIVATIONS"]

logger = logging.getLogger(__name__)

ANCHORS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATIONS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "Tanh")


def _fusable(graph: Graph, node: str) -> bool:
    d = graph.node(node)
    op = d["op_type"]
    if op in ACTIVATIONS or op == "BatchNormalization":
        return True
    if op in ("Add", "Mul"):
        return sum(1 for t in d["inputs"] if graph.is_weight(t)) == 1
    return False


def _chain(graph: Graph, anchor: str) -> list[str]:
    nodes = [anchor]
    while True:
        outs = [t for t in graph.node(nodes[-1])["outputs"] if t]
        if len(outs) != 1 or outs[0] in graph.outputs:
            return nodes
        users = graph.consumers(outs[0])
        if len(users) != 1 or not _fusable(graph, users[0]):
            return nodes
        nodes.append(users[0])


def _ints(value, default: tuple[int, ...] = ()) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if value is not None else default


def _activation_bytes(graph: Graph, data_in: str | None, last: str) -> int:
    outs = [graph.tensors[t].nbytes for t in graph.node(last)["outputs"] if t in graph.tensors]
    return (graph.tensors[data_in].nbytes if data_in in graph.tensors else 0) + sum(outs)


def _kernel(graph: Graph, nodes: list[str]) -> Kernel:
    anchor = graph.node(nodes[0])
    ins = [t for t in anchor["inputs"] if t]
    data_in = next((t for t in ins if not graph.is_weight(t)), None)
    weight = next((t for t in ins if graph.is_weight(t)), None)
    if anchor["op_type"] in ("Conv", "ConvTranspose") and len(ins) > 1 and graph.is_weight(ins[1]):
        weight = ins[1]
    metas = [graph.node(n)["meta"] for n in nodes]
    w_shape = graph.shape(weight) if weight else None
    attrs = anchor["attrs"]
    ks = _ints(attrs.get("kernel_shape"), tuple(w_shape[2:]) if w_shape and
               anchor["op_type"] == "Conv" else ())
    return Kernel(
        name=nodes[0], op_type=anchor["op_type"], nodes=tuple(nodes),
        fused=tuple(graph.op(n) for n in nodes[1:]),
        input_shape=graph.shape(data_in) if data_in else None,
        output_shape=graph.shape(graph.node(nodes[-1])["outputs"][0]),
        weight_shape=w_shape, kernel_shape=ks, strides=_ints(attrs.get("strides")),
        group=int(attrs.get("group", 1)),
        macs=sum(m.get("count_costs.macs", 0) for m in metas),
        flops=sum(m.get("count_costs.flops", 0) for m in metas),
        params=sum(m.get("count_costs.params", 0) for m in metas),
        weight_bytes=sum(m.get("count_costs.weight_bytes", 0) for m in metas),
        activation_bytes=_activation_bytes(graph, data_in, nodes[-1]),
        dtype=graph.dtype(data_in) if data_in else "unknown",
    )


def group_kernels(graph: Graph) -> list[Kernel]:
    """Kernels in topological order of their anchors; annotates node meta."""
    taken: set[str] = set()
    kernels = []
    for name in graph.topo():
        if name in taken:
            continue
        is_anchor = graph.op(name) in ANCHORS and any(
            graph.is_weight(t) for t in graph.node(name)["inputs"])
        nodes = _chain(graph, name) if is_anchor else [name]
        taken.update(nodes)
        kernel = _kernel(graph, nodes)
        for n in nodes:
            graph.node(n)["meta"]["group_kernels.kernel"] = kernel.name
        kernels.append(kernel)
    graph.kernels = kernels
    return kernels


@dataclass
class GroupKernelsPass(Pass):
    """Group nodes into kernels (anchor + fused chain)."""

    name = "group_kernels"
    requires = frozenset({"shapes", "costs"})
    produces = frozenset({"kernels"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        kernels = group_kernels(graph)
        return PassResult(changed=False, stats={"kernels": len(kernels),
                                                "fused_nodes": len(graph) - len(kernels)})
