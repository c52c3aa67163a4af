"""Files of a compile output folder: plan.json, manifest.json, report.html (see docs/compile.md).

Everything here is derived from the chosen candidate, the cost tables and the manifest dict;
`write_outdir` writes into the (temporary) folder that compile renames into place."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from toolchain.compile_report import Point, render_report
from toolchain.optimize.costs import Budget
from toolchain.optimize.pareto import nondominated, pareto_front
from toolchain.space import Plan, atomic_write

__all__ = ["write_outdir", "report_points", "kernel_rows", "candidate_rows"]

logger = logging.getLogger(__name__)


def report_points(tset, candidates, chosen) -> list[Point]:
    """Front over every input resolution, the candidates, their measured drops, the choice."""
    front = []
    for table in tset.tables.values():
        front += pareto_front(table, cells=1000)
    points = [Point(s.metrics.latency_ms, s.metrics.drop, "front", "front")
              for s in nondominated(front)]
    for c in candidates:
        m = c.solution.metrics
        points.append(Point(m.latency_ms, m.drop, f"{c.solver} (predicted)", "candidate"))
        if c.measured_drop is not None:
            points.append(Point(m.latency_ms, c.measured_drop, f"{c.solver} (measured)",
                                "measured"))
    m = chosen.solution.metrics
    points.append(Point(m.latency_ms, chosen.measured_drop if chosen.measured_drop is not None
                        else m.drop, f"chosen: {chosen.solver}", "chosen"))
    return points


def kernel_rows(prep, tset, chosen) -> list[list]:
    """Per decision of the chosen resolution: what was chosen and what it is predicted to do."""
    table = tset.tables[chosen.resolution]
    macs = {k.name: (k.op_type, k.macs) for k in prep.kernels}
    rows = []
    for d, i in zip(table.decisions, chosen.solution.picks, strict=True):
        o = d.options[i]
        op, mac = macs.get(d.name, ("block", None))
        rows.append([d.name, op, mac, o.label, round(o.latency_ms, 4), round(o.drop, 4)])
    return rows


def candidate_rows(candidates, budget: Budget) -> list[list]:
    return [[c.solver + (f" @{c.resolution}px" if c.resolution else ""),
             c.solution.metrics.latency_ms, c.solution.metrics.drop, c.measured_drop,
             "yes" if budget.allows(c.solution.metrics) else "no"] for c in candidates]


def write_outdir(folder: Path, plan: Plan, manifest: dict, points, rows, candidates,
                 budget: Budget) -> None:
    plan.save(folder / "plan.json")
    atomic_write(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    html = render_report(manifest, points, rows, candidate_rows(candidates, budget))
    atomic_write(folder / "report.html", html)
