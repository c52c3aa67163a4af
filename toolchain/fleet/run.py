"""`fleetc fleet`: every device of a fleet in one run - shared work once, one plan pick per
device, accuracy once per distinct plan, one TVM build per distinct (plan, TVM target).

Phases (their seconds are in fleet.json):
1. keys: each device's cache key (`toolchain.fleet.cache`); devices whose folder is cached are
   installed at once.
2. shared: import, analysis, fp32 score and the accuracy sensitivity (kept in the on-disk
   cache), once; then every other device's predictor (its target's package, few-shot
   calibration or fingerprint mix).
3. plan: the fleet-wide candidate plans and each device's pick, accuracy measured once per
   distinct plan (`toolchain.fleet.plan`).
4. build: one TVM build per distinct (plan, TVM target) not in the build cache - in this
   process (`--jobs 1`), in worker processes that received the model and calibration data
   once (`--jobs N`), or on Dask (the same state scattered once per worker).
5. timing: latency of each distinct build on a target measurable here, one at a time, after
   every build has finished (nothing else of the run uses the CPU meanwhile).
6. devices: each device's folder (the layout of `fleetc compile`) - the build's files
   copied from the build cache, its own plan.json, manifest.json (with `budget_met`) and
   report.html - published to the device cache and installed in OUTDIR.
A device that fails is reported and the others are still built (exit 4). `plan_only` stops
after phase 3 (fleet.json lists the plans; no folders).

Build cache: see `toolchain.fleet.cache`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.compile.output import BUDGET_TOLERANCE
from toolchain.errors import BadInputError, PartialFailureError
from toolchain.files import (
    OUTPUT_MARKER,
    atomic_write,
    check_output_dir,
    check_output_file,
    output_kind,
    sha256_file,
    tool_versions,
    write_output_marker,
)
from toolchain.fleet.cache import (
    _source_digest,
    build_folder,
    device_key,
    entry_dir,
    install,
    install_cached,
    publish,
    sweep,
    tuning_digest,
)
from toolchain.fleet.pool import Pool
from toolchain.fleet.spec import FLEET_JSON_VERSION, Device, Fleet, canonical
from toolchain.target import measurable_targets

__all__ = ["run_fleet", "FleetResult", "DeviceOutcome", "write_depfile", "raise_if_failed",
           "build_plan", "check_output", "check_depfile"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
Tick = Callable[[int, int, str], None]


@dataclass(frozen=True)
class DeviceOutcome:
    name: str
    status: str                 # "built" | "cached" | "planned" | "failed"
    seconds: float
    key: str
    error: str | None = None
    summary: dict | None = None  # from the device's manifest.json (or its plan)


@dataclass(frozen=True)
class FleetResult:
    outdir: Path
    outcomes: tuple[DeviceOutcome, ...]
    plans: tuple[dict, ...] = ()      # distinct plans: {"id", "plan", "devices", ...}
    builds: tuple[dict, ...] = ()     # distinct builds: {"key", "target", "plan", "devices"}
    phases: dict | None = None        # seconds per phase

    @property
    def failed(self) -> list[DeviceOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _shared_work(fleet: Fleet, todo: list[Device], say: Progress):
    """Import, analysis and sensitivity once, before any device is planned."""
    from toolchain.compile.driver import prepare

    say(f"shared work: importing {fleet.model.name} and measuring accuracy sensitivity")
    prep = prepare(fleet.model, fleet.calib, progress=say)
    for precisions in sorted({fleet.targets[d.target].precisions for d in todo}):
        prep.sensitivity(precisions, say)
    return prep


def _pricing(fleet: Fleet, devices: list[Device], say: Progress) -> list:
    """Each device's predictor (`toolchain.fleet.pricing.device_predictors`); a device whose
    predictor cannot be had keeps the error and fails alone."""
    from toolchain.fleet.plan import DevicePricing, device_error
    from toolchain.fleet.pricing import device_predictors

    say(f"predictors of {len(devices)} device(s)")
    out = []
    for d, got in zip(devices, device_predictors(devices, fleet.targets), strict=True):
        tgt = fleet.targets[d.target]
        if isinstance(got, Exception):
            logger.debug("device %s has no predictor", d.name, exc_info=got)
            out.append(DevicePricing(d.name, tgt, d.budgets(), None, None,
                                     error=device_error(got)))
        else:
            predictor, name, warnings = got
            out.append(DevicePricing(d.name, tgt, d.budgets(), predictor, name, warnings))
    return out


def _representatives(fleet: Fleet, todo: list[Device]) -> list:
    """The predictors whose Pareto fronts make the candidate set: every target's and proxy's
    own package the fleet names, and the profiled packages (the fingerprint basis)."""
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import predictor_dir

    out, seen = [], set()
    named = [fleet.targets[n] for d in todo for n in (d.target, d.proxy) if n]
    for tgt in named + measurable_targets():
        folder = predictor_dir(tgt)
        if folder is not None and folder not in seen:
            seen.add(folder)
            out.append(KernelPredictor.load(folder))
    return out


def plan_devices(fleet: Fleet, prep, todo: list[Device], say: Progress,
                 planner: str | None = None):
    """Phase 3 for the devices `todo` (a seam the tests replace): FleetPlans. `planner`:
    "exact" or "amortized" (toolchain/fleet/planner.py), resolved from the fleet's size."""
    from toolchain.fleet.plan import plan_fleet

    pricing = _pricing(fleet, todo, say)
    plans = plan_fleet(prep, pricing, say, _representatives(fleet, todo), planner)
    plans.pricing = {p.name: p for p in pricing}
    return plans


