"""Zero-shot latency estimate for a target nobody has measured: the measured anchor's kernel
predictor (`host-ort-1t` as shipped, measured on the CPU its target file describes) times a
speed ratio from the two devices' spec features. Always labelled UNVALIDATED; a fitted or
calibrated package replaces it.

Rule. A device's latency scale s (in the device-conditioned model of
`toolchain.predict.conditioned`, latency_d(x) = s_d * f(x) . w_d, s_d is the mean of the
device's fingerprint) is modelled as log s = a_space + b . spec(d), spec = (log peak
compute, runs on a GPU), peak = 2 x cores x clock x 32-bit lanes (x2 fp16 with fp16 vector
arithmetic, x4 int8 with a dot-product instruction, x2 int8 without). The slopes b are fitted
by least squares on the published multi-device tables (`benchmarks/zeroshot_error.py`, all
devices of `data/device_specs.csv`; a rule that sees only those tables, never a test column).
For a target T the estimate is anchor_prediction x exp(b . (spec(T) - spec(anchor))): the
per-space intercept cancels, and the plan ranking is the anchor's.

Expected error. The same rule, left one device (all columns of one hardware) out at a time on
the published tables: the held-out device predicted from each measured CPU of the same table
and its spec features. `targets/zeroshot.json` holds the slopes and that error (median and
p90 over held-out devices, the device classes they span, and the data's hashes). Without an
evaluation there the label says the error is unknown. Never from configurations of one CPU.

Which targets. Only targets that cannot be measured here (a local one is profiled instead:
`fleetc profile --probe`), have no predictor package, and give the spec features `cores`,
`freq_ghz`, `simd_bits` (and `gpu_cores`, `gpu_freq_ghz` when their TVM target is CUDA).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError

__all__ = ["ANCHOR", "SPEC_NAMES", "peak_gops", "spec_vector", "target_spec", "load_model",
           "zeroshot_predictor", "estimate_record", "estimate_label", "model_path",
           "manifest_estimate", "speed_ratio", "estimate_for"]

logger = logging.getLogger(__name__)

ANCHOR = "host-ort-1t"
SPEC_NAMES = ("log_peak_gops", "gpu")
SUFFIX = "-zeroshot"


def peak_gops(cores: float, freq_ghz: float, simd_bits: float, int8_dot: bool = False,
              fp16_simd: bool = False, precision: str = "fp32") -> float:
    """Peak multiply-accumulate throughput (2 ops per lane per cycle) at `precision`."""
    lanes = simd_bits / 32
    factor = {"fp32": 1.0, "fp16": 2.0 if fp16_simd else 1.0,
              "int8": 4.0 if int8_dot else 2.0}[precision]
    return 2.0 * cores * freq_ghz * lanes * factor


def spec_vector(spec: dict) -> np.ndarray:
    """(log peak GOP/s, 1 if a GPU) of a spec dict: cores, freq_ghz, simd_bits, int8_dot,
    fp16_simd, gpu, precision (GPU cores count as one 32-bit lane each)."""
    peak = peak_gops(spec["cores"], spec["freq_ghz"], spec["simd_bits"],
                     bool(spec.get("int8_dot")), bool(spec.get("fp16_simd")),
                     spec.get("precision", "fp32"))
    return np.array([math.log(peak), 1.0 if spec.get("gpu") else 0.0])


def target_spec(target) -> dict | None:
    """The target's spec dict from its [features] (fp32), or None when some are missing. A
    CUDA target is described by its GPU (`gpu_cores`, `gpu_freq_ghz`)."""
    f = target.features
    tvm = target.tvm_target
    gpu = isinstance(tvm, dict) and tvm.get("kind") == "cuda"
    keys = ("gpu_cores", "gpu_freq_ghz") if gpu else ("cores", "freq_ghz", "simd_bits")
    if not all(isinstance(f.get(k), (int, float)) and not isinstance(f.get(k), bool)
               and f[k] > 0 for k in keys):
        return None
    if gpu:
        return {"cores": f["gpu_cores"], "freq_ghz": f["gpu_freq_ghz"], "simd_bits": 32,
                "gpu": True}
    return {"cores": f["cores"], "freq_ghz": f["freq_ghz"], "simd_bits": f["simd_bits"],
            "int8_dot": bool(f.get("int8_dot")), "fp16_simd": bool(f.get("fp16_simd")),
            "gpu": False}


def model_path() -> Path:
    import targets

    return Path(targets.__file__).parent / "zeroshot.json"


def load_model(path: Path | None = None) -> dict:
    """The slopes and expected error written by benchmarks/zeroshot_error.py."""
    path = path or model_path()
    try:
        doc = json.loads(path.read_text())
        slopes = np.array([float(doc["slopes"][k]) for k in SPEC_NAMES])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInputError(f"{path}: zero-shot model is damaged ({str(err)[:80]})") from None
    if not np.all(np.isfinite(slopes)):
        raise BadInputError(f"{path}: zero-shot slopes are not finite")
    return {**doc, "slopes_vector": slopes}


def estimate_record(doc: dict, ratio: float | None = None) -> dict:
    """What the manifest and `fleetc predict` say about a zero-shot estimate."""
    err = doc.get("expected_error")
    record = {"kind": "zero-shot", "validated": False, "anchor": doc.get("anchor", ANCHOR),
              "speed_ratio": None if ratio is None else round(ratio, 4),
              "expected_error": err or None}
    record["label"] = estimate_label(record)
    return record


def estimate_label(record: dict) -> str:
    err = record.get("expected_error")
    text = (f"ZERO-SHOT estimate, UNVALIDATED: {record['anchor']}'s predictor scaled by the "
            "spec features")
    if record.get("speed_ratio") is not None:
        text += f" (x{record['speed_ratio']:.3g})"
    if not err:
        return text + "; expected error unknown"
    worst = err["worst"]
    return (text + f"; expected error: median |error| {100 * err['median_abs_rel_err']:.0f}% "
            f"(p90 {100 * err['p90_abs_rel_err']:.0f}%, worst {100 * worst['abs_rel_err']:.0f}% "
            f"on {worst['device']}) over {err['devices']} published devices of "
            f"{len(err['classes'])} classes, each left out in turn")


def zeroshot_predictor(target, shipped: Path) -> object | None:
    """The zero-shot KernelPredictor of `target`, or None when the rule above does not apply
    (measurable here, or spec features missing). The anchor is its package as shipped in the
    folder `shipped` (measured on the CPU its target file describes; never a user's refit or
    its calibration to the CPU fleetc runs on: the estimate of a device must not depend on it)."""
    from toolchain.predict.kernel import KernelPredictor

    record = estimate_for(target)
    folder = Path(shipped) / ANCHOR
    if record is None or not (folder / "meta.json").is_file():
        return None
    base = KernelPredictor.load(folder)
    ratio = record["speed_ratio"]
    meta = {"name": f"{target.predictor}{SUFFIX}", "target": None, "validated": False,
            "zeroshot": {**record, "for_target": target.name, "spec": target_spec(target),
                         "anchor_package": base.name},
            "kinds": base.kinds, "fallback": base.meta.get("fallback")}

    def scaled(table: dict[str, float]) -> dict[str, float]:
        return {f: w * ratio for f, w in table.items()}

    return KernelPredictor({k: scaled(v) for k, v in base.weights.items()}, scaled(base.model),
                           meta, None if base.fallback is None else scaled(base.fallback))


def estimate_for(target) -> dict | None:
    """The estimate record of `target` if the zero-shot rule applies to it (whether or not it
    has a package), else None."""
    if target.measurable_here or target_spec(target) is None:
        return None
    doc = load_model()
    return estimate_record(doc, speed_ratio(target, doc))


def manifest_estimate(target_name: str, predictor_name: str) -> dict | None:
    """The estimate record of a compile whose predictor was the target's zero-shot one (what
    `zeroshot_predictor` names it), else None."""
    from toolchain.target import load_target

    if not predictor_name.endswith(SUFFIX):
        return None
    try:
        target = load_target(target_name)
    except BadInputError:       # a Target given as an object, not in the registry
        return estimate_record(load_model())
    if predictor_name != f"{target.predictor}{SUFFIX}":
        return None
    return estimate_for(target)


def speed_ratio(target, doc: dict) -> float:
    """Predicted latency of `target` over the anchor's, from their spec features."""
    from toolchain.target import load_target

    delta = spec_vector(target_spec(target)) - spec_vector(target_spec(load_target(ANCHOR)))
    return float(np.exp(doc["slopes_vector"] @ delta))
