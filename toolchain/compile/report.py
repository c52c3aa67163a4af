"""report.html of `fleetc compile`: Pareto plot (inline SVG, no plotting library), the chosen
point, the candidates, per-kernel table, warnings and artifacts. Self-contained: no scripts, no
external files, so it opens anywhere and is byte-identical for identical inputs."""
from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Point", "svg_plot", "render_report"]

logger = logging.getLogger(__name__)

_COLORS = {"front": "#1f77b4", "chosen": "#d62728", "candidate": "#2ca02c",
           "measured": "#ff7f0e", "artifact": "#9467bd"}


@dataclass(frozen=True)
class Point:
    x: float            # latency, ms
    y: float            # accuracy drop, points
    label: str
    kind: str           # "front" | "candidate" | "chosen" | "measured" | "artifact"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def svg_plot(points: Sequence[Point], xlabel: str, ylabel: str,
             vline: float | None = None, width: int = 640, height: int = 400) -> str:
    """Scatter of the points, the front joined as a step line, an optional budget line. Points
    without a finite position (a plan the predictor could not price) are left out and counted
    under the plot."""
    finite = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]
    left_out = len(points) - len(finite)
    points = finite
    if vline is not None and not math.isfinite(vline):
        vline = None
    if not points:
        return "<p>(no points to plot" + (f": {left_out} without a price" if left_out else "") \
            + ")</p>"
    xs = [p.x for p in points] + ([vline] if vline is not None else [])
    ys = [p.y for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys + [0.0]), max(ys + [0.0])
    padx, pady = (x1 - x0) * 0.05 or 1.0, (y1 - y0) * 0.08 or 1.0
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    left, right, top, bottom = 70, 20, 20, 50
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return round(left + (v - x0) / (x1 - x0) * pw, 2)

    def sy(v: float) -> float:
        return round(top + (1 - (v - y0) / (y1 - y0)) * ph, 2)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="white" '
           'stroke="#888"/>']
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{sx(t)}" y1="{top + ph}" x2="{sx(t)}" y2="{top + ph + 4}" '
                   f'stroke="#444"/><text x="{sx(t)}" y="{top + ph + 16}" '
                   f'text-anchor="middle">{t:g}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left - 4}" y1="{sy(t)}" x2="{left}" y2="{sy(t)}" stroke="#444"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">'
               f'{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(ylabel)}</text>')
    if vline is not None:
        out.append(f'<line x1="{sx(vline)}" y1="{top}" x2="{sx(vline)}" y2="{top + ph}" '
                   'stroke="#d62728" stroke-dasharray="5,4"/>'
                   f'<text x="{sx(vline) - 4}" y="{top + ph - 6}" text-anchor="end" '
                   'fill="#d62728">budget</text>')
    front = sorted((p for p in points if p.kind == "front"), key=lambda p: p.x)
    if len(front) > 1:
        path = " ".join(f"{sx(a.x)},{sy(a.y)} {sx(b.x)},{sy(a.y)}"
                        for a, b in zip(front, front[1:], strict=False))
        path += f" {sx(front[-1].x)},{sy(front[-1].y)}"
        out.append(f'<polyline points="{path}" fill="none" stroke="{_COLORS["front"]}" '
                   'stroke-width="1"/>')
    order = {"front": 0, "candidate": 1, "measured": 2, "chosen": 3, "artifact": 4}
    for p in sorted(points, key=lambda p: order.get(p.kind, 0)):
        color = _COLORS.get(p.kind, "#555")
        title = f"<title>{html.escape(p.label)}: {p.x:.3f} ms, {p.y:.3f} points</title>"
        if p.kind == "artifact":    # the chosen plan at its measured latency: a diamond
            out.append(f'<polygon points="{sx(p.x)},{sy(p.y) - 7} {sx(p.x) + 7},{sy(p.y)} '
                       f'{sx(p.x)},{sy(p.y) + 7} {sx(p.x) - 7},{sy(p.y)}" fill="{color}">'
                       f'{title}</polygon>')
        elif p.kind == "chosen":
            out.append(f'<circle cx="{sx(p.x)}" cy="{sy(p.y)}" r="7" fill="none" '
                       f'stroke="{color}" stroke-width="2.5">{title}</circle>')
        elif p.kind in ("candidate", "measured"):
            s = 4
            if p.kind == "candidate":
                out.append(f'<rect x="{sx(p.x) - s}" y="{sy(p.y) - s}" width="{2 * s}" '
                           f'height="{2 * s}" fill="{color}">{title}</rect>')
            else:
                out.append(f'<polygon points="{sx(p.x)},{sy(p.y) - s - 1} {sx(p.x) - s},'
                           f'{sy(p.y) + s} {sx(p.x) + s},{sy(p.y) + s}" fill="{color}">'
                           f'{title}</polygon>')
        else:
            out.append(f'<circle cx="{sx(p.x)}" cy="{sy(p.y)}" r="3" fill="{color}">{title}'
                       '</circle>')
    legend = [("front", "Pareto front (predicted)"), ("candidate", "other solvers (predicted)"),
              ("measured", "measured accuracy"), ("chosen", "chosen plan"),
              ("artifact", "chosen, measured latency")]
    for i, (kind, text) in enumerate(legend):
        y = top + 14 + i * 15
        out.append(f'<circle cx="{left + pw - 150}" cy="{y - 4}" r="4" '
                   f'fill="{_COLORS[kind]}"/><text x="{left + pw - 140}" y="{y}">{text}</text>')
    out.append("</svg>")
    if left_out:
        out.append(f"<p>{left_out} plan(s) the predictor could not price are not shown.</p>")
    return "\n".join(out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                     for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_report(manifest: dict, points: Sequence[Point], kernel_rows: Sequence[Sequence],
                  candidate_rows: Sequence[Sequence]) -> str:
    """The whole report page from the manifest and the plot/table data."""
    pred, meas = manifest["predicted"], manifest["measured"]
    budgets = manifest.get("budgets", {})
    chosen = _table(["", "latency ms", "energy mJ", "accuracy drop (points)", "accuracy",
                     "model bytes", "peak activation bytes"],
                    [["predicted", pred["latency_ms"], pred["energy_mj"],
                      pred["accuracy_drop"], None, pred["model_bytes"],
                      pred["peak_activation_bytes"]],
                     ["measured", meas.get("latency_ms"), None, meas.get("accuracy_drop"),
                      meas.get("accuracy"), None, None]])
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in manifest.get("warnings", []))
    artifacts = _table(["file", "architecture", "sha256"],
                       [[a["path"], a["arch"], a["sha256"]] for a in manifest["artifacts"]])
    vline = budgets.get("latency_ms")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>fleetc compile: {html.escape(manifest['target'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}</style></head><body>
<h1>fleetc compile - target {html.escape(manifest['target'])}</h1>
<p>Model sha256 {html.escape(manifest['inputs']['model_sha256'])}; calibration data
{html.escape(manifest['inputs']['calib_sha256'] or 'none (synthetic inputs: accuracy unmeasured)')}.
Budgets: {html.escape(_budgets(budgets))}; {html.escape(_met(manifest.get('budget_met')))}.
Objective: {html.escape(manifest.get('objective', ''))}; chosen by
{html.escape(manifest.get('solver', ''))}.</p>
<h2>Chosen plan</h2>{chosen}
<p>Predicted figures come from the target's predictor ({html.escape(manifest.get('predictor',
''))}) and the per-change sensitivity measured on the calibration data; the accuracy is measured
on the calibration data ({html.escape(str(meas.get('metric')))}).</p>
<h2>Pareto front (predicted latency vs predicted accuracy drop)</h2>
{svg_plot(points, "latency (ms): predicted; the diamond is measured", "accuracy drop (points)",
          vline)}
<h2>Candidates</h2>
{_table(["solver", "predicted latency ms", "predicted drop", "measured drop", "feasible"],
        candidate_rows)}
<h2>Per-kernel choices</h2>
{_table(["kernel or block", "op", "MACs", "choice", "predicted latency change ms",
         "predicted drop (points)"], kernel_rows)}
<h2>Warnings</h2><ul>{warnings or "<li>none</li>"}</ul>
<h2>Artifacts</h2>{artifacts}
</body></html>
"""


def _met(met: bool | None) -> str:
    return {True: "latency budget met on the measured latency (5% tolerance)",
            False: "latency budget MISSED on the measured latency (see the warnings)",
            None: "latency budget not checked on a measurement"}[met]


def _budgets(b: dict) -> str:
    parts = [f"{k} {v:g}" for k, v in sorted(b.items()) if v is not None]
    return ", ".join(parts) or "none"
