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
           "fewshot_units", "device_predictor", "device_predictors"]

logger = logging.getLogger(__name__)


def fewshot_units(path: Path) -> tuple[list, np.ndarray, list[str]]:
    """(units per design, latencies, designs that are neither probes nor model files) of a
    device's measurement CSV; model files are looked up beside it."""
    _, units, latency, unknown = _measured(path)
    return units, latency, unknown


def _measured(path: Path) -> tuple[list[tuple], list, np.ndarray, list[str]]:
    """fewshot_units, with the key of each resolved design first: (design, folder). A fleet's
    devices measure the same probe designs: each is resolved once per process, and callers
    price it once per run under its key."""
    from toolchain.measure.records import read_measurements
    from toolchain.predict.latency import design_units

    folder = Path(path).resolve().parent
    keys, units, latency, unknown = [], [], [], []
    for row in read_measurements(path):
        key = (row.design, str(folder))
        if key not in _UNITS:
            _UNITS[key] = design_units(row.design, folder)
        if _UNITS[key] is None:
            unknown.append(row.design)
            continue
        keys.append(key)
        units.append(_UNITS[key])
        latency.append(row.latency_ms)
    return keys, units, np.array(latency, dtype=float), unknown


_UNITS: dict = {}   # per process: (design, folder) -> its units (design_units), for fleets


def _once(memo: dict, key: tuple, make):
    if key not in memo:
        memo[key] = make()
    return memo[key]


def calibrated_predictor(target, proxy_target, path: Path, memo: dict | None = None):
    """The proxy's predictor calibrated for `target` with the measurements in `path`. `memo`
    (one dict per run) loads the proxy and prices each measured design once."""
    from toolchain.predict.transfer import calibrate_kernel_predictors

    job = _fewshot_job(target, proxy_target, path, {} if memo is None else memo)
    return calibrate_kernel_predictors(job["proxy"], job["costs"], [job["latency"]],
                                       [job["meta"]])[0][0]


def _fewshot_job(target, proxy_target, path: Path, memo: dict) -> dict:
    """What calibrating a few-shot device takes: the proxy's package (loaded once per run),
    the measured designs' keys and proxy prices (priced once per run), the device's latencies
    and the package's meta."""
    from toolchain.predict.kernel import data_hash
    from toolchain.predict.latency import load_predictor
    from toolchain.predict.transfer import design_costs

    # the map to the target rescales the proxy's package: its calibration to this CPU is moot
    proxy = _once(memo, ("proxy", proxy_target.name),
                  lambda: load_predictor(proxy_target, calibrate=False))
    keys, units, latency, unknown = _measured(path)
    costs = [_once(memo, ("costs", proxy_target.name, k), lambda u=u: design_costs(proxy, u))
             for k, u in zip(keys, units, strict=True)]
    meta = {"name": f"{target.predictor}-fewshot", "target": target.name,
            "training": {"file": Path(path).name, "hash": data_hash(path),
                         "rows": len(latency) + len(unknown), "skipped": unknown}}
    return {"proxy": proxy, "keys": tuple(keys), "costs": costs, "latency": latency,
            "meta": meta}


def _profiled() -> list:
    """(target, predictor) of every onnxruntime target with a fitted predictor package. TVM's
    (host-tvm: TVM-built code, fp32 kinds only) is left out: a mix over it would drop the
    kernel kinds it lacks (int8) from the combined predictor."""
    from toolchain.predict.kernel import KernelPredictor
    from toolchain.predict.latency import predictor_dir
    from toolchain.target import measurable_targets

    out = []
    for tgt in measurable_targets():
        folder = predictor_dir(tgt)
        if folder is not None and tgt.measure.kind == "local-ort":
            out.append((tgt, KernelPredictor.load(folder), folder))
    return out


def _mix(predictors: list, units: list, latency: np.ndarray) -> np.ndarray:
    """Non-negative weights of the predictors that best explain `latency` (relative error)."""
    from toolchain.predict.kernel import nnls

    A = np.array([[p.predict_units(u).latency_ms for p in predictors] for u in units])
    return nnls(A / latency[:, None], np.ones(len(latency)))


