"""`fleetc rewrite MODEL --plan PLAN.json -o OUT.onnx [--calib data.npz] [--target T]`."""
from __future__ import annotations

import logging

import click

from toolchain.compile.rewrite import RewriteResult, rewrite
from toolchain.files import atomic_write, check_output_file

__all__ = ["rewrite_command", "format_costs"]

logger = logging.getLogger(__name__)


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}"


def format_costs(result: RewriteResult) -> str:
    """Per-kernel MACs and parameter bytes before -> after, plus totals."""
    rows = [("kernel", "op", "precision", "MACs before", "MACs after", "param MB before",
             "param MB after")]
    for name, b in result.before.items():
        a = result.after.get(name)
        rows.append((name, b.op_type, f"{b.precision}->{a.precision if a else 'removed'}",
                     str(b.macs), str(a.macs) if a else "0", _mb(b.param_bytes),
                     _mb(a.param_bytes) if a else "0.000"))
    macs = [sum(c.macs for c in d.values()) for d in (result.before, result.after)]
    size = [sum(c.param_bytes for c in d.values()) for d in (result.before, result.after)]
    rows.append(("total", "", "", str(macs[0]), str(macs[1]), _mb(size[0]), _mb(size[1])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    ratio = f"{macs[1] / macs[0]:.3f}" if macs[0] else "n/a"
    lines.append(f"MACs x{ratio}, parameter bytes x"
                 f"{size[1] / size[0]:.3f}" if size[0] else "")
    return "\n".join(lines)


@click.command("rewrite")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--plan", "plan_path", required=True, type=click.Path(path_type=str),
              help="Plan JSON (schema: docs/rewrite.md).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Where to write the rewritten ONNX model (written atomically; never an "
              "input, a folder or a special file).")
@click.option("--calib", type=click.Path(path_type=str), default=None,
              help="Calibration data (.npz: 'inputs' or one key per input, optional 'labels').")
@click.option("--target", "-t", default=None, help="Target whose precisions the plan must respect "
              "(default: the plan's own 'target').")
def rewrite_command(model: str, plan_path: str, output: str, calib: str | None,
                    target: str | None) -> None:
    """Apply a plan to MODEL and write the checked result to OUT.onnx."""
    dest = check_output_file(output, [model, plan_path, calib])
    click.echo(f"rewrite: applying {plan_path} to {model}", err=True)
    from toolchain.target import load_target

    result = rewrite(model, plan_path, calib, load_target(target) if target else None)
    for rec in result.records:
        if rec.changed:
            click.echo(f"rewrite: {rec.name} {rec.seconds:.2f} s {rec.stats}", err=True)
    if result.dropped:
        click.echo(f"rewrite: choices for kernels inside skipped blocks ignored: "
                   f"{', '.join(result.dropped)}", err=True)
    atomic_write(dest, result.model.SerializeToString())
    click.echo(format_costs(result))
    click.echo(f"wrote {output} (checked: onnx.checker, onnxruntime, output shapes)"
               + (" - accuracy UNMEASURED (no --calib)" if result.synthetic_calib else ""))
