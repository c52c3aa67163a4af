"""Files of a compile output folder: plan.json, manifest.json, report.html (see docs/compile.md).

Everything here is derived from the chosen candidate, the cost tables and the manifest dict;
`write_outdir` writes into the (temporary) folder that compile renames into place."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from toolchain.compile.report import Point, render_report
from toolchain.files import atomic_write, write_output_marker
from toolchain.optimize.costs import Budget
from toolchain.optimize.pareto import nondominated, pareto_front
from toolchain.space import Plan

__all__ = ["write_outdir", "report_points", "kernel_rows", "candidate_rows", "budget_met",
           "BUDGET_TOLERANCE"]

logger = logging.getLogger(__name__)

BUDGET_TOLERANCE = 0.05     # measured latency may exceed the budget by 5% (timing noise)


def budget_met(measured_ms: float | None, budget_ms: float | None,
               tolerance: float = BUDGET_TOLERANCE) -> bool | None:
    """Whether the artifact's measured latency meets the latency budget, within `tolerance`
    (a fraction of the budget): None when either is missing (no latency budget, or the target
    is not measurable here). One rule for compile's manifest and the fleet's fleet.json."""
    if measured_ms is None or budget_ms is None:
        return None
    return bool(measured_ms <= budget_ms * (1.0 + tolerance))


def report_points(tset, candidates, chosen, measured_ms: float | None = None) -> list[Point]:
    """Front over every input resolution (additive model around the original), the
    candidates (whole-plan predictions), their measured drops, the choice and, where it was
    timed, the chosen plan at its measured latency (kind "artifact")."""
    front = []
    for table in tset.tables.values():
        front += pareto_front(table, cells=1000)
    points = [Point(s.metrics.latency_ms, s.metrics.drop, "front", "front")
              for s in nondominated(front)]
    for c in candidates:
        points.append(Point(c.metrics.latency_ms, c.metrics.drop, f"{c.solver} (predicted)",
                            "candidate"))
        if c.measured_drop is not None:
            points.append(Point(c.metrics.latency_ms, c.measured_drop, f"{c.solver} (measured)",
                                "measured"))
    drop = chosen.measured_drop if chosen.measured_drop is not None else chosen.metrics.drop
    points.append(Point(chosen.metrics.latency_ms, drop, f"chosen: {chosen.solver}", "chosen"))
    if measured_ms is not None:
        points.append(Point(measured_ms, drop, f"chosen: {chosen.solver} (measured latency)",
                            "artifact"))
    # A given plan has no predicted drop, an unpriced one no predicted latency: not plotted.
    return [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]


def kernel_rows(ctx, plan: Plan) -> list[list]:
    """Per kernel and block: the choice, its marginal predicted latency (the plan against the
    plan with that kernel or block back in its original form) and its predicted drop."""
    from dataclasses import replace

    total = ctx.cost(plan).latency_ms
    rows = []
    skipped = set(plan.skip_blocks)
    for k in ctx.kernels:
        c = plan.kernels.get(k.name)
        if c is None or k.name not in ctx.space.options:
            continue
        back = replace(plan, kernels={n: v for n, v in plan.kernels.items() if n != k.name})
        rows.append([k.name, k.op_type, k.macs, c.label,
                     round(total - ctx.cost(back).latency_ms, 4),
                     _drop(ctx.sensitivity.kernel(k.name, c))])
    for b in sorted(skipped):
        back = replace(plan, skip_blocks=sorted(skipped - {b}))
        rows.append([b, "block", None, "skip", round(total - ctx.cost(back).latency_ms, 4),
                     _drop(ctx.sensitivity.block(b))])
    for shape in plan.input_shape.values():
        r0 = ctx.original
        rows.append(["input", "resolution", None, f"{shape[2]}x{shape[3]}", None,
                     _drop(ctx.sensitivity.resolution(shape[2], r0)) if r0 else None])
    return rows


def _drop(points: float) -> float | None:
    """A predicted drop for the report; None where it was not measured (a given plan)."""
    return None if math.isnan(points) else round(points, 4)


def candidate_rows(candidates, budget: Budget) -> list[list]:
    return [[c.solver + (f" @{c.resolution}px" if c.resolution else ""),
             c.metrics.latency_ms, c.metrics.drop, c.measured_drop,
             "yes" if budget.allows(c.metrics) else "no"] for c in candidates]


def write_outdir(folder: Path, plan: Plan, manifest: dict, points, rows, candidates,
                 budget: Budget) -> None:
    """plan.json, manifest.json, report.html and the `.fleetc-output` marker (kind "compile")
    that lets a later compile replace the folder (toolchain.files.check_output_dir). A
    zero-shot latency estimate is labelled: `latency_estimate` (null for a fitted or calibrated
    predictor) and a warning with its expected error."""
    from toolchain.predict.zeroshot import manifest_estimate

    estimate = manifest_estimate(manifest["target"], manifest["predictor"])
    manifest["latency_estimate"] = estimate
    if estimate is not None:
        manifest["warnings"] = sorted({*manifest["warnings"], f"latency: {estimate['label']}"})
    plan.save(folder / "plan.json")
    atomic_write(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    html = render_report(manifest, points, rows, candidate_rows(candidates, budget))
    atomic_write(folder / "report.html", html)
    write_output_marker(folder, "compile")
