"""`fleetc compile MODEL --target T [budgets] [--calib data.npz] -o OUTDIR` (docs/compile.md)."""
from __future__ import annotations

import logging

import click

__all__ = ["compile_cmd"]

logger = logging.getLogger(__name__)


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", required=True, help="Target name (see `fleetc targets`).")
@click.option("--latency-ms", type=float, help="Latency budget (predicted), ms.")
@click.option("--energy-mj", type=float, help="Energy budget, mJ (needs an energy model).")
@click.option("--max-accuracy-drop", type=float,
              help="Largest accepted accuracy drop, points (measured on --calib).")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration data (.npz: inputs [, labels]); accuracy is unmeasured without.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the evolutionary search.")
@click.option("--no-measure", is_flag=True, help="Do not time the result (report only).")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(),
              help="Output folder: new, empty or an earlier compile output (replaced "
              "atomically).")
@click.option("--force", is_flag=True,
              help="Replace OUTDIR even if it holds files fleetc did not write (never an input).")
def compile_cmd(model, target, latency_ms, energy_mj, max_accuracy_drop, calib, seed,
                no_measure, outdir, force) -> None:
    """Fit MODEL to TARGET's budgets with the least accuracy loss and build it with TVM."""
    from toolchain.compile.driver import compile_model
    from toolchain.target import load_target

    result = compile_model(model, load_target(target), outdir, latency_ms=latency_ms,
                           energy_mj=energy_mj,
                           max_accuracy_drop=max_accuracy_drop, calib=calib, seed=seed,
                           measure_latency=not no_measure, force=force,
                           progress=lambda msg: click.echo(f"compile: {msg}", err=True))
    m = result.manifest
    p, meas = m["predicted"], m["measured"]
    click.echo(f"target {m['target']}: plan by {m['solver']}, predicted {p['latency_ms']:.3f} ms, "
               f"accuracy drop {meas['accuracy_drop']:.3f} points measured "
               f"({p['accuracy_drop']:.3f} predicted)"
               + (f", measured latency {meas['latency_ms']:.3f} ms" if meas["latency_ms"] else ""))
    for w in m["warnings"]:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"wrote {result.outdir}")
