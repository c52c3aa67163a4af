"""Per-kernel fp16 through onnxruntime's float16 converter (`onnxruntime.transformers.float16`).

Rule: the nodes of the kernels named fp16 (anchor + fused BN / activations) compute in float16;
every other node is put on the converter's `node_block_list` and stays as it was (fp32, or
int8 QDQ from the quantize pass), with Cast nodes inserted where the two meet. The model's
inputs and outputs keep their types (`keep_io_types`). The converter also sends tensors
between two blocked nodes through a float32 -> float16 -> float32 Cast pair; those round trips
are removed afterwards (they would round every fp32 tensor to fp16 precision).
Pre-condition: the target supports fp16 (checked by the plan against the target before this
pass runs). Post-conditions: output shapes and dtypes unchanged; original node names kept.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import onnx

from passes.common import kernel_nodes, topological_nodes
from passes.export_onnx import export_onnx
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
    _drop_round_trips(new)
    graph.assign(new)
    return nodes


def _cast_to(graph: Graph, node: str) -> int | None:
    return int(graph.node(node)["attrs"]["to"]) if graph.op(node) == "Cast" else None


def _drop_round_trips(graph: Graph) -> int:
    """Cast(fp16) -> Cast(fp32) of a float32 tensor reads the tensor itself; returns how many."""
    dropped = 0
    for c2 in graph.topo():
        if _cast_to(graph, c2) != onnx.TensorProto.FLOAT:
            continue
        c1 = graph.producer(graph.node(c2)["inputs"][0])
        if c1 is None or _cast_to(graph, c1) != onnx.TensorProto.FLOAT16:
            continue
        source = graph.node(c1)["inputs"][0]
        if graph.dtype(source) != "float32":
            continue
        out = graph.node(c2)["outputs"][0]
        graph.set_input(c2, 0, source)  # now an exact float32 -> float32 Cast
        if out not in graph.outputs:
            graph.replace_uses(out, source)
            graph.remove_node(c2)
            graph.tensors.pop(out, None)
        dropped += 1
    graph.remove_unused()
    return dropped


def _sort_nodes(model: onnx.ModelProto) -> None:
    """Topological order, stable (the converter appends its input Casts at the end)."""
    g = model.graph
    ordered, stuck = topological_nodes(g.node, {i.name for i in g.input}
                                       | {i.name for i in g.initializer})
    if stuck:
        raise BadInputError(f"fp16: converted graph has a cycle at {stuck[0].name!r}")
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
