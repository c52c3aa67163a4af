"""`fleetc fleet` and `fleetc cache clean`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from toolchain.fleet.run import (
    check_depfile,
    check_output,
    raise_if_failed,
    run_fleet,
    write_depfile,
)
from toolchain.fleet.spec import load_fleet
from toolchain.home import cache_dir

__all__ = ["fleet_command", "cache_group"]


def _fmt(value, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3g}{unit}"


def summary_table(result, fleet) -> str:
    header = ("device", "target", "known by", "budgets", "pred ms", "meas ms", "acc drop",
              "status")
    rows = []
    for d, o in zip(fleet.devices, result.outcomes, strict=True):
        s = o.summary or {}
        pred, meas = s.get("predicted", {}), s.get("measured", {})
        budgets = " ".join(f"{k.split('_')[0] if k != 'max_accuracy_drop' else 'drop'}"
                           f"<={v:g}" for k, v in d.budgets().items())
        rows.append((d.name, d.target, d.known_by, budgets, _fmt(pred.get("latency_ms")),
                     _fmt(meas.get("latency_ms")), _fmt(meas.get("accuracy_drop")),
                     o.status if o.status != "failed" else f"FAILED: {o.error}"))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(7)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*r) for r in [header, *rows])


@click.command("fleet")
@click.argument("fleet_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(),
              help="Output folder: one sub-folder per device plus fleet.json (new, empty or an "
              "earlier fleet output).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Devices built in parallel worker processes.")
@click.option("--executor", metavar="dask://HOST:PORT",
              help="Build the devices on a Dask cluster instead of local processes.")
@click.option("--no-cache", is_flag=True, help="Rebuild every device (the cache is refreshed).")
@click.option("--depfile", type=click.Path(),
              help="Write a Make dependency file listing every input the builds read.")
@click.option("--force", is_flag=True, help="Write into OUTDIR and its device folders even if "
              "they hold files fleetc did not write (never an input).")
@click.option("--json", "as_json", is_flag=True,
              help="Print fleet.json on stdout instead of the summary table.")
@click.option("--no-calibrate", is_flag=True,
              help="Use host targets' predictor packages as they are, even if measured on "
                   "another CPU (default: calibrate them to this CPU once, about 20 s each).")
def fleet_command(fleet_file: Path, outdir: str, jobs: int, executor: str | None,
                  no_cache: bool, depfile: str | None, force: bool, as_json: bool,
                  no_calibrate: bool) -> None:
    """Build every device of FLEET_FILE (TOML, see docs/fleet.md): shared work once, unchanged
    devices from the cache, the rest in parallel. Exit 4 if any device failed."""
    if no_calibrate:   # read where predictors are loaded, also in worker processes
        os.environ["FLEETC_CALIBRATE"] = "0"
    fleet = load_fleet(fleet_file)
    check_output(fleet, outdir, force)      # before any work, as is the depfile's
    if depfile is not None:
        check_depfile(fleet, outdir, depfile)
    say = lambda msg: click.echo(f"fleetc: {msg}", err=True)  # noqa: E731
    result = run_fleet(fleet, outdir, jobs=jobs, executor=executor, use_cache=not no_cache,
                       progress=say, force=force)
    if depfile is not None:
        write_depfile(fleet, Path(outdir), depfile)
    for w in sorted({w for o in result.outcomes for w in (o.summary or {}).get("warnings", [])}):
        click.echo(f"warning: {w}", err=True)      # once, however many devices share it
    if as_json:
        click.echo((Path(outdir) / "fleet.json").read_text().rstrip("\n"))
    else:
        click.echo(summary_table(result, fleet))
    raise_if_failed(result)


@click.group("cache")
def cache_group() -> None:
    """The build cache under $FLEETC_HOME/cache."""


@cache_group.command("clean")
def cache_clean() -> None:
    """Delete every cached build and measurement."""
    root = cache_dir()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0
    shutil.rmtree(root, ignore_errors=True)
    click.echo(f"removed {root} ({size / 1e6:.1f} MB)")
