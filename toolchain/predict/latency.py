"""Latency prediction for a target: find its predictor package, turn designs into units, predict
models and plans.

Predictor packages are looked up by the target's `predictor` name, first under
`$FLEETC_HOME/predictors/<name>/` (fitted or calibrated by the user), then in the repository's
`targets/predictors/<name>/` (shipped defaults).
"""
from __future__ import annotations

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
           "predict_plan", "builtin_predictors_dir"]

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


def load_predictor(target: Target, folder: str | os.PathLike | None = None) -> KernelPredictor:
    """The target's predictor (or the package in `folder`); BadInputError says how to make one."""
    path = Path(folder) if folder else predictor_dir(target)
    if path is None:
        hint = (f"fleetc profile --probe --target {target.name} -o {target.name}.csv && "
                f"fleetc predictor fit --target {target.name} --data {target.name}.csv"
                if target.measurable_here else
                f"measure the probes on the device (fleetc probe --target {target.name}) and run "
                f"fleetc predictor fit --target {target.name} --data MEASUREMENTS.csv, or "
                "calibrate a proxy predictor (fleetc targets calibrate)")
        raise BadInputError(f"no latency predictor for target {target.name} yet: {hint}")
    return KernelPredictor.load(path)


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
