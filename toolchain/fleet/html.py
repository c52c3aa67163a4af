"""fleet.html: one self-contained page per fleet run (no scripts, no external URLs).

The device table (target, how it is known, budgets, predicted and measured latency, accuracy
drop, the devices sharing its build, status), an inline SVG plot of each device's latency
budget against its predicted (and measured) latency with the line latency = budget, and the
distinct plans with their devices."""
from __future__ import annotations

import html
import math
from pathlib import Path

from toolchain.files import atomic_write

__all__ = ["write_fleet_html", "render_fleet_html"]

_STYLE = """body{font-family:sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#eee}.over{background:#fde2e2}.failed{background:#f8c8c8}
.ok{color:#2a7a2a}.bad{color:#b00020;font-weight:bold}"""


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _plot(rows: list[dict], width: int = 640, height: int = 420) -> str:
    """Budget (x) vs predicted (blue dots) and measured (orange squares) latency (y)."""
    pts = [(r["budget"], r["pred"], r["meas"]) for r in rows if r["budget"] is not None
           and r["pred"] is not None]
    if not pts:
        return "<p>(no device with a latency budget and a prediction)</p>"
    vals = [v for p in pts for v in p if v is not None]
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or 1.0
    lo, hi = max(0.0, lo - pad), hi + pad
    left, top, right, bottom = 60, 20, 20, 45
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return round(left + (v - lo) / (hi - lo) * pw, 2)

    def sy(v: float) -> float:
        return round(top + (1 - (v - lo) / (hi - lo)) * ph, 2)

    out = [f'<svg width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="white" stroke="#888"/>',
           f'<line x1="{sx(lo)}" y1="{sy(lo)}" x2="{sx(hi)}" y2="{sy(hi)}" stroke="#d62728" '
           'stroke-dasharray="5,4"/>']
    step = 10 ** math.floor(math.log10((hi - lo) / 4)) if hi > lo else 1.0
    while (hi - lo) / step > 8:
        step *= 2
    t = math.ceil(lo / step) * step
    while t <= hi:
        out.append(f'<text x="{sx(t)}" y="{top + ph + 15}" text-anchor="middle">{t:g}</text>'
                   f'<text x="{left - 5}" y="{sy(t) + 4}" text-anchor="end">{t:g}</text>')
        t += step
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">latency '
               'budget (ms)</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 '
               f'{top + ph / 2})">latency (ms): predicted (dot), measured (square)</text>')
    for budget, pred, meas in pts:
        out.append(f'<circle cx="{sx(budget)}" cy="{sy(pred)}" r="3" fill="#1f77b4"/>')
        if meas is not None:
            out.append(f'<rect x="{sx(budget) - 3}" y="{sy(meas) - 3}" width="6" height="6" '
                       'fill="none" stroke="#ff7f0e"/>')
    out.append("</svg>")
    return "\n".join(out)


def _rows(fleet, result) -> list[dict]:
    rows = []
    for d, o in zip(fleet.devices, result.outcomes, strict=True):
        s = o.summary or {}
        pred, meas = s.get("predicted") or {}, s.get("measured") or {}
        rows.append({"name": d.name, "target": d.target, "known_by": d.known_by,
                     "budgets": d.budgets(), "budget": d.latency_ms,
                     "pred": pred.get("latency_ms"), "meas": meas.get("latency_ms"),
                     "drop": meas.get("accuracy_drop"), "met": s.get("budget_met"),
                     "plan": s.get("plan_id"), "sharing": s.get("shares_build_with") or [],
                     "status": o.status, "error": o.error})
    return rows


def render_fleet_html(fleet, result) -> str:
    rows = _rows(fleet, result)
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>fleetc fleet: {e(fleet.path.name)}</title><style>{_STYLE}</style></head>",
           "<body>", f"<h1>Fleet {e(fleet.path.name)}</h1>",
           f"<p>Model {e(fleet.model.name)}; {len(rows)} devices, "
           f"{len(result.plans)} distinct plans, {len(result.builds)} distinct builds.</p>",
           "<h2>Latency budget vs latency</h2>", _plot(rows),
           "<h2>Devices</h2>", '<table id="devices"><tr><th>device</th><th>target</th>'
           "<th>known by</th><th>budgets</th><th>predicted ms</th><th>measured ms</th>"
           "<th>accuracy drop</th><th>plan</th><th>shares its build with</th><th>status</th>"
           "</tr>"]
    for r in rows:
        cls = "failed" if r["status"] == "failed" else "over" if r["met"] is False else ""
        budgets = ", ".join(f"{k} {v:g}" for k, v in r["budgets"].items())
        status = e(r["status"]) + (f": {e(r['error'])}" if r["error"] else "")
        if r["met"] is False:
            status += ' <span class="bad">OVER BUDGET</span>'
        sharing = ", ".join(r["sharing"][:8]) + (" ..." if len(r["sharing"]) > 8 else "")
        out.append(f'<tr class="{cls}"><td>{e(r["name"])}</td><td>{e(r["target"])}</td>'
                   f"<td>{e(r['known_by'])}</td><td>{e(budgets)}</td>"
                   f"<td>{_fmt(r['pred'])}</td><td>{_fmt(r['meas'])}</td>"
                   f"<td>{_fmt(r['drop'])}</td><td>{_fmt(r['plan'])}</td>"
                   f"<td>{e(sharing) or '-'}</td><td>{status}</td></tr>")
    out.append("</table><h2>Distinct plans</h2>"
               '<table id="plans"><tr><th>plan</th><th>changes</th><th>predicted drop</th>'
               "<th>measured drop</th><th>devices</th></tr>")
    for p in result.plans:
        plan = p["plan"]
        changes = len(plan.get("kernels", {})) + len(plan.get("skip_blocks", []))
        res = "".join(f" input {v[2]}x{v[3]}" for v in plan.get("input_shape", {}).values())
        out.append(f"<tr><td>{p['id']}</td><td>{changes} kernel/block change(s){e(res)}</td>"
                   f"<td>{_fmt(p['predicted_accuracy_drop'])}</td>"
                   f"<td>{_fmt(p['measured_accuracy_drop'])}</td>"
                   f"<td>{len(p['devices'])}: {e(', '.join(p['devices'][:12]))}"
                   f"{' ...' if len(p['devices']) > 12 else ''}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"


def write_fleet_html(fleet, result, path: Path) -> None:
    atomic_write(path, render_fleet_html(fleet, result))
