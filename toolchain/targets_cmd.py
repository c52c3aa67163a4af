"""`fleetc targets` (list) and `fleetc targets show NAME`. Other modules add subcommands to
the `targets` group (e.g. `targets calibrate`)."""
from __future__ import annotations

import json
import logging

import click

from toolchain.cli import cli
from toolchain.target import Target, list_targets, load_target

__all__ = ["targets", "describe"]

logger = logging.getLogger(__name__)


@cli.group(invoke_without_command=True)
@click.pass_context
def targets(ctx: click.Context) -> None:
    """List the known targets (built-in and under $FLEETC_HOME/targets)."""
    if ctx.invoked_subcommand is not None:
        return
    for name in list_targets():
        target = load_target(name)
        where = "here" if target.measurable_here else f"rpc:{target.measure.rpc_key}"
        click.echo(f"{name:<18} {target.measure.kind:<10} {where:<20} {target.description}")


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the target as JSON.")
def show(name: str, as_json: bool) -> None:
    """Print one target: TVM target, precisions, measurement, features, predictor."""
    target = load_target(name)
    text = json.dumps(describe(target), indent=2) if as_json else _text(target)
    click.echo(text)


def describe(target: Target) -> dict:
    """A JSON-ready view of a target."""
    m = target.measure
    return {
        "name": target.name, "description": target.description, "source": target.source,
        "tvm_target": target.tvm_target, "precisions": list(target.precisions),
        "measure": {"kind": m.kind, "threads": m.threads, "rpc_key": m.rpc_key,
                    "tracker": m.tracker, "timeout_s": m.timeout_s},
        "measurable_here": target.measurable_here, "predictor": target.predictor,
        "cross_compiler": target.cross_compiler, "power_w": target.power_w,
        "features": target.features,
    }


def _text(target: Target) -> str:
    lines = []
    for key, value in describe(target).items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {json.dumps(v)}" for k, v in value.items() if v is not None]
        elif value is not None:
            lines.append(f"{key}: {value if isinstance(value, str) else json.dumps(value)}")
    return "\n".join(lines)
