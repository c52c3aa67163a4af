"""The front half shared by every command: import, costs, kernels, design space."""
from __future__ import annotations

import logging
import os

import onnx
import onnx.defs

from passes.count_costs import CountCostsPass
from passes.discover_space import DiscoverSpacePass
from passes.group_kernels import GroupKernelsPass
from passes.import_onnx import import_onnx
from toolchain.ir import Graph
from toolchain.pipeline import PassContext, PassRecord, Pipeline
from toolchain.space import Kernel, Space

__all__ = ["analyze", "load_and_analyze", "unknown_ops", "kernels_of", "space_of"]

logger = logging.getLogger(__name__)


def analyze(graph: Graph, debug: bool | None = None) -> list[PassRecord]:
    """Annotate costs, group kernels and discover the design space, in place."""
    ctx = PassContext(facts={"shapes"})
    if debug is not None:
        ctx.debug = debug
    return Pipeline([CountCostsPass(), GroupKernelsPass(), DiscoverSpacePass()]).run(graph, ctx)


def load_and_analyze(source: str | os.PathLike | onnx.ModelProto,
                     input_shapes: dict[str, tuple[int, ...]] | None = None,
                     debug: bool | None = None) -> Graph:
    graph = import_onnx(source, input_shapes)
    analyze(graph, debug=debug)
    return graph


def kernels_of(graph: Graph) -> list[Kernel]:
    return graph.meta["kernels"]


def space_of(graph: Graph) -> Space:
    return graph.meta["space"]


def unknown_ops(graph: Graph) -> list[dict]:
    """Nodes whose op has no ONNX schema: kept as opaque nodes, never dropped."""
    out = []
    for n in graph.topo():
        d = graph.node(n)
        domain = d["domain"] if d["domain"] != "ai.onnx" else ""
        if not onnx.defs.has(d["op_type"], domain):
            out.append({"name": n, "op_type": d["op_type"], "domain": domain})
    return out