def planning_digest(fleet: Fleet, planner: str | None = None) -> str:
    """What the candidate set depends on besides the model: every device's target, proxy and
    measurement / fingerprint bytes, and with a per-device `planner` (its plans are
    candidates for every device) the planner and every device's budgets."""
    drop = ("name",) if planner else ("name", "budgets")
    rows = sorted(canonical({k: v for k, v in d.entry().items() if k not in drop})
                  for d in fleet.devices)
    if planner:
        rows.append(f"planner={planner}")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:32]


def build_key(model_sha: str, calib_sha: str | None, plan, target) -> str:
    """The build cache key of one (plan, TVM target): the inputs, the plan, the target's TVM
    target and cross compiler, the tuning database, fleetc's sources and the tool versions."""
    doc = {"build": 1, "model": model_sha, "calib": calib_sha,
           "plan": replace(plan, target=None).to_json(),
           "tvm_target": target.tvm_target, "cross": target.cross_compiler,
           "tuning": tuning_digest(), "tools": tool_versions(), "source": _source_digest()}
    return hashlib.sha256(canonical(doc).encode()).hexdigest()[:32]


_STATE: dict = {}


def _load_state(state: dict) -> dict:
    """The prepared state of a build worker (model and calibration data), loaded once."""
    if _STATE.get("id") != state["id"]:
        import onnx

        _STATE.clear()
        _STATE.update(id=state["id"], model=onnx.load_from_string(state["model"]),
                      calib=state["calib"])
    return _STATE


def build_plan(job: dict, state: dict) -> dict:
    """One TVM build of a plan into the build cache (top level: runs in workers and on Dask):
    model.onnx, the artifact(s) and build.json. Returns {"key", "ok", "error", "seconds"}."""
    from passes.emit_tvm import emit_tvm
    from toolchain.compile.rewrite import apply_plan
    from toolchain.files import follow_umask
    from toolchain.measure.child import call as in_child
    from toolchain.space import Plan

    if job.get("home"):
        os.environ["FLEETC_HOME"] = job["home"]
    start = time.perf_counter()
    try:
        st = _load_state(state)
        plan = Plan.from_dict(json.loads(job["plan"]))
        model = apply_plan(st["model"], plan, calib=st["calib"])
        tgt = job["target"]
        with build_folder() as tmp:
            out = tmp / "out"
            out.mkdir()
            atomic_write(out / "model.onnx", model.SerializeToString(deterministic=True))
            feeds = _feeds(st["calib"], model)
            emitted = in_child(emit_tvm, model, tgt, out, cross_compiler=tgt.cross_compiler,
                               inputs=feeds)
            for artifact in emitted.artifacts:
                follow_umask(out / artifact.path)
            doc = {"target": emitted.target, "arch": emitted.arch, "cross": emitted.cross,
                   "checked_against_onnxruntime": emitted.checked,
                   "max_abs_error": emitted.max_abs_error,
                   "int8_runs_in_float": emitted.int8_in_float,
                   "artifacts": [{"path": "model.onnx", "sha256": sha256_file(out / "model.onnx"),
                                  "arch": "onnx"}]
                   + [{"path": a.path, "sha256": a.sha256, "arch": a.arch}
                      for a in emitted.artifacts],
                   "warnings": list(emitted.warnings)}
            atomic_write(out / "build.json", json.dumps(doc, indent=2) + "\n")
            publish(out, job["key"], tmp)
        return {"key": job["key"], "ok": True, "error": None,
                "seconds": time.perf_counter() - start}
    except Exception as err:  # one broken build must not stop the fleet
        from toolchain.fleet.plan import device_error

        logger.debug("build %s failed", job["key"], exc_info=True)
        return {"key": job["key"], "ok": False, "error": device_error(err),
                "seconds": time.perf_counter() - start}


