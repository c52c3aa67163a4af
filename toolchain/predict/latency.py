"""Latency prediction for a target: find its predictor package, turn designs into units, predict
models and plans.

Predictor packages are looked up by the target's `predictor` name, first under
`$FLEETC_HOME/predictors/<name>/` (fitted or calibrated by the user), then in the repository's
`targets/predictors/<name>/` (shipped defaults).

A target measured on this machine whose package was measured on another CPU (its `cpu` record
differs, or it has none: `kernel.same_cpu`) gets the package calibrated to this CPU: the
fingerprint probes are timed here with the target's back end (about 20 s) and the package's
kernel costs rescaled to them (`transfer.calibrate_kernel_predictor`, the proxy-reuse path).
The result is cached under `$FLEETC_HOME/cache/calibrated/`, keyed by the package, this CPU
and the target's measurement settings, so it runs once. `load_predictor(..., calibrate=False)`
(`--no-calibrate`) or `FLEETC_CALIBRATE=0` in the environment (the test suite's default)
uses the package as it is.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from dataclasses import fields
from pathlib import Path

import onnx

from toolchain.errors import BadInputError
from toolchain.files import DIGESTS
from toolchain.home import predictors_dir
from toolchain.predict.kernel import KernelPredictor, Prediction
from toolchain.predict.units import (
    QDQ_FOLLOWERS,
    Unit,
    graph_units,
    ort_float_nodes,
    units_under_plan,
)
from toolchain.space import Plan
from toolchain.target import Target

__all__ = ["predictor_dir", "load_predictor", "model_units", "design_units", "predict_model",
           "predict_plan", "builtin_predictors_dir", "calibrated_to_this_cpu",
           "calibration_enabled", "predictor_error", "refit_fallback"]

logger = logging.getLogger(__name__)


def _units_key() -> str:
    """Key of the cached probe units: a hash of the code that computes them (units, the analysis
    pipeline and kernel grouping, the IR), so a change there can never reuse stale units (a
    manual version number was once left unbumped). Read when this module is imported."""
    import passes
    import passes.group_kernels
    import toolchain.ir
    import toolchain.predict.units
    import toolchain.space

    sources = b"".join(Path(m.__file__).read_bytes() for m in (
        toolchain.predict.units, passes, passes.group_kernels, toolchain.space, toolchain.ir))
    return hashlib.sha256(sources).hexdigest()[:10]


_UNITS_KEY = _units_key()


def builtin_predictors_dir() -> Path:
    import targets

    return Path(targets.__file__).parent / "predictors"


def predictor_dir(target: Target) -> Path | None:
    """The folder of the target's predictor package, or None if there is none yet. A user's
    package that lost its meta.json but has digests.json is still the one found (`load`
    then says what is wrong), never silently replaced by the built-in one."""
    for base in (predictors_dir(), builtin_predictors_dir()):
        folder = base / target.predictor
        if (folder / "meta.json").is_file() or os.path.lexists(folder / DIGESTS):
            return folder
    return None


def load_predictor(target: Target, folder: str | os.PathLike | None = None,
                   calibrate: bool = True) -> KernelPredictor:
    """The target's predictor (or the package in `folder`), calibrated to this CPU when the
    target is measured here and the package was measured on another CPU (unless `calibrate`
    is false or FLEETC_CALIBRATE=0). A target without a package that cannot be measured here
    gets its zero-shot estimate (`toolchain.predict.zeroshot`, labelled UNVALIDATED);
    otherwise BadInputError says how to make one."""
    path = Path(folder) if folder else predictor_dir(target)
    if path is None:
        from toolchain.predict.zeroshot import zeroshot_predictor

        estimate = zeroshot_predictor(target, builtin_predictors_dir())
        if estimate is not None:
            return estimate
        hint = (f"fleetc profile --probe --target {target.name} -o {target.name}.csv && "
                f"fleetc predictor fit --target {target.name} --data {target.name}.csv"
                if target.measurable_here else
                f"measure the probes on the device (fleetc probe --target {target.name}) and run "
                f"fleetc predictor fit --target {target.name} --data MEASUREMENTS.csv, or "
                "calibrate a proxy predictor (fleetc targets calibrate)")
        raise BadInputError(f"no latency predictor for target {target.name} yet: {hint}")
    predictor = KernelPredictor.load(path)
    if calibrate and calibration_enabled() and target.measurable_here:
        predictor = calibrated_to_this_cpu(target, predictor)
    return predictor


def calibration_enabled() -> bool:
    """False when the environment says FLEETC_CALIBRATE=0 (tests; scripted runs)."""
    return os.environ.get("FLEETC_CALIBRATE", "1").strip().lower() not in ("0", "no", "off")


def predictor_error(meta: dict) -> str:
    """The measured error of a package's predictions, in a few words."""
    held = meta.get("held_out") or {}
    if "leave_one_out_rmse_log" in held:
        return (f"{100 * held['leave_one_out_rmse_log']:.1f}% (leave-one-out, log rms, "
                f"{(meta.get('calibration') or {}).get('samples', '?')} designs)")
    if held.get("folds"):
        return f"{100 * held['median_abs_rel_err']:.1f}% (median, {held['folds']}-fold held out)"
    return "not measured"


