"""`fleetc fleet`: every device of a fleet in one run, cached, in parallel, on a cluster.

Flow: the shared work (import, kernels, design space, fp32 score and the per-change accuracy
sensitivity, measured once and kept in the on-disk cache) is done first, once; then every
device that is not already in the build cache is optimized, rewritten and built by
`toolchain.compile.driver.compile_model` - in this process (`--jobs 1`), in worker processes
(`--jobs N`) or on a Dask cluster (`--executor dask://HOST:PORT`). A device that fails is
reported and the others are still built (exit 4).

Build cache: see `toolchain.fleet.cache`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.errors import BadInputError, FleetcError, PartialFailureError
from toolchain.files import (
    OUTPUT_MARKER,
    atomic_write,
    check_output_dir,
    check_output_file,
    output_kind,
    sha256_file,
    write_output_marker,
)
from toolchain.fleet.cache import (
    build_folder,
    device_key,
    entry_dir,
    install,
    install_cached,
    publish,
    sweep,
)
from toolchain.fleet.pool import Pool
from toolchain.fleet.spec import FLEET_JSON_VERSION, Device, Fleet
from toolchain.target import measurable_targets

__all__ = ["run_fleet", "FleetResult", "DeviceOutcome", "write_depfile", "raise_if_failed",
           "build_device", "check_output", "check_depfile"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DeviceOutcome:
    name: str
    status: str                 # "built" | "cached" | "failed"
    seconds: float
    key: str
    error: str | None = None
    summary: dict | None = None  # from the device's manifest.json


@dataclass(frozen=True)
class FleetResult:
    outdir: Path
    outcomes: tuple[DeviceOutcome, ...]

    @property
    def failed(self) -> list[DeviceOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _job(fleet: Fleet, device: Device, key: str, prepared=None) -> dict:
    return {"model": str(fleet.model), "calib": str(fleet.calib) if fleet.calib else None,
            "device": device, "target": fleet.targets[device.target],
            "proxy": fleet.targets[device.proxy] if device.proxy else None, "key": key,
            "home": os.environ.get("FLEETC_HOME"), "prepared": prepared}


def _cost_for(job: dict, prep):
    """(cost function, predictor name, warnings) for devices not profiled here; a None cost
    means the target's own predictor."""
    device: Device = job["device"]
    if device.known_by == "fewshot":
        from toolchain.fleet.pricing import fewshot_cost

        return fewshot_cost(device, job["target"], job["proxy"], prep)
    if device.known_by == "fingerprint":
        from toolchain.fleet.pricing import fingerprint_cost

        return fingerprint_cost(device, job["target"], prep)
    return None, None, []


def build_device(job: dict) -> DeviceOutcome:
    """Build one device into the cache (top level: runs in workers and on Dask). The build
    runs in a `.build-<pid>-*` folder of the cache, removed however it ends; the finished
    folder becomes the cache entry by rename (`toolchain.fleet.cache`)."""
    from toolchain.compile.driver import compile_model, prepare

    if job.get("home"):
        os.environ["FLEETC_HOME"] = job["home"]
    device: Device = job["device"]
    start = time.perf_counter()
    try:
        prep = job["prepared"] or prepare(job["model"], job["calib"])
        cost, predictor_name, warnings = _cost_for(job, prep)
        with build_folder() as tmp:
            out = tmp / "out"
            compile_model(prep, job["target"], out, cost=cost, predictor_name=predictor_name,
                          warnings=warnings, **device.budgets())
            summary = _summary(out)
            publish(out, job["key"], tmp)
        return DeviceOutcome(device.name, "built", time.perf_counter() - start, job["key"],
                             summary=summary)
    except FleetcError as err:
        return DeviceOutcome(device.name, "failed", time.perf_counter() - start, job["key"],
                             error=str(err))
    except Exception as err:  # one broken device must not stop the fleet
        logger.debug("device %s failed", device.name, exc_info=True)
        return DeviceOutcome(device.name, "failed", time.perf_counter() - start, job["key"],
                             error=f"internal error: {type(err).__name__}: {err}")


def _summary(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"predicted": manifest.get("predicted", {}), "measured": manifest.get("measured", {}),
            "warnings": manifest.get("warnings", []),
            "artifacts": [a.get("path") for a in manifest.get("artifacts", [])]}