def _feeds(calib, model) -> dict:
    """One calibration sample per input at the rewritten model's input size (the TVM check)."""
    import numpy as np

    from passes.resize_input import fit_to_shape

    if calib is None:
        return None
    feeds = {k: v[:1] for k, v in calib.inputs.items()}
    return {vi.name: fit_to_shape(np.asarray(feeds[vi.name]),
                                  [d.dim_value for d in vi.type.tensor_type.shape.dim])
            for vi in model.graph.input if vi.name in feeds}


def run_fleet(fleet: Fleet, outdir: str | Path, *, jobs: int = 1, executor: str | None = None,
              use_cache: bool = True, progress: Progress | None = None,
              force: bool = False, plan_only: bool = False, strict: bool = False,
              tick: Tick | None = None, planner: str = "fronts") -> FleetResult:
    """Plan and build every device into OUTDIR/<name>/ and write OUTDIR/fleet.json and
    fleet.html (module doc). The folders follow the output folder rule (`check_output`) before
    any work; `force` lets folders fleetc did not write be written. A run that raises (bad
    input found during the shared work, Ctrl-C) leaves an OUTDIR that was missing or empty as
    it found it. `tick(done, total, name)` is called as each device is finished. `planner`:
    fronts, exact, amortized or auto (toolchain/fleet/planner.py; auto by the fleet's size)."""
    from toolchain.fleet.planner import resolve_planner

    say = progress or (lambda msg: None)
    planner = resolve_planner(planner, len(fleet.devices))
    outdir = Path(outdir)
    dests = check_output(fleet, outdir, force)
    fresh = _fresh(outdir)
    try:
        return _run(fleet, outdir, dests, jobs, executor, use_cache, say, plan_only, strict,
                    tick or (lambda done, total, name: None), planner)
    except BaseException:
        if fresh is not None:
            _restore(outdir, fresh, dests)
        raise