def calibrated_to_this_cpu(target: Target, predictor: KernelPredictor) -> KernelPredictor:
    """`predictor` if it was measured on this CPU, else the package calibrated to this CPU with
    the fingerprint probes (measured once, then served from $FLEETC_HOME/cache/calibrated)."""
    from toolchain.files import owned_temp_dir, publish_dir, remove_dead_temps
    from toolchain.home import cache_dir
    from toolchain.predict.kernel import cpu_record, data_hash, describe_cpu, same_cpu
    from toolchain.predict.transfer import calibrate_kernel_predictor

    here = cpu_record(target.measure.threads)
    recorded = predictor.meta.get("cpu")
    if same_cpu(recorded, here):
        return predictor
    key = hashlib.sha256(json.dumps(
        [predictor.weights, predictor.model, predictor.meta, here, target.measure.kind,
         target.measure.threads, _calibration_probes()], sort_keys=True).encode()).hexdigest()
    parent = cache_dir() / "calibrated"
    folder = parent / f"{predictor.name}-{key[:16]}"
    if (folder / "meta.json").is_file():
        try:
            return KernelPredictor.load(folder)
        except BadInputError as err:
            logger.warning("%s; calibrating again", err)
    logger.warning("predictor %s was measured on %s, this is %s: calibrating it to this CPU "
                   "with %d fingerprint probes (once: about 20 s with onnxruntime, longer with "
                   "TVM builds; cached in %s; --no-calibrate skips this)", predictor.name,
                   describe_cpu(recorded), describe_cpu(here), len(_calibration_probes()), parent)
    remove_dead_temps(parent, ".calibrate-")
    with owned_temp_dir(parent, ".calibrate-") as tmp:
        csv = tmp / "package" / "measurements.csv"
        csv.parent.mkdir()
        designs, latency = _measure_probes(target, csv)
        meta = {**{k: v for k, v in predictor.meta.items() if k not in ("format", "version")},
                "cpu": here, "measured_cpu": recorded,
                "training": {"file": csv.name, "hash": data_hash(csv), "rows": len(latency)}}
        calibrated, _ = calibrate_kernel_predictor(predictor, designs, latency, meta)
        calibrated.save(tmp / "package")
        publish_dir(tmp / "package", folder, tmp)
    logger.warning("calibrated %s to this CPU: error %s", predictor.name,
                   predictor_error(calibrated.meta))
    return calibrated


def _calibration_probes() -> list[str]:
    """The fingerprint probes (a dozen designs spanning the kernel kinds)."""
    from toolchain.measure.probe import probe_set

    return [p.name for p in probe_set(("fp32", "int8"), "fingerprint")]


def _measure_probes(target: Target, csv: Path) -> tuple[list[list[Unit]], list[float]]:
    """Time the calibration probes on this machine with the target's back end (a worker
    process, as `fleetc profile`): (units per design, latency ms)."""
    from toolchain.measure.probe import build_probe
    from toolchain.measure.profile import profile
    from toolchain.measure.records import read_measurements

    names = _calibration_probes()
    profile(target, [(n, functools.partial(build_probe, n)) for n in names], csv)
    rows = read_measurements(csv)
    if len(rows) < 3:
        raise BadInputError(f"calibrating to this CPU: only {len(rows)} of {len(names)} "
                            "probes could be measured; run with --no-calibrate")
    return [design_units(r.design) for r in rows], [r.latency_ms for r in rows]


