"""Plan-cost functions for fleet devices that were never profiled here.

- few-shot (approach 1, proxy reuse): the proxy target's kernel predictor calibrated with the
  device's measurements of probe designs (`toolchain.predict.transfer`, as `fleetc targets
  calibrate` does).
- fingerprint (approach 2, device-conditioned): the device is described by its latencies on
  probe designs; its kernel predictor is the non-negative combination of the profiled devices'
  predictors (every target with a fitted package) that best explains that fingerprint, fitted
  on relative error. The result stays additive over kernels, so the exact solver can use it.
  Its held-out error is measured by leaving each profiled device out in turn (its own measured
  probes as the fingerprint, the others as the basis); with a single profiled device there is
  nothing to hold out and the predictions are marked unvalidated with that reason.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError
from toolchain.target import Target

__all__ = ["fewshot_cost", "fingerprint_cost", "calibrated_predictor", "conditioned_predictor",
           "fewshot_units", "device_predictor"]

logger = logging.getLogger(__name__)


def fewshot_units(path: Path) -> tuple[list, np.ndarray, list[str]]:
    """(units per design, latencies, designs that are neither probes nor model files) of a
    device's measurement CSV; model files are looked up beside it."""
    from toolchain.measure.records import read_measurements
    from toolchain.predict.kernel import measured_units
    from toolchain.predict.latency import design_units

    folder = Path(path).resolve().parent

    def units_of(design: str):
        key = (design, str(folder))     # a fleet's devices share their probe designs
        if key not in _UNITS:
            _UNITS[key] = design_units(design, folder)
        return _UNITS[key]

    units, latency, unknown = measured_units(read_measurements(path), units_of)
    return units, np.array(latency, dtype=float), unknown


_UNITS: dict = {}   # per process: (design, folder) -> its units (design_units), for fleets


def calibrated_predictor(target, proxy_target, path: Path):
    """The proxy's predictor calibrated for `target` with the measurements in `path`."""
    from toolchain.predict.kernel import data_hash
    from toolchain.predict.latency import load_predictor
    from toolchain.predict.transfer import calibrate_kernel_predictor

    proxy = load_predictor(proxy_target, calibrate=False)   # the map to the target rescales it
    units, latency, unknown = fewshot_units(path)
    meta = {"name": f"{target.predictor}-fewshot", "target": target.name,
            "training": {"file": Path(path).name, "hash": data_hash(path),
                         "rows": len(latency) + len(unknown), "skipped": unknown}}
    model, _ = calibrate_kernel_predictor(proxy, units, latency, meta)
    return model


def _profiled() -> list:
    """(target, predictor) of every target with a fitted predictor package."""
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import predictor_dir
    from toolchain.target import measurable_targets

    out = []
    for tgt in measurable_targets():
        folder = predictor_dir(tgt)
        if folder is not None:
            out.append((tgt, KernelPredictor.load(folder), folder))
    return out


def _mix(predictors: list, units: list, latency: np.ndarray) -> np.ndarray:
    """Non-negative weights of the predictors that best explain `latency` (relative error)."""
    from toolchain.predict.kernel import nnls

    A = np.array([[p.predict_units(u).latency_ms for p in predictors] for u in units])
    return nnls(A / latency[:, None], np.ones(len(latency)))


def _combine(predictors: list, alpha: np.ndarray, meta: dict):
    from toolchain.predict.kernel import KernelPredictor

    used = [(a, p) for a, p in zip(alpha, predictors, strict=True) if a > 0]
    if not used:
        raise BadInputError("the fingerprint cannot be explained by any profiled device "
                            "(all mixing weights are zero)")
    kinds = set.intersection(*(set(p.weights) for _, p in used))
    weights = {k: {f: sum(a * p.weights[k].get(f, 0.0) for a, p in used)
                   for f in used[0][1].weights[k]} for k in sorted(kinds)}
    model = {f: sum(a * p.model.get(f, 0.0) for a, p in used) for f in used[0][1].model}
    return KernelPredictor(weights, model, meta)


_HELD_OUT: dict = {}   # per process: (profiled packages, designs) -> _held_out's answer


def _held_out(profiled: list, designs: list[str]) -> dict:
    """Leave one profiled device out: its measured fingerprint designs condition a mix of the
    others, scored on the rest of its measured designs (once per package set and designs)."""
    key = (tuple(str(folder) for _, _, folder in profiled), tuple(designs))
    if key not in _HELD_OUT:
        _HELD_OUT[key] = _held_out_now(profiled, designs)
    return _HELD_OUT[key]


def _held_out_now(profiled: list, designs: list[str]) -> dict:
    from toolchain.measure.records import read_measurements
    from toolchain.predict.latency import design_units

    if len(profiled) < 2:
        return {"note": f"only {len(profiled)} profiled device(s): no device to hold out; "
                        "predictions are UNVALIDATED"}
    errors = {}
    for i, (tgt, _, folder) in enumerate(profiled):
        csv = folder / "measurements.csv"
        if not csv.is_file():
            continue
        rows = {r.design: r.latency_ms for r in read_measurements(csv)}
        fp = [d for d in designs if d in rows]
        rest = _scored_designs(rows, set(designs), 200)
        if len(fp) < 3 or not rest:
            continue
        others = [p for j, (_, p, _) in enumerate(profiled) if j != i]
        alpha = _mix(others, [design_units(d) for d in fp], np.array([rows[d] for d in fp]))
        mixed = _combine(others, alpha, {})
        pred = np.array([mixed.predict_units(units).latency_ms for units in rest.values()])
        truth = np.array([rows[d] for d in rest])
        errors[tgt.name] = float(np.median(np.abs(pred - truth) / truth))
    if not errors:
        return {"note": "no profiled device has measurements of the fingerprint designs"}
    return {"leave_one_device_out_median_abs_rel_err": errors,
            "median_abs_rel_err": float(np.median(list(errors.values())))}