def _run(fleet: Fleet, outdir: Path, dests: dict[str, Path], jobs: int, executor: str | None,
         use_cache: bool, say: Progress, plan_only: bool, strict: bool,
         tick: Tick, planner: str) -> FleetResult:
    """run_fleet after the output check (OUTDIR is made at the start)."""
    phases: dict[str, float] = {}
    clock = time.perf_counter()
    _open_output(outdir, dests, say)
    model_sha = sha256_file(fleet.model)
    calib_sha = sha256_file(fleet.calib) if fleet.calib else None
    measurable = measurable_targets()
    memo: dict = {}     # each input file hashed once in this run
    planning = planning_digest(fleet, planner)
    keys = {d.name: device_key(fleet, d, model_sha, calib_sha, measurable, memo, planning)
            for d in fleet.devices}
    sweep()
    total = len(fleet.devices)
    outcomes: dict[str, DeviceOutcome] = {}
    todo = []
    for d in fleet.devices:
        if not plan_only and use_cache and install_cached(d.name, keys[d.name], dests[d.name]):
            outcomes[d.name] = _judged(DeviceOutcome(
                d.name, "cached", 0.0, keys[d.name], summary=_summary(dests[d.name])), strict)
            tick(len(outcomes), total, d.name)
        else:
            todo.append(d)
    if outcomes:
        say(f"{len(outcomes)} device(s) up to date (cache)")
    phases["keys"] = time.perf_counter() - clock
    plans_doc: list[dict] = []
    builds_doc: list[dict] = []
    if todo:
        clock = time.perf_counter()
        prep = _shared_work(fleet, todo, say)
        phases["shared"] = time.perf_counter() - clock
        clock = time.perf_counter()
        plans = plan_devices(fleet, prep, todo, say, planner)
        phases["plan"] = time.perf_counter() - clock
        for name, secs in plans.seconds.items():
            phases[f"plan.{name}"] = round(secs, 3)
        by_plan = _distinct_plans(plans, todo)
        say(f"{len(todo)} device(s) planned: {len(by_plan)} distinct plan(s) "
            f"from {len(plans.candidates)} candidates")
        if plan_only:
            for d in todo:
                outcomes[d.name] = _planned(d, plans, keys[d.name])
                tick(len(outcomes), total, d.name)
        else:
            builds = _builds(fleet, plans, todo, model_sha, calib_sha)
            builds_doc = _build_all(fleet, builds, jobs, executor, use_cache, say, phases,
                                    prep.calib)
            clock = time.perf_counter()
            timings = _time_builds(builds_doc, say)
            phases["timing"] = time.perf_counter() - clock
            clock = time.perf_counter()
            for d in todo:
                outcomes[d.name] = _device(fleet, d, plans, builds, builds_doc, timings, prep,
                                           keys[d.name], dests[d.name], strict)
                tick(len(outcomes), total, d.name)
            phases["devices"] = time.perf_counter() - clock
        plans_doc = [{"id": i, "plan": json.loads(p.to_json()), "devices": names,
                      "measured_accuracy_drop": plans.measured.get(i, (None,))[0],
                      "predicted_accuracy_drop": round(float(plans.drops[i]), 4)}
                     for i, (p, names) in by_plan.items()]
    ordered = tuple(outcomes[d.name] for d in fleet.devices)
    result = FleetResult(outdir, ordered, tuple(plans_doc), tuple(builds_doc),
                         {k: round(v, 3) for k, v in phases.items()})
    _write_fleet_json(fleet, result, model_sha, calib_sha, plan_only)
    from toolchain.fleet.html import write_fleet_html

    write_fleet_html(fleet, result, outdir / "fleet.html")
    return result


def _distinct_plans(plans, todo: list[Device]) -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    for d in todo:
        dp = plans.devices[d.name]
        if dp.candidate is not None:
            plan, names = out.get(dp.candidate, (plans.candidates[dp.candidate], []))
            out[dp.candidate] = (plan, names + [d.name])
    return dict(sorted(out.items()))


def _planned(d: Device, plans, key: str) -> DeviceOutcome:
    dp = plans.devices[d.name]
    if dp.error is not None:
        return DeviceOutcome(d.name, "failed", 0.0, key, error=dp.error)
    pricing = plans.pricing[d.name]
    measured = {"latency_ms": None, "accuracy_drop": dp.measured_drop,
                "accuracy": dp.measured_accuracy}
    summary = {"plan_id": dp.candidate, "plan": json.loads(dp.plan.to_json()),
               "predictor": pricing.predictor_name, "predicted": dp.predicted,
               "measured": measured, "warnings": sorted(set(pricing.warnings)),
               "budget_met": None, "artifacts": []}      # nothing measured yet
    return DeviceOutcome(d.name, "planned", 0.0, key, summary=summary)


def _builds(fleet: Fleet, plans, todo: list[Device], model_sha: str,
            calib_sha: str | None) -> dict[str, dict]:
    """Distinct builds: key -> {"target", "plan_id", "plan", "devices"}."""
    out: dict[str, dict] = {}
    for d in todo:
        dp = plans.devices[d.name]
        if dp.plan is None:
            continue
        tgt = fleet.targets[d.target]
        key = build_key(model_sha, calib_sha, dp.plan, tgt)
        entry = out.setdefault(key, {"target": tgt, "plan_id": dp.candidate,
                                     "plan": dp.plan, "devices": []})
        entry["devices"].append(d.name)
    return out


