"""Per-kernel fp16 through onnxruntime's float16 converter (`onnxruntime.transformers.float16`).

Rule: the nodes of the kernels named fp16 (anchor + fused BN / activations) compute in float16;
every other node is put on the converter's `node_block_list` and stays as it was (fp32, or
int8 QDQ from the quantize pass), with Cast nodes inserted where the two meet. The model's
inputs and outputs keep their types (`keep_io_types`). Pre-condition: the target supports fp16
(checked by the plan against the target before this pass runs). Post-conditions: output
shapes and dtypes unchanged; original node names kept.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import onnx

from passes.export_onnx import export_onnx
from passes.quantize import kernel_nodes, replace_graph
from toolchain.errors import BadInputError
from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["ToFp16Pass", "to_fp16"]

logger = logging.getLogger(__name__)


def to_fp16(graph: Graph, kernels: list[str]) -> list[str]:
    """Convert the named kernels' nodes to float16 in place; returns the converted nodes."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from passes.import_onnx import import_onnx

    if not kernels:
        return []
    groups = kernel_nodes(graph, kernels, "fp16")
    nodes = sorted({n for ns in groups.values() for n in ns})
    float_nodes = [n for n in nodes if graph.dtype(graph.node(n)["inputs"][0]) != "float32"]
    if float_nodes:
        raise BadInputError(f"fp16: node {float_nodes[0]!r} does not compute in float32 "
                            "(already quantized or converted?)")
    model = export_onnx(graph)
    blocked = [n.name for n in model.graph.node if n.name not in set(nodes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about every clipped constant
        converted = convert_float_to_float16(model, keep_io_types=True,
                                             node_block_list=blocked)
    _sort_nodes(converted)
    new = import_onnx(converted, {t: tuple(graph.shape(t)) for t in graph.inputs})
    replace_graph(graph, new)
    return nodes


def _sort_nodes(model: onnx.ModelProto) -> None:
    """Topological order, stable (the converter appends its input Casts at the end)."""
    g = model.graph
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for node in pending:
            if all(t in ready for t in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise BadInputError(f"fp16: converted graph has a cycle at {rest[0].name!r}")
        pending = rest
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del g.node[:]
    g.node.extend(copies)


@dataclass
class ToFp16Pass(Pass):
    """Run the plan's fp16 kernels in float16 (others blocked)."""

    name = "to_fp16"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    kernels: tuple[str, ...] = field(default_factory=tuple)  # kernel names to make fp16

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        nodes = to_fp16(graph, list(self.kernels))
        return PassResult(changed=bool(nodes), stats={"kernels_fp16": len(self.kernels),
                                                      "nodes_fp16": len(nodes)})
