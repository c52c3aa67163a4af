"""`fleetc fleet` and `fleetc cache clean`."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import click

from toolchain.fleet.planner import AUTO_DEVICES, PLANNERS
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
              "plan", "status")
    rows = []
    for d, o in zip(fleet.devices, result.outcomes, strict=True):
        s = o.summary or {}
        pred, meas = s.get("predicted", {}), s.get("measured", {})
        budgets = " ".join(f"{k.split('_')[0] if k != 'max_accuracy_drop' else 'drop'}"
                           f"<={v:g}" for k, v in d.budgets().items())
        status = o.status if o.status != "failed" else f"FAILED: {o.error}"
        if s.get("budget_met") is False and o.status != "failed":
            status += "  WARNING: over budget"
        rows.append((d.name, d.target, d.known_by, budgets, _fmt(pred.get("latency_ms")),
                     _fmt(meas.get("latency_ms")), _fmt(meas.get("accuracy_drop")),
                     "-" if s.get("plan_id") is None else str(s["plan_id"]), status))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(8)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    lines = [fmt.format(*r) for r in [header, *rows]]
    lines.append(f"{len(rows)} devices, {len(result.plans)} distinct plans, "
                 f"{len(result.builds)} distinct builds")
    return "\n".join(lines)


class ProgressBar:
    """done/total, rate and ETA on one rewritten line when stderr is a terminal; otherwise a
    plain line per device."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.start = time.monotonic()
        self.shown = False

    def say(self, msg: str) -> None:
        if self.tty and self.shown:
            click.echo("", err=True)
            self.shown = False
        click.echo(f"fleetc: {msg}", err=True)

    def tick(self, done: int, total: int, name: str) -> None:
        if not self.tty:
            click.echo(f"fleetc: [{done}/{total}] {name}", err=True)
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0.0
        filled = int(30 * done / max(total, 1))
        click.echo(f"\rfleetc: [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                   f"{rate:.1f} devices/s ETA {eta:.0f}s ", err=True, nl=False)
        self.shown = True
        if done == total:
            click.echo("", err=True)
            self.shown = False


@click.command("fleet")
@click.argument("fleet_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(),
              help="Output folder: one sub-folder per device plus fleet.json and fleet.html "
              "(new, empty or an earlier fleet output).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Distinct builds made in parallel worker processes.")
@click.option("--executor", metavar="dask://HOST:PORT",
              help="Make the builds on a Dask cluster instead of local processes.")
@click.option("--no-cache", is_flag=True, help="Rebuild every device (the cache is refreshed).")
@click.option("--plan-only", is_flag=True, help="Plan every device and write fleet.json and "
              "fleet.html; no builds, no device folders.")
@click.option("--strict", is_flag=True, help="A device measured (or predicted) over its "
              "budget fails (exit 4) instead of a warning.")
@click.option("--depfile", type=click.Path(),
              help="Write a Make dependency file listing every input the builds read.")
@click.option("--force", is_flag=True, help="Write into OUTDIR and its device folders even if "
              "they hold files fleetc did not write (never an input).")
@click.option("--json", "as_json", is_flag=True,
              help="Print fleet.json on stdout instead of the summary table.")
@click.option("--no-calibrate", is_flag=True,
              help="Use host targets' predictor packages as they are, even if measured on "
                   "another CPU (default: calibrate them to this CPU once, about 20 s each).")
@click.option("--planner", type=click.Choice(PLANNERS), default="fronts", show_default=True,
              help="Add each device's own plan to the candidates: exact (the MILP per device) "
              "or amortized (one network for the fleet); auto: amortized above "
              f"{AUTO_DEVICES} devices, else exact; fronts: none (docs/fleet.md).")
def fleet_command(fleet_file: Path, outdir: str, jobs: int, executor: str | None,
                  no_cache: bool, plan_only: bool, strict: bool, depfile: str | None,
                  force: bool, as_json: bool, no_calibrate: bool, planner: str) -> None:
    """Build every device of FLEET_FILE (TOML, see docs/fleet.md): shared work once, one plan
    pick per device, one build per distinct plan and target, unchanged devices from the cache.
    Exit 4 if any device failed."""
    if no_calibrate:   # read where predictors are loaded, also in worker processes
        os.environ["FLEETC_CALIBRATE"] = "0"
    fleet = load_fleet(fleet_file)
    check_output(fleet, outdir, force)      # before any work, as is the depfile's
    if depfile is not None:
        check_depfile(fleet, outdir, depfile)
    bar = ProgressBar(sys.stderr.isatty())
    result = run_fleet(fleet, outdir, jobs=jobs, executor=executor, use_cache=not no_cache,
                       progress=bar.say, force=force, plan_only=plan_only, strict=strict,
                       tick=bar.tick, planner=planner)
    if depfile is not None:
        write_depfile(fleet, Path(outdir), depfile)
    for w in sorted({w for o in result.outcomes for w in (o.summary or {}).get("warnings", [])}):
        click.echo(f"warning: {w}", err=True)      # once, however many devices share it
    if as_json:
        click.echo((Path(outdir) / "fleet.json").read_text().rstrip("\n"))
    else:
        click.echo(summary_table(result, fleet))
        click.echo(f"wrote {Path(outdir) / 'fleet.json'} and {Path(outdir) / 'fleet.html'}")
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