def _build_all(fleet: Fleet, builds: dict[str, dict], jobs: int, executor: str | None,
               use_cache: bool, say: Progress, phases: dict, calib) -> list[dict]:
    """Phase 4: every distinct build not in the cache, in parallel (module doc)."""
    clock = time.perf_counter()
    docs = {key: {"key": key, "target": b["target"].name, "plan_id": b["plan_id"],
                  "devices": b["devices"], "status": "cached", "error": None, "seconds": 0.0}
            for key, b in builds.items()}
    todo = [key for key in builds if not (use_cache and _sound_build(key))]
    say(f"{len(builds)} distinct build(s) (plan x TVM target): {len(builds) - len(todo)} "
        f"cached, {len(todo)} to build ({_where(jobs, executor)})")
    if todo:
        state = {"id": f"{os.getpid()}-{time.time_ns()}",
                 "model": fleet.model.read_bytes(), "calib": calib}
        pool = Pool(build_plan, jobs, executor, state)
        home = os.environ.get("FLEETC_HOME")
        try:
            jobs_ = [{"key": key, "plan": builds[key]["plan"].to_json(),
                      "target": builds[key]["target"], "home": home} for key in todo]
            for i, got in enumerate(pool.run(jobs_)):
                doc = docs[got["key"]]
                doc.update(status="built" if got["ok"] else "failed", error=got["error"],
                           seconds=round(got["seconds"], 3))
                state_ = f"built in {got['seconds']:.1f}s" if got["ok"] else \
                    f"FAILED: {got['error']}"
                say(f"build {i + 1}/{len(todo)} ({doc['target']}, plan {doc['plan_id']}, "
                    f"{len(doc['devices'])} device(s)): {state_}")
        finally:
            pool.close()
    phases["build"] = time.perf_counter() - clock
    return list(docs.values())


def _sound_build(key: str) -> bool:
    """The build entry is there and matches its digests (a damaged one is built again)."""
    from toolchain.files import check_digests

    entry = entry_dir(key)
    if not (entry / "build.json").is_file():
        return False
    problem = check_digests(entry)
    if problem is not None:
        logger.warning("cached build %s is damaged (%s): building it again", key, problem)
    return problem is None


def _time_builds(builds_doc: list[dict], say: Progress) -> dict[str, float]:
    """Phase 5: latency of each distinct build whose target is measurable here (the rewritten
    model in onnxruntime, as `compile` times it), one at a time after every build finished."""
    from toolchain.measure.ort_backend import time_ort
    from toolchain.target import load_target

    out: dict[str, float] = {}
    for doc in builds_doc:
        if doc["status"] == "failed":
            continue
        tgt = load_target(doc["target"])
        if tgt.measure.kind != "local-ort":
            continue
        say(f"timing build {doc['key'][:8]} ({doc['target']}, plan {doc['plan_id']}) in "
            f"onnxruntime ({tgt.measure.threads or 'all'} thread(s))")
        model = (entry_dir(doc["key"]) / "model.onnx").read_bytes()
        out[doc["key"]] = round(time_ort(model, threads=tgt.measure.threads).median_ms, 4)
        doc["measured_latency_ms"] = out[doc["key"]]
    return out


def _device(fleet: Fleet, d: Device, plans, builds: dict, builds_doc: list[dict],
            timings: dict, prep, key: str, dest: Path, strict: bool) -> DeviceOutcome:
    """Phase 6 for one device: its folder from its build, published and installed."""
    from toolchain.fleet.plan import device_error

    start = time.perf_counter()
    dp = plans.devices[d.name]
    if dp.error is not None:
        return DeviceOutcome(d.name, "failed", 0.0, key, error=dp.error)
    bkey = next(k for k, b in builds.items() if d.name in b["devices"])
    bdoc = next(b for b in builds_doc if b["key"] == bkey)
    if bdoc["status"] == "failed":
        return DeviceOutcome(d.name, "failed", 0.0, key, error=bdoc["error"])
    try:
        with build_folder() as tmp:
            out = tmp / "out"
            _device_folder(fleet, d, dp, plans, bkey, builds[bkey]["devices"],
                           timings.get(bkey), prep, out)
            summary = _summary(out)
            publish(out, key, tmp)
        problem = install(entry_dir(key), dest)
    except Exception as err:  # one broken device must not stop the fleet
        logger.debug("device %s failed", d.name, exc_info=True)
        return DeviceOutcome(d.name, "failed", time.perf_counter() - start, key,
                             error=device_error(err))
    if problem is not None:
        return DeviceOutcome(d.name, "failed", time.perf_counter() - start, key,
                             error=f"its fresh cache entry is damaged: {problem}")
    return _judged(DeviceOutcome(d.name, "built", time.perf_counter() - start, key,
                                 summary=summary), strict)