def _scored_designs(rows: dict, skip: set, count: int) -> dict:
    """Units of the first `count` measured designs outside `skip` that are still probes (a
    package's measurements may name probes that later versions of the set retired)."""
    from toolchain.predict.latency import design_units

    out = {}
    for design in rows:
        if len(out) == count:
            break
        units = design_units(design) if design not in skip else None
        if units is not None:
            out[design] = units
    return out


def conditioned_predictor(target, path: Path, profiled: list | None = None):
    """The device-conditioned kernel predictor for a device known by the fingerprint `path`
    (`profiled`: the profiled packages, `_profiled()`, when the caller has them already)."""
    from toolchain.measure.records import read_measurements

    profiled = _profiled() if profiled is None else profiled
    if not profiled:
        raise BadInputError("a fingerprint device needs at least one profiled target with a "
                            "predictor (fleetc profile --probe + fleetc predictor fit)")
    units, latency, unknown = fewshot_units(path)
    if len(latency) < 3:
        raise BadInputError(f"{path}: {len(latency)} usable fingerprint designs (probe names of "
                            "`fleetc probe`); at least 3 are needed")
    predictors = [p for _, p, _ in profiled]
    alpha = _mix(predictors, units, latency)
    designs = [r.design for r in read_measurements(path) if r.design not in set(unknown)]
    meta = {"name": f"{target.predictor}-conditioned", "target": target.name,
            "validated": False,
            "conditioned": {"devices": [t.name for t, _, _ in profiled],
                            "mix": [float(a) for a in alpha], "fingerprint_designs": designs,
                            "skipped": unknown},
            "held_out": _held_out(profiled, designs)}
    model = _combine(predictors, alpha, meta)
    fit = np.array([model.predict_units(u).latency_ms for u in units])
    model.meta["training_fit"] = {"designs": len(latency), "median_abs_rel_err":
                                  float(np.median(np.abs(fit - latency) / latency))}
    return model


def _describe(predictor) -> str:
    meta = predictor.meta
    if "conditioned" in meta:
        held = meta["held_out"]
        err = (f"held-out error {100 * held['median_abs_rel_err']:.1f}% (median, leave one "
               "profiled device out)" if "median_abs_rel_err" in held else held["note"])
        return (f"latency predictions are DEVICE-CONDITIONED on a fingerprint of "
                f"{meta['training_fit']['designs']} probe designs (mix of "
                f"{', '.join(meta['conditioned']['devices'])}): {err}")
    cal = meta.get("calibration", {})
    loo = meta.get("held_out", {}).get("leave_one_out_rmse_log")
    return (f"latency predictions are the proxy {cal.get('proxy')}'s predictor calibrated with "
            f"{cal.get('samples')} measured designs ({cal.get('path', 'transfer')}); "
            f"leave-one-out error {100 * loo:.1f}% (log rms)" if loo is not None else
            f"latency predictions are the proxy {cal.get('proxy')}'s predictor calibrated with "
            f"{cal.get('samples')} measured designs")


def _cost(target: Target, prep, predictor) -> tuple:
    """(cost function, predictor name, warnings) for compile_model."""
    from toolchain.compile.pricing import predictor_cost

    cost, name, warnings = predictor_cost(target, prep, predictor=predictor)
    return cost, name, [*warnings, _describe(predictor)]


def fewshot_cost(device, target: Target, proxy: Target, prep) -> tuple:
    """Pricing of a device known by a few measurements: the proxy's predictor calibrated."""
    predictor = calibrated_predictor(target, proxy, device.measurements)
    return _cost(target, prep, predictor)


def fingerprint_cost(device, target: Target, prep) -> tuple:
    """Pricing of a device known by a fingerprint: the profiled predictors' conditioned mix."""
    predictor = conditioned_predictor(target, device.fingerprint)
    return _cost(target, prep, predictor)


def device_predictor(device, target: Target, proxy: Target | None,
                     memo: dict | None = None) -> tuple:
    """(kernel predictor, its name, warnings) of a fleet device however it is known: its
    target's package, the proxy's calibrated with its measurements, or the fingerprint mix.
    `memo` (one dict per run) loads the profiled packages once."""
    from toolchain.predict.latency import load_predictor

    memo = {} if memo is None else memo
    if device.known_by == "fewshot":
        predictor = calibrated_predictor(target, proxy, device.measurements)
    elif device.known_by == "fingerprint":
        if "profiled" not in memo:
            memo["profiled"] = _profiled()
        predictor = conditioned_predictor(target, device.fingerprint, memo["profiled"])
    else:
        predictor = load_predictor(target)
    warnings = []
    if not target.measurable_here and not predictor.meta.get("validated", False):
        warnings.append(f"latency predictions for {target.name} are UNVALIDATED: its predictor "
                        f"({predictor.name}) was not checked against measurements from the "
                        "device")
    if device.known_by != "profiled":
        warnings.append(_describe(predictor))
    return predictor, predictor.name, warnings
