"""`fleetc tune MODEL --target T [--plan PLAN.json] (--minutes N | --trials N)`."""
from __future__ import annotations

import click

__all__ = ["tune_command"]


@click.command("tune")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--target", "-t", required=True, help="Target name (see `fleetc targets`).")
@click.option("--plan", "plan_path", type=click.Path(path_type=str), default=None,
              help="Tune the model as this plan rewrites it (plan JSON, docs/rewrite.md).")
@click.option("--calib", type=click.Path(path_type=str), default=None,
              help="Calibration data for a plan that quantizes (.npz; default: random data).")
@click.option("--minutes", type=float, default=None, help="Tuning time (wall clock).")
@click.option("--trials", type=int, default=None, help="Candidates to measure in all.")
@click.option("--retune", is_flag=True,
              help="Also tune workloads the database already has records for.")
@click.option("--tracker", default=None,
              help="HOST:PORT of the TVM RPC tracker for an RPC target (default: the "
              "target's, else $FLEETC_TRACKER, else 127.0.0.1:9190).")
def tune_command(model: str, target: str, plan_path: str | None, calib: str | None,
                 minutes: float | None, trials: int | None, retune: bool,
                 tracker: str | None) -> None:
    """Tune MODEL's TVM workloads for a target with MetaSchedule; records go to the target's
    database under $FLEETC_HOME/tuning/, which every later build for the same code-generation
    target applies (docs/tune.md)."""
    if (minutes is None) == (trials is None):
        raise click.UsageError("give one of --minutes and --trials")
    if (minutes is not None and not 0 < minutes <= 24 * 60) or \
            (trials is not None and not 0 < trials <= 10 ** 6):
        raise click.UsageError("--minutes must be in (0, 1440], --trials in [1, 1000000]")
    from passes.import_onnx import load_model
    from toolchain.compile.rewrite import rewrite
    from toolchain.measure.tuning import tune_model
    from toolchain.target import load_target

    tgt = load_target(target)
    proto = rewrite(model, plan_path, calib, tgt).model if plan_path else load_model(model)
    result = tune_model(proto, tgt, trials=trials, minutes=minutes, retune=retune,
                        tracker=tracker, progress=lambda line: click.echo(f"tune: {line}",
                                                                          err=True))
    click.echo(f"{result.workloads} workloads: {result.reused} from the database, "
               f"{result.tuned} tuned ({result.trials} trials, {result.failed} failed, "
               f"cost model {result.cost_model}) in {result.seconds:.0f} s")
    click.echo(f"database: {result.database}")