def _judged(outcome: DeviceOutcome, strict: bool) -> DeviceOutcome:
    """A device over its budget: a warning, and with --strict a failure."""
    s = outcome.summary or {}
    if s.get("budget_met") is not False or not strict:
        return outcome
    return replace(outcome, status="failed", error=_over_budget(s) + " (--strict)")


def _over_budget(summary: dict) -> str:
    meas = (summary.get("measured") or {}).get("latency_ms")
    limit = (summary.get("budgets") or {}).get("latency_ms")
    return (f"measured latency {meas:g} ms is over the budget {limit:g} ms "
            f"(+{100 * BUDGET_TOLERANCE:g}%)")


def _device_folder(fleet: Fleet, d: Device, dp, plans, bkey: str, sharing: list[str],
                   measured_ms: float | None, prep, out: Path) -> None:
    """The device's compile-layout folder: the build's files linked, its own plan, manifest
    and report (`toolchain.compile.output`)."""
    from toolchain.compile.driver import MANIFEST_VERSION, Candidate
    from toolchain.compile.output import budget_met, write_outdir
    from toolchain.compile.report import Point
    from toolchain.optimize.costs import Budget, Metrics

    entry = entry_dir(bkey)
    build = json.loads((entry / "build.json").read_text())
    out.mkdir()
    for art in build["artifacts"]:
        _link(entry / art["path"], out / art["path"])
    pricing = plans.pricing[d.name]
    tgt = fleet.targets[d.target]
    budgets = d.budgets()
    pred = dp.predicted
    measured = {"latency_ms": measured_ms, "accuracy": dp.measured_accuracy,
                "accuracy_drop": dp.measured_drop, "metric": prep.estimator.baseline.metric,
                "baseline_accuracy": prep.estimator.baseline.value,
                "samples": prep.estimator.samples}
    met = budget_met(measured_ms, d.latency_ms)      # compile's rule (compile/output.py)
    warnings = list(prep.warnings) + list(pricing.warnings) + list(build["warnings"])
    if met is False:
        over = {"budgets": budgets, "measured": measured, "predicted": pred}
        warnings.append(f"OVER BUDGET: {_over_budget(over)}")
    manifest = {
        "version": MANIFEST_VERSION, "target": tgt.name,
        "inputs": {"model_sha256": prep.model_sha256, "calib_sha256": prep.calib_sha256},
        "tools": tool_versions(),
        "budgets": {"latency_ms": d.latency_ms, "energy_mj": d.energy_mj,
                    "max_accuracy_drop": d.max_accuracy_drop},
        "objective": "least accuracy drop" if (d.latency_ms or d.energy_mj)
        else "least latency",
        "solver": "fleet-pick", "predictor": pricing.predictor_name,
        "plan": json.loads(dp.plan.to_json()), "predicted": pred, "measured": measured,
        "budget_met": met,
        "fleet": {"plan_id": dp.candidate, "build": bkey,
                  "shares_build_with": [n for n in sharing if n != d.name]},
        "tvm": {k: build[k] for k in ("target", "arch", "cross", "checked_against_onnxruntime",
                                      "max_abs_error", "int8_runs_in_float")},
        "artifacts": build["artifacts"], "warnings": sorted(set(warnings)),
    }
    m = Metrics(pred["latency_ms"], pred["accuracy_drop"], pred.get("energy_mj") or 0.0,
                pred["model_bytes"], pred["peak_activation_bytes"])
    chosen = Candidate("fleet-pick", None, dp.plan, m, dp.measured_drop, dp.measured_accuracy)
    points = [Point(m.latency_ms, dp.measured_drop if dp.measured_drop is not None else m.drop,
                    "chosen: fleet-pick", "chosen")]
    budget = Budget(d.latency_ms, d.energy_mj, None, None, d.max_accuracy_drop)
    write_outdir(out, dp.plan, manifest, points, [], [chosen], budget)


