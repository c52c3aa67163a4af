"""`fleetc compile MODEL --target T [budgets | --plan PLAN.json] [--calib data.npz] -o OUTDIR`
(docs/compile.md)."""
from __future__ import annotations

import json
import logging
import os

import click

__all__ = ["compile_cmd"]

logger = logging.getLogger(__name__)


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", required=True, help="Target name (see `fleetc targets`).")
@click.option("--latency-ms", type=float,
              help="Latency budget, ms: the plan meets it on prediction; the result is timed "
              "where the target runs here and checked (5% tolerance).")
@click.option("--energy-mj", type=float, help="Energy budget, mJ (needs an energy model).")
@click.option("--max-accuracy-drop", type=float,
              help="Largest accepted accuracy drop, points (measured on --calib). Without any "
              "budget: 1 point, at the least latency.")
@click.option("--max-distortion", type=float,
              help="Largest accepted output distortion, percent relative L2 vs fp32 (the "
              "metric when accuracy cannot be measured with --calib).")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration data (.npz: inputs [, labels]); accuracy is unmeasured without.")
@click.option("--plan", "plan", type=click.Path(dir_okay=False),
              help="Build this plan as given (plan.json of `fleetc rewrite`): no search.")
@click.option("--strict", is_flag=True,
              help="A measured latency over --latency-ms (+5%) is an error (exit 3, nothing "
              "written) instead of a warning.")
@click.option("--retry", is_flag=True,
              help="On a measured latency miss, re-plan with the predicted budget tightened by "
              "the measured/predicted ratio (at most 2 times): the plan then depends on timing.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the evolutionary search.")
@click.option("--no-measure", is_flag=True, help="Do not time the result (the latency budget "
              "is then not checked: budget_met null).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the manifest (JSON) on stdout instead of the summary.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(),
              help="Output folder: new, empty or an earlier compile output (replaced "
              "atomically).")
@click.option("--force", is_flag=True,
              help="Replace OUTDIR even if it holds files fleetc did not write (never an input).")
@click.option("--no-calibrate", is_flag=True,
              help="Use the target's predictor package as it is, even if it was measured on "
                   "another CPU (default: calibrate it to this CPU once, about 20 s).")
@click.option("--tune-minutes", type=click.FloatRange(0, 1440, min_open=True), default=None,
              help="Tune the chosen model's TVM workloads this long before the build "
              "(docs/tune.md).")
def compile_cmd(model, target, latency_ms, energy_mj, max_accuracy_drop, max_distortion, calib,
                plan, strict, retry, seed, no_measure, as_json, outdir, force,
                no_calibrate, tune_minutes) -> None:
    """Fit MODEL to TARGET's budgets with the least accuracy loss and build it with TVM."""
    from toolchain.compile.driver import MAX_LATENCY_RETRIES, compile_model
    from toolchain.target import load_target

    if no_calibrate:   # read where the predictor is loaded (toolchain/predict/latency.py)
        os.environ["FLEETC_CALIBRATE"] = "0"

    result = compile_model(model, load_target(target), outdir, latency_ms=latency_ms,
                           energy_mj=energy_mj,
                           max_accuracy_drop=max_accuracy_drop,
                           max_distortion=max_distortion, calib=calib, seed=seed,
                           plan=plan, strict=strict,
                           latency_retries=MAX_LATENCY_RETRIES if retry else 0,
                           measure_latency=not no_measure, force=force,
                           tune_minutes=tune_minutes,
                           progress=lambda msg: click.echo(f"compile: {msg}", err=True))
    m = result.manifest
    for w in m["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        click.echo(f"wrote {result.outdir}", err=True)
        return
    click.echo(_summary(m))
    click.echo(f"wrote {result.outdir}")


def _summary(m: dict) -> str:
    p, meas = m["predicted"], m["measured"]
    predicted_drop = "" if p["accuracy_drop"] is None else \
        f" ({p['accuracy_drop']:.3f} predicted)"
    predicted = "unpriced" if p["latency_ms"] is None else f"{p['latency_ms']:.3f} ms"
    what = ("output distortion {:.3f}% measured" if meas.get("metric") == "distortion" else
            "accuracy drop {:.3f} points measured").format(meas["accuracy_drop"])
    line = (f"target {m['target']}: plan by {m['solver']}, predicted {predicted}, "
            f"{what}{predicted_drop}")
    if meas["latency_ms"] is not None:
        line += f", measured latency {meas['latency_ms']:.3f} ms"
    met = m.get("budget_met")
    if met is not None:
        line += (f", latency budget {m['budgets']['latency_ms']:g} ms "
                 + ("met" if met else "MISSED (see the warning)"))
    return line
