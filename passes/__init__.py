"""The pass catalogue: every graph pass of fleetc, and the two pipelines built from them.

Analysis (every command's front half): import_onnx (with fold_constants and infer_shapes) ->
count_costs -> group_kernels -> discover_space. The results are typed attributes of the graph:
`graph.kernels` and `graph.space`.

Rewrite (`plan_passes(plan)`): resize_input -> skip_blocks -> shrink_kernels -> prune_channels
-> fold_batchnorm -> quantize (both on the int8 kernels) -> to_fp16. Structure first, then widths
(reconstruction sees the final structure), then precision (int8 ranges are calibrated on the
final weights).

Emission: export_onnx (ONNX) and emit_tvm (a TVM module per target).
"""
from __future__ import annotations

import os

import onnx
import onnx.defs

from passes.count_costs import CountCostsPass
from passes.discover_space import DiscoverSpacePass
from passes.fold_batchnorm import FoldBatchnormPass
from passes.group_kernels import GroupKernelsPass
from passes.import_onnx import import_onnx
from passes.prune_channels import PruneChannelsPass
from passes.quantize import QuantizePass
from passes.resize_input import ResizeInputPass
from passes.shrink_kernels import ShrinkKernelsPass
from passes.skip_blocks import SkipBlocksPass
from passes.to_fp16 import ToFp16Pass
from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassRecord, Pipeline
from toolchain.space import Plan

__all__ = ["analyze", "load_and_analyze", "unknown_ops", "plan_passes"]


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


def unknown_ops(graph: Graph) -> list[dict]:
    """Nodes whose op has no ONNX schema: kept as opaque nodes, never dropped."""
    out = []
    for n in graph.topo():
        d = graph.node(n)
        domain = d["domain"] if d["domain"] != "ai.onnx" else ""
        if not onnx.defs.has(d["op_type"], domain):
            out.append({"name": n, "op_type": d["op_type"], "domain": domain})
    return out


def plan_passes(plan: Plan, removed: set[str], reconstruct: bool = True) -> list[Pass]:
    """The passes that carry out `plan` (choices for `removed` kernels left out), in order.
    `reconstruct=False` prunes without refitting the consumers (for comparison only)."""
    live = {k: c for k, c in plan.kernels.items() if k not in removed}
    int8 = tuple(sorted(k for k, c in live.items() if c.precision == "int8"))
    return [
        ResizeInputPass(shapes={k: tuple(v) for k, v in plan.input_shape.items()}),
        SkipBlocksPass(blocks=tuple(plan.skip_blocks)),
        ShrinkKernelsPass(sizes={k: c.kernel_size for k, c in live.items()
                                 if c.kernel_size is not None}),
        PruneChannelsPass(widths={k: c.width for k, c in live.items() if c.width < 1.0},
                          reconstruct=reconstruct),
        FoldBatchnormPass(kernels=int8),
        QuantizePass(kernels=int8),
        ToFp16Pass(kernels=tuple(sorted(k for k, c in live.items() if c.precision == "fp16"))),
    ]