def _link(src: Path, dst: Path) -> None:
    """A copy, not a hard link: damage to a device's entry must not reach the shared build."""
    shutil.copyfile(src, dst)


def _summary(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"predicted": manifest.get("predicted", {}), "measured": manifest.get("measured", {}),
            "warnings": manifest.get("warnings", []),
            "budget_met": manifest.get("budget_met"), "budgets": {
                k: v for k, v in (manifest.get("budgets") or {}).items() if v is not None},
            "plan_id": (manifest.get("fleet") or {}).get("plan_id"),
            "build": (manifest.get("fleet") or {}).get("build"),
            "shares_build_with": (manifest.get("fleet") or {}).get("shares_build_with", []),
            "predictor": manifest.get("predictor"),
            "artifacts": [a.get("path") for a in manifest.get("artifacts", [])]}


def _where(jobs: int, executor: str | None) -> str:
    if executor:
        return f"on {executor}"
    return "in this process" if jobs <= 1 else f"{jobs} worker processes"


def _write_fleet_json(fleet: Fleet, result: FleetResult, model_sha: str,
                      calib_sha: str | None, plan_only: bool = False) -> None:
    devices = []
    for d, o in zip(fleet.devices, result.outcomes, strict=True):
        s = dict(o.summary or {})
        s.pop("budgets", None)
        devices.append({"name": d.name, "target": d.target, "known_by": d.known_by,
                        "budgets": d.budgets(), "status": o.status, "error": o.error,
                        "seconds": round(o.seconds, 3), "cache_key": o.key,
                        "outdir": d.name if o.status in ("built", "cached") else None,
                        "budget_met": s.pop("budget_met", None), **s})
    doc = {"version": FLEET_JSON_VERSION, "fleet": str(fleet.path), "plan_only": plan_only,
           "inputs": {"model": str(fleet.model), "model_sha256": model_sha,
                      "calib": str(fleet.calib) if fleet.calib else None,
                      "calib_sha256": calib_sha},
           "devices": devices,
           "plans": list(result.plans),
           "builds": list(result.builds),
           "phases_seconds": result.phases or {},
           "summary": {**{s: sum(1 for o in result.outcomes if o.status == s)
                          for s in ("built", "cached", "planned", "failed")},
                       "over_budget": sum(1 for dev in devices if dev["budget_met"] is False),
                       "distinct_plans": len(result.plans),
                       "distinct_builds": len(result.builds)}}
    atomic_write(result.outdir / "fleet.json", json.dumps(doc, indent=2) + "\n")


def check_output(fleet: Fleet, outdir: str | Path, force: bool = False) -> dict[str, Path]:
    """The output folder rule (`toolchain.files.check_output_dir`) for OUTDIR (a "fleet"
    output) and for each device's folder in it (a "compile" output): where each device's
    folder is to be written (a symlinked one is followed). A BadInputError before any work."""
    inputs = fleet.inputs()
    check_output_dir(outdir, inputs, "fleet", force)
    # only inputs that are, hold or sit inside a device folder can be refused: each input is
    # filed under its resolved path and every folder above it, so a folder finds its own
    # (that path, or one of its parents) without a pass over all inputs per device
    below: dict[str, list] = {}     # path -> inputs that are it or sit inside it
    at: dict[str, list] = {}        # path -> inputs that are it
    for item in inputs:
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            real = Path(item).resolve()
            at.setdefault(str(real), []).append(item)
            for folder in (real, *real.parents):
                below.setdefault(str(folder), []).append(item)
    out = {}
    for d in fleet.devices:
        folder = Path(outdir) / d.name
        try:
            real = folder.resolve()
        except (OSError, RuntimeError, ValueError):
            related = inputs
        else:
            related = below.get(str(real), []) + [i for p in real.parents
                                                  for i in at.get(str(p), [])]
        out[d.name] = check_output_dir(folder, related, "compile", force)
    return out


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