def _shared_work(fleet: Fleet, todo: list[Device], say: Progress):
    """Import, analysis and sensitivity once, before any device is dispatched."""
    from toolchain.compile.driver import prepare

    say(f"shared work: importing {fleet.model.name} and measuring accuracy sensitivity")
    prep = prepare(fleet.model, fleet.calib, progress=say)
    for precisions in sorted({fleet.targets[d.target].precisions for d in todo}):
        prep.sensitivity(precisions, say)
    return prep


def run_fleet(fleet: Fleet, outdir: str | Path, *, jobs: int = 1, executor: str | None = None,
              use_cache: bool = True, progress: Progress | None = None,
              force: bool = False) -> FleetResult:
    """Build every device into OUTDIR/<name>/ and write OUTDIR/fleet.json (module doc). The
    folders follow the output folder rule (`check_output`) before any work; `force` lets
    folders fleetc did not write be written. A run that raises (bad input found during the
    shared work, Ctrl-C) leaves an OUTDIR that was missing or empty as it found it."""
    say = progress or (lambda msg: None)
    outdir = Path(outdir)
    dests = check_output(fleet, outdir, force)
    fresh = _fresh(outdir)
    try:
        return _run(fleet, outdir, dests, jobs, executor, use_cache, say)
    except BaseException:
        if fresh is not None:
            _restore(outdir, fresh, dests)
        raise


def _run(fleet: Fleet, outdir: Path, dests: dict[str, Path], jobs: int, executor: str | None,
         use_cache: bool, say: Progress) -> FleetResult:
    """run_fleet after the output check (OUTDIR is made at the start)."""
    _open_output(outdir, dests, say)
    model_sha = sha256_file(fleet.model)
    calib_sha = sha256_file(fleet.calib) if fleet.calib else None
    measurable = measurable_targets()
    memo: dict = {}     # each input file hashed once in this run
    keys = {d.name: device_key(fleet, d, model_sha, calib_sha, measurable, memo)
            for d in fleet.devices}
    sweep()
    outcomes: dict[str, DeviceOutcome] = {}
    todo = []
    for d in fleet.devices:
        if use_cache and install_cached(d.name, keys[d.name], dests[d.name]):
            outcomes[d.name] = DeviceOutcome(d.name, "cached", 0.0, keys[d.name],
                                             summary=_summary(dests[d.name]))
            say(f"[{len(outcomes)}/{len(fleet.devices)}] {d.name}: up to date (cache)")
        else:
            todo.append(d)
    if todo:
        pool = Pool(build_device, jobs, executor)
        try:
            prep = _shared_work(fleet, todo, say)
            shared = prep if pool.in_process else None
            say(f"building {len(todo)} device(s) ({_where(jobs, executor)})")
            jobs_ = [_job(fleet, d, keys[d.name], shared) for d in todo]
            for outcome in pool.run(jobs_):
                if outcome.status == "built":
                    outcome = _install_built(outcome, dests[outcome.name])
                outcomes[outcome.name] = outcome
                if outcome.status == "built":
                    state = f"built in {outcome.seconds:.1f}s"
                else:
                    state = f"FAILED: {outcome.error}"
                say(f"[{len(outcomes)}/{len(fleet.devices)}] {outcome.name}: {state}")
        finally:
            pool.close()
    ordered = tuple(outcomes[d.name] for d in fleet.devices)
    result = FleetResult(outdir, ordered)
    _write_fleet_json(fleet, result, model_sha, calib_sha)
    return result


def _install_built(outcome: DeviceOutcome, dest: Path) -> DeviceOutcome:
    """Copy a device just built from its cache entry; an entry that no longer checks out
    (damaged in between) fails the device rather than install it."""
    problem = install(entry_dir(outcome.key), dest)
    if problem is None:
        return outcome
    return replace(outcome, status="failed", error=f"its fresh cache entry is damaged: {problem}")


def _where(jobs: int, executor: str | None) -> str:
    if executor:
        return f"on {executor}"
    return "in this process" if jobs <= 1 else f"{jobs} worker processes"


