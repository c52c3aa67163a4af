"""`fleetc predictor fit|show` and `fleetc predict` (kernel-level latency predictor)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from toolchain.errors import BadInputError
from toolchain.target import load_target

__all__ = ["predictor", "predict_cmd"]

logger = logging.getLogger(__name__)


@click.group("predictor")
def predictor() -> None:
    """Fit and inspect per-target latency predictors."""


@predictor.command("fit")
@click.option("--target", "-t", "target_name", required=True, help="Target name (fleetc targets).")
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False),
              help="Measurement CSV (design,latency_ms); designs are probe names or model "
                   "files next to the CSV.")
@click.option("-o", "--out", default=None, type=click.Path(file_okay=False),
              help="Package folder (default: $FLEETC_HOME/predictors/<target's predictor>).")
def fit_cmd(target_name: str, data: str, out: str | None) -> None:
    """Fit the kernel-level latency predictor of a target on measurements."""
    from toolchain.home import predictors_dir
    from toolchain.measure.records import read_measurements
    from toolchain.predict.kernel import cpu_record, data_hash, fit_rows
    from toolchain.predict.latency import design_units

    target = load_target(target_name)
    rows = read_measurements(data)
    meta = {"name": target.predictor, "target": target.name,
            "training": {"file": Path(data).name, "hash": data_hash(data), "rows": len(rows)}}
    if target.measurable_here:   # measured here (fleetc profile): on this CPU
        meta["cpu"] = cpu_record(target.measure.threads)
    folder = Path(data).resolve().parent

    def progress(i: int, n: int, design: str) -> None:
        if i == 1 or i == n or i % 50 == 0:
            click.echo(f"[{i}/{n}] analyzing {design}", err=True)
    model = fit_rows(rows, lambda d: design_units(d, folder), meta, progress)
    skipped = model.meta["training"]["skipped"]
    if skipped:
        click.echo(f"skipped {len(skipped)} design(s) that are neither probes nor model files: "
                   f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", err=True)
    dest = Path(out) if out else predictors_dir(create=True) / target.predictor
    model.save(dest)
    click.echo(f"{dest}: {_summary(model.meta)}")


def _summary(meta: dict) -> str:
    if "zeroshot" in meta:
        return meta["zeroshot"]["label"]
    h = meta.get("held_out", {})
    if not h.get("folds"):
        return f"fitted on {meta['training']['designs']} designs (too few for held-out error)"
    return (f"fitted on {meta['training']['designs']} designs, {len(meta['kinds'])} kernel "
            f"kinds; held-out ({h['folds']}-fold): median |error| "
            f"{100 * h['median_abs_rel_err']:.1f}%, within 10%: {100 * h['within_10pct']:.0f}%, "
            f"Spearman {h['spearman']:.3f}")


@predictor.command("show")
@click.option("--target", "-t", "target_name", required=True, help="Target name.")
def show_cmd(target_name: str) -> None:
    """Print where a target's predictor is and its metadata."""
    from toolchain.predict.latency import load_predictor, predictor_dir

    target = load_target(target_name)
    model = load_predictor(target)
    click.echo(f"{predictor_dir(target) or 'no package'}: {_summary(model.meta)}")
    click.echo(json.dumps(model.meta, indent=2, sort_keys=True))


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", "target_name", required=True, help="Target name (fleetc targets).")
@click.option("--plan", "plan_path", default=None, type=click.Path(dir_okay=False),
              help="Predict the model rewritten by this plan (plan.json).")
@click.option("--predictor", "package", default=None, type=click.Path(file_okay=False),
              help="Use this predictor package instead of the target's.")
@click.option("--json", "as_json", is_flag=True, help="Print the prediction as JSON.")
@click.option("--strict", is_flag=True,
              help="Fail if any kernel has no model of its kind (priced by the fallback or not "
                   "at all).")
@click.option("--no-calibrate", is_flag=True,
              help="Use the predictor package as it is, even if it was measured on another CPU "
                   "(default: calibrate it to this CPU once, about 20 s).")
def predict_cmd(model: str, target_name: str, plan_path: str | None, package: str | None,
                as_json: bool, strict: bool, no_calibrate: bool) -> None:
    """Predict the latency of MODEL on a target: per kernel and in total."""
    from toolchain.predict.latency import load_predictor, predict_model, predictor_error
    from toolchain.space import Plan

    if not Path(model).is_file():
        raise BadInputError(f"{model}: no such model file")
    target = load_target(target_name)
    predictor = load_predictor(target, package, calibrate=not no_calibrate)
    plan = Plan.load(plan_path) if plan_path else None
    result = predict_model(predictor, model, plan, strict)
    validated = predictor.meta.get("target") == target.name
    estimate = predictor.meta.get("zeroshot")
    energy = target.energy_mj(result.latency_ms)
    if as_json:
        doc = {"model": model, "target": target.name, "plan": plan_path,
               "validated": validated, "latency_estimate": estimate, "energy_mj": energy,
               "predictor_error": predictor_error(predictor.meta),
               "cpu": predictor.meta.get("cpu"), **result.to_json()}
        click.echo(json.dumps(doc, indent=2))
        return
    for k in result.kernels:
        click.echo(f"{k.latency_ms:10.4f} ms  {k.kind:<24} {k.name}"
                   + ("  (fallback: memory-traffic model)" if k.fallback else ""))
    click.echo(f"{result.overhead_ms:10.4f} ms  {'(per-model fixed cost)':<24}")
    for u in result.unknown:
        click.echo(f"{'?':>10}     no model for {u}")
    total = f"total {result.latency_ms:.3f} ms on {target.name}"
    if not estimate:     # a zero-shot estimate's expected error is in its label (below)
        total += f" (predictor error {predictor_error(predictor.meta)})"
    if energy is not None:
        total += f", {energy:.2f} mJ"
    if result.fallback:
        total += (f" ({len(result.fallback)} kernel(s) of kinds never measured priced by the "
                  f"memory-traffic fallback, error {result.fallback_error})")
    if result.unknown:
        total += f" (INCOMPLETE: {len(result.unknown)} kernel(s) without a model not counted)"
    if estimate:
        total += f" ({estimate['label']})"
    elif not validated:
        total += (f" (unvalidated: predictor {predictor.name} was fitted on "
                  f"{predictor.meta.get('target', '?')}, not on measurements of {target.name})")
    click.echo(total)
