"""The target's latency predictor as a plan-cost function for compile (toolchain.predict).

Every price comes from `predict_plan` on the analyzed float graph (no rewrite, no quantization:
fast enough for the thousands of plans the tables and the evolutionary search price). The
structural part of a plan (input size, skipped blocks, kernel sizes) is applied to a copy of the
graph once per distinct combination and the last GRAPHS_KEPT are kept here (copies share the
weights; the bound keeps a long evolutionary search's memory flat), so the predictor then only
applies precisions and widths (milliseconds per plan). A memory-bound kernel of a kind the
predictor was never trained on (a Concat between int8 neighbours) is priced by the package's
memory-traffic fallback (`predict/kernel.py`), and compile's warnings list those kinds with the
fallback's measured error. A kernel with no price at all (a compute kind the package lacks) is
never priced as zero: the base plan then fails with UnsupportedKernelError naming it, and an
option that introduces one is not offered (compile lists such options in its warnings).
"""
from __future__ import annotations

import logging
from dataclasses import replace

from toolchain.compile.tables import PlanCosts
from toolchain.errors import UnsupportedKernelError
from toolchain.space import Plan

__all__ = ["predictor_cost"]

logger = logging.getLogger(__name__)

GRAPHS_KEPT = 16    # structural variants (skip sets, input sizes, kernel sizes) kept in memory


def _split(plan: Plan) -> tuple[tuple, Plan]:
    """(structural key, the plan's precisions and widths only)."""
    sizes = tuple(sorted((k, c.kernel_size) for k, c in plan.kernels.items()
                         if c.kernel_size is not None))
    shapes = tuple(sorted((k, tuple(v)) for k, v in plan.input_shape.items()))
    key = (shapes, tuple(sorted(plan.skip_blocks)), sizes)
    rest = Plan(kernels={k: replace(c, kernel_size=None) for k, c in plan.kernels.items()})
    return key, rest


def predictor_cost(target, prep, predictor=None) -> tuple:
    """(cost function, predictor name, warnings) for `target` on the prepared model; with
    `predictor` (a KernelPredictor) that one prices the plans instead of the target's own."""
    from toolchain.predict.latency import load_predictor, predict_plan, predictor_error
    from toolchain.predict.units import structural_graph

    predictor = predictor or load_predictor(target)
    name = predictor.name
    if "measured_cpu" in predictor.meta:   # calibrated to this CPU (predict/latency.py)
        name += f" (calibrated to this CPU; error {predictor_error(predictor.meta)})"
    warnings = []
    if not target.measurable_here and not predictor.meta.get("validated", False):
        warnings.append(f"latency predictions for {target.name} are UNVALIDATED: its predictor "
                        f"({predictor.name}) was not checked against measurements from the "
                        "device")
    graphs: dict[tuple, object] = {}
    memo: dict[str, PlanCosts] = {}

    def cost(plan: Plan) -> PlanCosts:
        whole = plan.to_json()
        if whole not in memo:
            key, rest = _split(plan)
            if key not in graphs:
                if len(graphs) >= GRAPHS_KEPT:
                    graphs.pop(next(iter(graphs)))
                graphs[key] = prep.graph if key == ((), (), ()) else \
                    structural_graph(prep.graph, plan)
            p = predict_plan(predictor, graphs[key], rest)
            if p.unknown:
                raise UnsupportedKernelError(
                    f"predictor {predictor.name} has no model for {len(p.unknown)} kernel(s): "
                    f"{', '.join(p.unknown[:5])}{' ...' if len(p.unknown) > 5 else ''}")
            memo[whole] = PlanCosts(p.latency_ms)
        return memo[whole]

    cost(Plan())   # fails here, naming the kernels, if the model itself cannot be priced
    kinds = _fallback_kinds(predictor, prep.graph, target)
    if kinds:
        warnings.append(f"predictor {predictor.name} has no measurements of {', '.join(kinds)}: "
                        "priced by its memory-traffic fallback (error "
                        f"{predictor.fallback_error})")
    return cost, name, warnings


def _fallback_kinds(predictor, graph, target) -> list[str]:
    """The kernel kinds of the model that the predictor prices by its fallback, as they are
    and in int8 (for the ops the quantize pass runs in int8 between int8 neighbours)."""
    from toolchain.predict.units import QDQ_FOLLOWERS, graph_units

    kinds = set()
    for u in graph_units(graph):
        int8 = "int8" in target.precisions and u.cls in QDQ_FOLLOWERS
        for v in (u, replace(u, precision="int8")) if int8 else (u,):
            if v.kind not in predictor.weights and predictor.fallback_ms(v) is not None:
                kinds.add(v.kind)
    return sorted(kinds)