def _combine(predictors: list, alpha: np.ndarray, meta: dict, memo: dict | None = None):
    """The predictors mixed with weights `alpha`: per kind the alpha-weighted weights, over
    the kinds every predictor used (alpha > 0) has. `memo` (one per run, with one set of
    `predictors`) lays out each set of used predictors' weights once."""
    from toolchain.predict.kernel import KernelPredictor

    used = tuple(i for i, a in enumerate(alpha) if a > 0)
    if not used:
        raise BadInputError("the fingerprint cannot be explained by any profiled device "
                            "(all mixing weights are zero)")
    key = ("mix layout", tuple(id(p) for p in predictors), used)
    spans, W, model_keys, M = _once({} if memo is None else memo, key,
                                    lambda: _layout(predictors, used))
    w, m = np.zeros(W.shape[1]), np.zeros(M.shape[1])
    for j, i in enumerate(used):     # in order, as a sum over the used predictors
        w = w + alpha[i] * W[j]
        m = m + alpha[i] * M[j]
    w, m = w.tolist(), m.tolist()
    weights = {k: dict(zip(names, w[lo:hi], strict=True)) for k, names, lo, hi in spans}
    return KernelPredictor(weights, dict(zip(model_keys, m, strict=True)), meta)


def _layout(predictors: list, used: tuple) -> tuple:
    """(per kind: (kind, feature names, start, end) in one weight vector, each used predictor's
    weights in that layout, the model feature names, each used predictor's model weights)."""
    first = predictors[used[0]]
    kinds = sorted(set.intersection(*(set(predictors[i].weights) for i in used)))
    spans, columns = [], []
    for k in kinds:
        names = list(first.weights[k])
        spans.append((k, names, len(columns), len(columns) + len(names)))
        columns += [(k, f) for f in names]
    W = np.array([[predictors[i].weights[k].get(f, 0.0) for k, f in columns] for i in used])
    model_keys = list(first.model)
    M = np.array([[predictors[i].model.get(f, 0.0) for f in model_keys] for i in used])
    return spans, W.reshape(len(used), len(columns)), model_keys, M.reshape(len(used), -1)


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


def conditioned_predictor(target, path: Path, profiled: list | None = None,
                          memo: dict | None = None):
    """The device-conditioned kernel predictor for a device known by the fingerprint `path`
    (`profiled`: the profiled packages, `_profiled()`, when the caller has them already;
    `memo`, one dict per run: each fingerprint design is priced once by the profiled
    predictors, not once per device)."""
    from toolchain.predict.kernel import nnls
    from toolchain.predict.transfer import design_costs

    memo = {} if memo is None else memo
    profiled = _profiled() if profiled is None else profiled
    if not profiled:
        raise BadInputError("a fingerprint device needs at least one profiled target with a "
                            "predictor (fleetc profile --probe + fleetc predictor fit)")
    keys, units, latency, unknown = _measured(path)
    if len(latency) < 3:
        raise BadInputError(f"{path}: {len(latency)} usable fingerprint designs (probe names of "
                            "`fleetc probe`); at least 3 are needed")
    predictors = [p for _, p, _ in profiled]
    basis = tuple(str(folder) for _, _, folder in profiled)
    costs = [_once(memo, ("fingerprint", basis, k),
                   lambda u=u: [design_costs(p, u) for p in predictors])
             for k, u in zip(keys, units, strict=True)]
    A = np.array([[c[0] for c in row] for row in costs])
    alpha = nnls(A / latency[:, None], np.ones(len(latency)))     # as _mix
    designs = [design for design, _ in keys]
    meta = {"name": f"{target.predictor}-conditioned", "target": target.name,
            "validated": False,
            "conditioned": {"devices": [t.name for t, _, _ in profiled],
                            "mix": [float(a) for a in alpha], "fingerprint_designs": designs,
                            "skipped": unknown},
            "held_out": _held_out(profiled, designs)}
    model = _combine(predictors, alpha, meta, memo)
    fit = _mixed_latency(model, predictors, alpha, costs, units)
    model.meta["training_fit"] = {"designs": len(latency), "median_abs_rel_err":
                                  float(np.median(np.abs(fit - latency) / latency))}
    return model


