"""`fleetc targets` (list), `fleetc targets show NAME` and `fleetc targets calibrate`.

`fleetc targets calibrate T --proxy P --measurements few.csv`: approach 1 for a new device.

The target's predictor package is written from the proxy's (fitted with `fleetc predictor fit`)
and a few measured designs on the target (probe names of `fleetc probe`, or model files next to
the CSV), through `toolchain.predict.transfer.calibrate_kernel_predictor`. `fleetc compile
--target T` and `fleetc predict` then find it under `$FLEETC_HOME/predictors/<T's predictor>`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from toolchain.errors import BadInputError
from toolchain.target import Target, list_targets, load_target

__all__ = ["targets", "describe", "calibrate_cmd"]

logger = logging.getLogger(__name__)


@click.group(invoke_without_command=True)
@click.pass_context
def targets(ctx: click.Context) -> None:
    """List the known targets (built-in and under $FLEETC_HOME/targets); a broken target file
    is listed as BROKEN with its first problem, the others as usual."""
    if ctx.invoked_subcommand is not None:
        return
    zeroshot = False
    for name in list_targets():
        try:
            target = load_target(name)
        except BadInputError as err:
            click.echo(f"{name[:64]:<18} BROKEN     {str(err)[:160]}")
            continue
        where = "here" if target.measurable_here else f"rpc:{target.measure.rpc_key}"
        latency = _latency_source(target)
        zeroshot |= latency == "ZERO-SHOT"
        click.echo(f"{name:<18} {target.measure.kind:<10} {where:<20} {latency:<10} "
                   f"{target.description}")
    if zeroshot:
        from toolchain.predict.zeroshot import estimate_record, load_model

        click.echo(f"ZERO-SHOT: {estimate_record(load_model())['label']}")


def _latency_source(target: Target) -> str:
    """Where latency predictions come from: "package" (fitted or calibrated), "ZERO-SHOT"
    (toolchain.predict.zeroshot) or "none"."""
    from toolchain.predict.latency import predictor_dir
    from toolchain.predict.zeroshot import estimate_for

    if predictor_dir(target) is not None:
        return "package"
    return "ZERO-SHOT" if estimate_for(target) is not None else "none"


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


@targets.command("calibrate")
@click.argument("target_name")
@click.option("--proxy", "proxy_name", required=True,
              help="Proxy target whose predictor is reused (it must have one).")
@click.option("--measurements", required=True, type=click.Path(dir_okay=False),
              help="CSV design,latency_ms[,energy_mj] measured on the target (K designs).")
@click.option("-o", "--out", default=None, type=click.Path(file_okay=False),
              help="Package folder (default: $FLEETC_HOME/predictors/<target's predictor>).")
def calibrate_cmd(target_name: str, proxy_name: str, measurements: str, out: str | None) -> None:
    """Calibrate the PROXY's latency predictor for TARGET from a few measurements."""
    from toolchain.home import predictors_dir
    from toolchain.measure.records import read_measurements
    from toolchain.predict.kernel import data_hash, measured_units
    from toolchain.predict.latency import design_units, load_predictor
    from toolchain.predict.transfer import calibrate_kernel_predictor
    from toolchain.target import load_target

    target, proxy_target = load_target(target_name), load_target(proxy_name)
    if target.name == proxy_target.name:
        raise BadInputError("the target and the proxy are the same target")
    proxy = load_predictor(proxy_target, calibrate=False)   # the map to the target rescales it
    rows = read_measurements(measurements)
    folder = Path(measurements).resolve().parent
    designs, latency, unknown = measured_units(rows, lambda design: design_units(design, folder))
    if unknown:
        click.echo(f"skipped {len(unknown)} design(s) that are neither probes nor model files: "
                   f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}", err=True)
    meta = {"name": target.predictor, "target": target.name,
            "training": {"file": Path(measurements).name, "hash": data_hash(measurements),
                         "rows": len(rows), "skipped": unknown}}
    model, tr = calibrate_kernel_predictor(proxy, designs, latency, meta)
    dest = Path(out) if out else predictors_dir(create=True) / target.predictor
    model.save(dest)
    cal = model.meta["calibration"]
    click.echo(f"{dest}: {tr.path} from {proxy.name} with {cal['samples']} designs; "
               f"{tr.reason}; leave-one-out error {100 * tr.sigma:.1f}% (log rms)")
    if cal["skipped"]:
        click.echo(f"{len(cal['skipped'])} design(s) had kernels the proxy cannot price, e.g. "
                   f"{cal['skipped'][0]}: left out", err=True)