def refit_fallback(folder: str | os.PathLike) -> KernelPredictor:
    """Fit the memory-traffic fallback of the package in `folder` on its own training data
    (its measurements.csv: the rows of single-op and pool probes, the designs made of
    memory-bound kernels only) and save the package, its other weights unchanged. For packages
    fitted before packages had a fallback (the shipped ones); `fit` makes one itself."""
    from toolchain.measure.probe import probe_names
    from toolchain.measure.records import read_measurements
    from toolchain.predict.kernel import fit_fallback

    folder = Path(folder)
    package = KernelPredictor.load(folder)
    probes = probe_names()
    rows = [r for r in read_measurements(folder / "measurements.csv")
            if r.design in probes and probes[r.design].family in ("op", "pool")]
    fitted = fit_fallback([design_units(r.design) for r in rows],
                          [r.latency_ms for r in rows], package.model.get("model", 0.0))
    if fitted is None:
        raise BadInputError(f"{folder}: too few memory-bound probe designs to fit a fallback")
    package.fallback, package.meta["fallback"] = fitted
    package.save(folder)
    return package


def model_units(source: str | os.PathLike | onnx.ModelProto,
                runtime: str = "onnxruntime") -> list[Unit]:
    """Units of a model file or proto (imported and analyzed). For a quantized (QDQ) model and
    runtime "onnxruntime", which nodes really run in int8 is asked from onnxruntime."""
    from passes import load_and_analyze
    from passes.import_onnx import load_model

    model = source if isinstance(source, onnx.ModelProto) else load_model(source)
    graph = load_and_analyze(model)
    qdq = any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    floats = ort_float_nodes(model) if qdq and runtime == "onnxruntime" else None
    return graph_units(graph, floats)


def design_units(design: str, folder: Path | None = None) -> list[Unit] | None:
    """Units of a measured design: a probe name, or a model file `folder/design[.onnx]`.

    Probe units are cached as JSON next to the cached probe models (analysis takes a while);
    a cached file that is not a list of units is computed again, with a warning.
    """
    from toolchain.measure.probe import build_probe, probe_cache_dir, probe_names

    if design in probe_names():
        cache = probe_cache_dir() / f"units-{_UNITS_KEY}" / f"{design}.json"
        units = _cached_units(cache) if cache.is_file() else None
        if units is not None:
            return units
        units = model_units(build_probe(design))
        from toolchain.files import atomic_write

        atomic_write(cache, json.dumps([_unit_to_json(u) for u in units]))
        return units
    for candidate in ((folder or Path.cwd()) / design, (folder or Path.cwd()) / f"{design}.onnx"):
        if candidate.is_file():
            return model_units(candidate)
    return None


def _unit_to_json(u: Unit) -> dict:
    from dataclasses import asdict

    return asdict(u)


def _cached_units(path: Path) -> list[Unit] | None:
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, list) or not doc:
            raise ValueError("not a list of units")
        return [_unit_from_json(d) for d in doc]
    except (OSError, ValueError, RecursionError) as err:
        logger.warning("cached probe units %s are damaged (%s): computing them again", path,
                       str(err)[:100])
        return None


_UNIT_FIELDS = {f.name: f.type for f in fields(Unit)}


def _unit_from_json(d: dict) -> Unit:
    """A Unit from its JSON form; ValueError if `d` is not one (every field of its type,
    numbers finite)."""
    if not isinstance(d, dict) or not {"name", "cls", "precision"} <= set(d) <= set(_UNIT_FIELDS):
        raise ValueError("not a unit")
    for key, value in d.items():
        kind = _UNIT_FIELDS[key]
        ok = (isinstance(value, str) if kind == "str" else
              isinstance(value, list) and all(isinstance(v, str) for v in value)
              if kind.startswith("tuple") else
              type(value) in (int, float) and math.isfinite(value))
        if not ok:
            raise ValueError(f"unit field {key} is {str(value)[:40]!r}")
    return Unit(**{**d, "inputs": tuple(d.get("inputs", ()))})


def predict_model(predictor: KernelPredictor, source, plan: Plan | None = None,
                  strict: bool = False) -> Prediction:
    """Predict a model file/proto, as it is or under a plan."""
    if plan is None:
        return predictor.predict_units(model_units(source), strict)
    from passes import load_and_analyze

    return predict_plan(predictor, load_and_analyze(source), plan, strict)


def predict_plan(predictor: KernelPredictor, graph, plan: Plan, strict: bool = False,
                 int8_ops: tuple[str, ...] = QDQ_FOLLOWERS) -> Prediction:
    """Predict an analyzed float graph under a plan, without rewriting it (fast: for
    optimizers scoring many plans). See `units_under_plan` for how choices are applied."""
    return predictor.predict_units(units_under_plan(graph, plan, int8_ops), strict)