def _mixed_latency(model, predictors: list, alpha: np.ndarray, costs: list,
                   units: list) -> np.ndarray:
    """The mix's latency of each design. The mix is linear in its predictors, so it is the
    alpha-weighted sum of their per-kind costs (`costs`: `design_costs` of each design by
    each predictor) over the kinds the mix keeps - when every predictor used has the mix's
    features for those kinds; else the designs are priced again."""
    from toolchain.predict.transfer import cost_kinds

    used = [i for i, a in enumerate(alpha) if a > 0]
    if any(set(predictors[i].weights[k]) != set(w) for k, w in model.weights.items()
           for i in used):
        return np.array([model.predict_units(u).latency_ms for u in units])
    out = np.full(len(units), float(model.model.get("model", 0.0)))
    for i in used:
        kinds = cost_kinds(predictors[i])
        columns = [kinds.index(k) for k in model.weights]
        per_kind = np.array([row[i][1] for row in costs])
        out += alpha[i] * per_kind[:, columns].sum(axis=1)
    return out


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
    `memo` (one dict per run) loads each package once and prices each measured design once."""
    from toolchain.predict.latency import load_predictor

    memo = {} if memo is None else memo
    if device.known_by == "fewshot":
        predictor = calibrated_predictor(target, proxy, device.measurements, memo)
    elif device.known_by == "fingerprint":
        if "profiled" not in memo:
            memo["profiled"] = _profiled()
        predictor = conditioned_predictor(target, device.fingerprint, memo["profiled"], memo)
    else:   # one package per target, shared by its devices
        predictor = _once(memo, ("target", target.name), lambda: load_predictor(target))
    return _labelled(device, target, predictor)


def device_predictors(devices: list, targets: dict, memo: dict | None = None) -> list:
    """`device_predictor` of each device - or the exception it raised, so that a broken device
    fails alone. Few-shot devices that measured the same designs with the same proxy are
    calibrated in one batch (`transfer.calibrate_kernel_predictors`: the same fits, done for
    all of them at once)."""
    from toolchain.predict.transfer import calibrate_kernel_predictors

    memo = {} if memo is None else memo
    out: list = [None] * len(devices)
    batches: dict[tuple, list] = {}
    for i, d in enumerate(devices):
        try:
            if d.known_by == "fewshot":
                job = _fewshot_job(targets[d.target], targets[d.proxy], d.measurements, memo)
                batches.setdefault((d.proxy, job["keys"]), []).append((i, job))
            else:
                out[i] = device_predictor(d, targets[d.target],
                                          targets[d.proxy] if d.proxy else None, memo)
        except Exception as err:  # one broken device must not stop the fleet
            out[i] = err
    for members in batches.values():
        first = members[0][1]
        try:
            fitted = calibrate_kernel_predictors(first["proxy"], first["costs"],
                                                 [job["latency"] for _, job in members],
                                                 [job["meta"] for _, job in members])
        except Exception as err:  # the same designs: the same error for each device
            for i, _ in members:
                out[i] = err
            continue
        for (i, _), (model, _) in zip(members, fitted, strict=True):
            out[i] = _labelled(devices[i], targets[devices[i].target], model)
    return out


def _labelled(device, target: Target, predictor) -> tuple:
    """(predictor, its name, the warnings that say how far to trust it)."""
    warnings = []
    if not target.measurable_here and not predictor.meta.get("validated", False):
        warnings.append(f"latency predictions for {target.name} are UNVALIDATED: its predictor "
                        f"({predictor.name}) was not checked against measurements from the "
                        "device")
    if device.known_by != "profiled":
        warnings.append(_describe(predictor))
    return predictor, predictor.name, warnings