def _write_fleet_json(fleet: Fleet, result: FleetResult, model_sha: str,
                      calib_sha: str | None) -> None:
    devices = []
    for d, o in zip(fleet.devices, result.outcomes, strict=True):
        devices.append({"name": d.name, "target": d.target, "known_by": d.known_by,
                        "budgets": d.budgets(), "status": o.status, "error": o.error,
                        "seconds": round(o.seconds, 3), "cache_key": o.key,
                        "outdir": d.name if o.status != "failed" else None,
                        **(o.summary or {})})
    doc = {"version": FLEET_JSON_VERSION, "fleet": str(fleet.path),
           "inputs": {"model": str(fleet.model), "model_sha256": model_sha,
                      "calib": str(fleet.calib) if fleet.calib else None,
                      "calib_sha256": calib_sha},
           "devices": devices,
           "summary": {s: sum(1 for o in result.outcomes if o.status == s)
                       for s in ("built", "cached", "failed")}}
    atomic_write(result.outdir / "fleet.json", json.dumps(doc, indent=2) + "\n")


def check_output(fleet: Fleet, outdir: str | Path, force: bool = False) -> dict[str, Path]:
    """The output folder rule (`toolchain.files.check_output_dir`) for OUTDIR (a "fleet"
    output) and for each device's folder in it (a "compile" output): where each device's
    folder is to be written (a symlinked one is followed). A BadInputError before any work."""
    inputs = fleet.inputs()
    check_output_dir(outdir, inputs, "fleet", force)
    return {d.name: check_output_dir(Path(outdir) / d.name, inputs, "compile", force)
            for d in fleet.devices}


def _open_output(outdir: Path, dests: dict[str, Path], say: Progress) -> None:
    """Make and mark OUTDIR (checked), and list the folders of devices no longer in the fleet:
    they are kept."""
    outdir.mkdir(parents=True, exist_ok=True)
    write_output_marker(outdir, "fleet")
    gone = [p.name for p in sorted(outdir.iterdir()) if p.name not in dests
            and not p.name.startswith(".") and p.is_dir() and output_kind(p) == "compile"]
    if gone:
        say(f"kept the folders of {len(gone)} device(s) no longer in the fleet (fleetc never "
            f"deletes them): {', '.join(gone)}")


def _fresh(outdir: Path) -> str | None:
    """"missing" or "empty" when OUTDIR is (a failed run puts it back so), else None."""
    if not os.path.lexists(outdir):
        return "missing"
    return "empty" if outdir.is_dir() and not any(outdir.iterdir()) else None


def _restore(outdir: Path, fresh: str, dests: dict[str, Path]) -> None:
    """Take back what this run put in an OUTDIR that was missing or empty - the marker and
    the device folders, nothing else - and remove a missing one if that empties it."""
    (outdir / OUTPUT_MARKER).unlink(missing_ok=True)
    for dest in dests.values():
        shutil.rmtree(dest, ignore_errors=True)
    if fresh == "missing":
        with contextlib.suppress(OSError):
            outdir.rmdir()


def check_depfile(fleet: Fleet, outdir: str | Path, path: str | Path) -> Path:
    """Where `--depfile` may be written: the output file rule (never an input, a folder or a
    special file: `toolchain.files.check_output_file`), and not a file the run writes itself
    (OUTDIR, its fleet.json or marker, anything in a device's folder)."""
    dest = check_output_file(path, fleet.inputs())
    top = Path(outdir).resolve()
    own = {top, top / "fleet.json", top / OUTPUT_MARKER}
    if dest in own or any(top / d.name in (dest, *dest.parents) for d in fleet.devices):
        raise BadInputError(f"{path}: the depfile would overwrite the run's own output in "
                            f"{outdir}; put it beside the folder or directly in it")
    return dest


def write_depfile(fleet: Fleet, outdir: Path, path: Path) -> None:
    """Make dependency format: the fleet's output depends on every file it read
    (`check_depfile` says where it may go)."""
    def esc(p: Path) -> str:
        return str(p).replace(" ", "\\ ")
    dest = check_depfile(fleet, outdir, path)
    target = esc(outdir / "fleet.json")
    deps = " \\\n  ".join(esc(p) for p in fleet.inputs())
    atomic_write(dest, f"{target}: \\\n  {deps}\n")


def raise_if_failed(result: FleetResult) -> None:
    if result.failed:
        names = ", ".join(f"{o.name} ({o.error})" for o in result.failed)
        raise PartialFailureError(f"{len(result.failed)} of {len(result.outcomes)} devices "
                                  f"failed: {names}")

