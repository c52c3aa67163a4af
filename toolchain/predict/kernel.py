"""Kernel-level latency predictor: model latency = fixed cost + sum of per-kernel predictions.

Each kernel (a `Unit`: a `group_kernels` kernel after fusion, with its precision) is priced by
the regressor of its kind (`conv/fp32`, `dwconv/int8`, `MaxPool/fp32`, `quantize/int8`, ...):
a non-negative linear model on features of the kernel - a per-kernel constant (dispatch), MACs,
MACs with channels padded to the 16-lane vector width, output elements of the channel tail
beyond the last full group of 16, elements read and written, weight
elements, output rows, window elements for pools - in millions; plus two memory-hierarchy
features: activation bytes beyond the per-core L2 cache (`act_spill`), and the kernel's weight
bytes scaled by how far the bytes one inference touches (weights + activations written)
exceed the last-level cache (`cold_weight_bytes`: a ResNet-18 at 45 MB of fp32 weights reads
every weight from DRAM at every inference, the same convolution alone in a loop keeps them
cached).

Training needs only whole-model measurements (`design,latency_ms`): every measured design is an
equation "latency = model constant + sum of its kernels' costs", linear in all regressors'
weights at once, solved by non-negative least squares on relative errors. This is why probes
can be small networks: a kernel's cost is learned in context (a conv between convs pays no
layout conversion, one at the model's edge does), and no per-kernel timer is needed on the
device.

A memory-bound kernel (anything but conv, dwconv, gemm) whose kind never occurred in the
training data - a Concat or Resize between int8 neighbours, a Pad, a Split - is priced by the
package's **fallback**, a memory-traffic model `a + b * bytes read and written` fitted on the
measured designs made of element-wise and data-movement kernels only (single-op probes), with
its own measured error: leave-one-kind-out, each kind's designs predicted by a fit on the other
kinds, as the fallback will be used (`fit_fallback`). Such kernels are listed in
`Prediction.fallback`.
A compute kernel of an unseen kind, or any unseen kind in a package without a fallback, has no
model: it is listed in `Prediction.unknown`; it never counts as zero. `strict=True` raises
UnsupportedKernelError for both.

Package (a folder): `meta.json` (name, version, target, training-data hash and size, held-out
error and, for a package measured on this machine's kind of CPU, `cpu`: the `cpu_record` of the
CPU it was measured on) and `model.json` (per kind: feature names and weights). No pickles.
A package whose `cpu` is not this CPU's (`same_cpu`), or that records none, describes another
CPU (`toolchain.predict.latency` then calibrates it to this one).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError, UnsupportedKernelError
from toolchain.files import DIGESTS, check_digests
from toolchain.predict.units import FLOAT, Unit
from toolchain.space import BYTES_PER_PRECISION

__all__ = [
    "KernelPredictor", "Prediction", "KernelLatency", "features", "context_of", "nnls", "spearman",
    "FORMAT", "FORMAT_VERSION", "fit_rows", "cpu_record", "same_cpu", "describe_cpu",
    "fit_fallback", "COMPUTE_CLASSES", "FALLBACK_BASIS",
]

logger = logging.getLogger(__name__)

FORMAT = "fleetc.kernel-latency"
FORMAT_VERSION = 1
_M = 1e-6   # features in millions: weights are then ms per million

_EDGES = ("edge_in", "edge_out")
_CONV = ("kernel", "macs", "macs_pad16", "macs_red_small", "macs_red_mid", "in_elems",
         "out_elems", "weight_elems", "rows", "out_taps", "dram_weight_bytes", "act_spill",
         "cold_weight_bytes", "macs_big_kernel", "tail_out", "grouped", "macs_grouped",
         "group_calls", "im2col_elems", *_EDGES)
_BASIS: dict[str, tuple[str, ...]] = {
    "conv": _CONV, "dwconv": _CONV,
    "gemm": ("kernel", "macs", "in_elems", "out_elems", "weight_elems", "dram_weight_bytes",
             "cold_weight_bytes", *_EDGES),
    "MaxPool": ("kernel", "in_elems", "window_elems", "act_spill", *_EDGES),
    "AveragePool": ("kernel", "in_elems", "window_elems", *_EDGES),
    "LRN": ("kernel", "out_elems", "window_elems", *_EDGES),
}
_DEFAULT_BASIS = ("kernel", "in_elems", "out_elems", "act_spill", *_EDGES)
_BASIS["quantize"] = _BASIS["dequantize"] = (*_DEFAULT_BASIS, "inner", "inner_elems")
MODEL_BASIS = ("model",)
_CACHE_BYTES = 16 << 20
COMPUTE_CLASSES = ("conv", "dwconv", "gemm")   # never priced by the memory-traffic fallback
FALLBACK_BASIS = ("kernel", "bytes")
_L2_BYTES = 1 << 20
# A model whose weights and activations exceed the last-level cache reads its weights from
# DRAM at every inference (each kernel's weights are evicted by the other kernels' data before
# its next run); between these two sizes a growing share does. The CPU's nominal L3 is 32 MiB,
# shared with other tenants.
_WARM_BYTES, _COLD_BYTES = 8 << 20, 32 << 20


def _elem_bytes(precision: str) -> int:
    """Bytes per element of a unit's tensors ("int8a": int8 activations; "int8w" units, int8
    weights only, move float tensors)."""
    return BYTES_PER_PRECISION.get("int8" if precision == "int8a" else precision, 4)


def weight_bytes(u: Unit) -> float:
    """Bytes of the kernel's weights as stored (int8w kernels keep int8 weights)."""
    return u.weight_elems * (1 if u.precision == "int8w" else _elem_bytes(u.precision))


def context_of(units: Iterable[Unit]) -> float:
    """The bytes one inference touches, weights plus activations written: what decides
    whether a kernel's weights are still cached at its next run (a MobileNetV2 at 224x224
    writes about 24 MB of activations, so its 5 MB classifier is read from DRAM, while the
    same layer timed alone stays in the last-level cache)."""
    return float(sum(weight_bytes(u) + u.out_elems * _elem_bytes(u.precision)
                     for u in units))


def _cold_share(context: float) -> float:
    return min(1.0, max(0.0, (context - _WARM_BYTES) / (_COLD_BYTES - _WARM_BYTES)))


def _pad(c: int, lanes: int = 16) -> float:
    return math.ceil(c / lanes) * lanes / c if c > 0 else 1.0


def features(u: Unit, context: float = 0.0) -> dict[str, float]:
    """The named features of one unit (millions, except the per-kernel constant) in a model
    whose inference touches `context` bytes (`context_of`)."""
    cin_pad = 1.0 if u.cls == "dwconv" else _pad(u.cin)
    nchw = u.groups > 1 and u.precision in FLOAT
    return {
        "kernel": 1.0, "macs": u.macs * _M, "macs_pad16": u.macs * _pad(u.cout) * cin_pad * _M,
        "in_elems": u.in_elems * _M, "out_elems": u.out_elems * _M,
        "weight_elems": u.weight_elems * _M, "rows": u.rows * _M,
        "window_elems": u.out_elems * u.k_area * _M,
        "out_taps": u.out_elems * u.k_area * _M,   # = MACs / input channels per group
        # MACs by reduction depth (input channels per group x kernel area): code generators
        # switch schedules with it (untuned TVM: 10-20 GMAC/s below 64, ~1 GMAC/s above 512).
        "macs_red_small": u.macs * _M if u.cin * u.k_area <= 64 else 0.0,
        "macs_red_mid": u.macs * _M if 64 < u.cin * u.k_area <= 512 else 0.0,
        # Layout changes at the model's edges; a float grouped conv needs none there (below).
        "edge_in": 0.0 if nchw else u.edge_in * _M, "edge_out": 0.0 if nchw else u.edge_out * _M,
        # Weight bytes beyond what last-level caches hold: streamed from DRAM at every run
        # (AlexNet/VGG classifiers), far costlier per byte than cache-resident weights.
        "dram_weight_bytes": max(0.0, u.weight_elems * _elem_bytes(u.precision)
                                 - _CACHE_BYTES) * _M,
        # Activation bytes beyond the per-core L2 cache: read and written through L3 / DRAM
        # (early, high-resolution layers), costlier per element than cache-resident ones.
        "act_spill": max(0.0, (u.in_elems + u.out_elems) * _elem_bytes(u.precision)
                         - _L2_BYTES) * _M,
        "cold_weight_bytes": weight_bytes(u) * _cold_share(context) * _M,
        # Output elements of the channels beyond the last full group of 16 (24 = 16 + 8): the
        # vector kernels finish them in a slower tail loop (onnxruntime's int8 depthwise 3x3
        # took 1.3 ns per output at 24 channels, 0.6 at 32, in its profiler).
        "tail_out": u.out_elems * (u.cout % 16) / u.cout * _M if u.cout else 0.0,
        # 5x5 and larger windows take other code paths than 3x3 (onnxruntime's int8 depthwise
        # 5x5 runs several times slower per MAC than its 3x3).
        "macs_big_kernel": u.macs * _M if u.k_area > 9 else 0.0,
        # A conversion next to a float convolution, where onnxruntime also changes layout
        # (blocked NCHWc float <-> NCHW <-> NHWC int8: three nodes per border, each a
        # thread-pool dispatch), costs more than one at the model's edges, which most int8
        # probes have (ten single int8 layers in a float MobileNetV2 at 160 px added 307-413
        # us with 2 threads; fits without this feature predicted 90-137 us).
        "inner": 1.0 if u.inner else 0.0, "inner_elems": u.inner * _M,
        # Grouped (not depthwise) convolutions run on other code paths than dense ones:
        # onnxruntime's blocked NCHWc layout takes only dense and depthwise float convs, so a
        # float grouped one runs in plain NCHW (layout changes where it meets blocked units
        # inside a model are units of their own, `units.layout_changes`) ...
        "grouped": 1.0 if u.groups > 1 else 0.0,
        "macs_grouped": u.macs * _M if u.groups > 1 else 0.0,
        # ... one small matrix product per group, each after an im2col copy of its input
        # windows when the kernel is larger than 1x1 (3x3 convs of 32 groups ran 2-5x slower
        # than fits without these two predicted, session 6).
        "group_calls": u.groups * _M if u.groups > 1 else 0.0,
        "im2col_elems": u.out_elems / u.cout * u.k_area * u.cin * u.groups * _M
        if u.groups > 1 and u.k_area > 1 and u.cout else 0.0,
    }


def fallback_features(u: Unit) -> dict[str, float]:
    """The memory-traffic fallback's features: a per-kernel constant and the bytes the kernel
    reads and writes (millions), at its precision's element size."""
    return {"kernel": 1.0, "bytes": (u.in_elems + u.out_elems) * _elem_bytes(u.precision) * _M}


def basis_of(cls: str) -> tuple[str, ...]:
    return _BASIS.get(cls, _DEFAULT_BASIS)


def _vector(u: Unit, context: float) -> np.ndarray:
    f = features(u, context)
    return np.array([f[name] for name in basis_of(u.cls)])


@dataclass(frozen=True)
class KernelLatency:
    name: str
    kind: str
    latency_ms: float
    fallback: bool = False    # priced by the memory-traffic fallback (no model of its kind)


@dataclass(frozen=True)
class Prediction:
    """Per-kernel costs, the fixed per-model cost, their total, and what had no model."""

    latency_ms: float
    overhead_ms: float
    kernels: tuple[KernelLatency, ...]
    unknown: tuple[str, ...] = ()          # "name (kind)" of kernels with no regressor
    predictor: str = ""
    fallback_error: str = ""               # the fallback's measured error, when it priced any

    @property
    def complete(self) -> bool:
        return not self.unknown

    @property
    def fallback(self) -> tuple[str, ...]:
        """"name (kind)" of the kernels the memory-traffic fallback priced."""
        return tuple(f"{k.name} ({k.kind})" for k in self.kernels if k.fallback)

    def to_json(self) -> dict:
        return {"latency_ms": self.latency_ms, "overhead_ms": self.overhead_ms,
                "complete": self.complete, "unknown": list(self.unknown),
                "fallback": list(self.fallback), "fallback_error": self.fallback_error or None,
                "predictor": self.predictor,
                "kernels": [{"name": k.name, "kind": k.kind, "latency_ms": k.latency_ms,
                             "fallback": k.fallback} for k in self.kernels]}


class KernelPredictor:
    """Per-kind linear regressors plus a per-model constant; see the module doc."""

    def __init__(self, weights: dict[str, dict[str, float]], model: dict[str, float],
                 meta: dict | None = None, fallback: dict[str, float] | None = None) -> None:
        self.weights = weights     # kind -> feature -> weight (ms per unit of feature)
        self.model = model         # model feature -> weight
        self.meta = dict(meta or {})
        self.fallback = fallback   # FALLBACK_BASIS feature -> weight, or None

    @property
    def fallback_error(self) -> str:
        """The fallback's measured error in a few words (meta["fallback"])."""
        held = (self.meta.get("fallback") or {}).get("held_out") or {}
        if "median_abs_rel_err" not in held:
            return "not measured"
        return (f"{100 * held['median_abs_rel_err']:.0f}% median, "
                f"{100 * held['p90_abs_rel_err']:.0f}% p90 (leave one kind out, "
                f"{held['kinds']} kinds)")

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "unnamed"))

    @property
    def kinds(self) -> list[str]:
        return sorted(self.weights)

    # ------------------------------------------------------------------ prediction
    def kernel_ms(self, u: Unit, context: float = 0.0) -> float | None:
        """One kernel's cost inside a model touching `context` bytes (`context_of`); None if
        its kind has no model (see `fallback_ms`)."""
        w = self.weights.get(u.kind)
        if w is None:
            return None
        f = features(u, context)
        return float(sum(w[name] * f[name] for name in w))

    def fallback_ms(self, u: Unit) -> float | None:
        """The memory-traffic fallback's price of a memory-bound kernel (None for compute
        kernels and packages without a fallback)."""
        if self.fallback is None or u.cls in COMPUTE_CLASSES:
            return None
        f = fallback_features(u)
        return float(sum(w * f[name] for name, w in self.fallback.items()))

    def predict_units(self, units: Iterable[Unit], strict: bool = False) -> Prediction:
        """The model's latency; `strict`: UnsupportedKernelError if a kernel has no model of
        its kind (priced by the fallback, or not at all)."""
        costs, unknown = [], []
        units = list(units)
        context = context_of(units)
        for u in units:
            ms = self.kernel_ms(u, context)
            if ms is not None:
                costs.append(KernelLatency(u.name, u.kind, ms))
            elif (ms := self.fallback_ms(u)) is not None:
                costs.append(KernelLatency(u.name, u.kind, ms, fallback=True))
            else:
                unknown.append(f"{u.name} ({u.kind})")
        overhead = float(self.model.get("model", 0.0))
        total = overhead + sum(c.latency_ms for c in costs)
        out = Prediction(total, overhead, tuple(costs), tuple(unknown), self.name,
                         self.fallback_error if any(c.fallback for c in costs) else "")
        if strict and (unknown or out.fallback):
            missing = unknown + [f"{k} (fallback)" for k in out.fallback]
            raise UnsupportedKernelError(
                f"predictor {self.name} has no model for {len(missing)} kernel(s): "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        return out

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, designs: Sequence[Sequence[Unit]], latency_ms: Sequence[float],
            meta: dict | None = None, folds: int = 5) -> KernelPredictor:
        """Fit on whole-design latencies; meta gains held-out (k-fold) error figures."""
        y = np.asarray(latency_ms, dtype=float)
        if len(designs) != len(y) or len(y) < 3:
            raise BadInputError(f"need at least 3 measured designs to fit, got {len(y)}")
        kinds = sorted({u.kind for units in designs for u in units})
        columns = [(k, f) for k in kinds for f in basis_of(k.split("/")[0])]
        columns += [("", f) for f in MODEL_BASIS]
        X = _design_matrix(designs, columns)
        w = _solve(X, y)
        meta = dict(meta or {})
        meta["held_out"] = _cross_validate(X, y, folds)
        meta["training_fit"] = _scores(y, X @ w)
        meta["kinds"] = kinds
        out = cls._from_columns(columns, w, meta)
        fitted = fit_fallback(designs, y, out.model.get("model", 0.0))
        if fitted is not None:
            out.fallback, out.meta["fallback"] = fitted
        return out

    @classmethod
    def _from_columns(cls, columns, w, meta) -> KernelPredictor:
        weights: dict[str, dict[str, float]] = {}
        model: dict[str, float] = {}
        for (kind, feat), value in zip(columns, w, strict=True):
            if kind:
                weights.setdefault(kind, {})[feat] = float(value)
            else:
                model[feat] = float(value)
        return cls(weights, model, meta)

    # ------------------------------------------------------------------ package
    def save(self, folder: str | os.PathLike) -> Path:
        """Write meta.json and model.json (atomically each), then their digests.json (`load`
        checks it: a package changed or cut short afterwards is refused, not used)."""
        from toolchain.files import atomic_write, write_digests

        folder = Path(folder)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **self.meta}
        doc = {"model": self.model, "kinds": {k: self.weights[k] for k in self.kinds}}
        if self.fallback is not None:
            doc["fallback"] = self.fallback
        atomic_write(folder / "model.json", json.dumps(doc, indent=1, sort_keys=True) + "\n")
        atomic_write(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
        write_digests(folder, ["model.json", "meta.json"])
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> KernelPredictor:
        """Read a package, checked first: against its digests.json when it has one (`save`
        writes it), then meta.json and model.json must be JSON objects of this format whose
        weights are finite numbers of known features. Anything wrong is a BadInputError naming
        the file: a package is the user's (fitted or calibrated), fleetc cannot remake it."""
        folder = Path(folder)
        if os.path.lexists(folder / DIGESTS):
            problem = check_digests(folder)
            if problem is not None:
                raise BadInputError(f"{folder}: damaged predictor package ({problem}); fit it "
                                    f"again or delete {DIGESTS}")
        meta = _package_json(folder, "meta.json")
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise BadInputError(f"{folder}: predictor format {str(meta.get('format'))[:80]} "
                                f"v{str(meta.get('version'))[:20]} is not {FORMAT} "
                                f"v{FORMAT_VERSION}")
        if not _cpu_ok(meta.get("cpu")):
            raise BadInputError(f"{folder / 'meta.json'}: \"cpu\" is not a CPU record (vendor, "
                                "model, isa flags, threads)")
        doc = _package_json(folder, "model.json")
        kinds, model = doc.get("kinds"), doc.get("model")
        where = folder / "model.json"
        if not isinstance(kinds, dict) or not all(
                isinstance(k, str) and _weights_ok(w, _FEATURES) for k, w in kinds.items()):
            raise BadInputError(f"{where}: \"kinds\" is not a table of kernel kinds to "
                                "feature weights (finite numbers of known features)")
        if not _weights_ok(model, None):
            raise BadInputError(f"{where}: \"model\" is not a table of finite numbers")
        fallback = doc.get("fallback")
        if fallback is not None and not _weights_ok(fallback, frozenset(FALLBACK_BASIS)):
            raise BadInputError(f"{where}: \"fallback\" is not a table of {FALLBACK_BASIS} "
                                "weights")
        return cls(kinds, model, meta, fallback)


_FEATURES = frozenset(n for basis in (*_BASIS.values(), _DEFAULT_BASIS) for n in basis)
_PACKAGE_MAX_BYTES = 64 << 20


# /proc/cpuinfo flags that name instruction sets (x86: sse*, avx*, amx*, fma, f16c, ...; Arm:
# asimd*, sve*, i8mm, ...): code generators and onnxruntime pick kernels by these, so two CPUs
# that differ in one run other code. The other flags (hypervisor, bugs, power states) do not.
_ISA_PREFIXES = ("sse", "ssse", "avx", "amx", "fma", "f16c", "bmi", "vnni", "asimd", "sve",
                 "i8mm", "bf16", "fphp", "neon", "dotprod")


def cpu_record(threads: int | None = None, cpuinfo: str | None = None) -> dict:
    """The CPU this process runs on, as predictor packages record it: vendor, model name,
    instruction-set flags (sorted), and the threads the measurements used. `cpuinfo`: the text
    of /proc/cpuinfo (read when None; on a system without it, what `platform` says)."""
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    info: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    flags = (info.get("flags") or info.get("Features") or "").split()
    return {"vendor": info.get("vendor_id") or info.get("CPU implementer")
            or platform.machine(),
            "model": info.get("model name") or info.get("CPU part") or platform.processor(),
            "isa": sorted({f for f in flags if f.startswith(_ISA_PREFIXES)}),
            "threads": threads}


def same_cpu(recorded: dict | None, here: dict) -> bool:
    """Whether a package's recorded CPU is this one: same vendor, model name and instruction-set
    flags (the thread count is the target's, not the CPU's). None (not recorded) is not."""
    return isinstance(recorded, dict) and all(recorded.get(k) == here.get(k)
                                              for k in ("vendor", "model", "isa"))


def describe_cpu(record: dict | None) -> str:
    """A CPU record in a few words, for messages."""
    if not isinstance(record, dict):
        return "an unrecorded CPU"
    return f"{record.get('vendor', '?')} {record.get('model', '?')} " \
           f"({len(record.get('isa', []))} ISA flags)"


def _cpu_ok(record) -> bool:
    return record is None or (
        isinstance(record, dict) and isinstance(record.get("vendor"), str)
        and isinstance(record.get("model"), str) and isinstance(record.get("isa"), list)
        and all(isinstance(f, str) for f in record["isa"])
        and (record.get("threads") is None or type(record.get("threads")) is int))


def _package_json(folder: Path, name: str) -> dict:
    """One JSON object of a package; a missing, unreadable or garbled file is a BadInputError."""
    path = folder / name
    if not path.is_file():
        raise BadInputError(f"{folder}: not a predictor package (missing {name})")
    try:
        with open(path, "rb") as f:
            raw = f.read(_PACKAGE_MAX_BYTES + 1)
    except OSError as err:
        raise BadInputError(f"{path}: cannot read the predictor package file: "
                            f"{err.strerror}") from err
    try:
        doc = json.loads(raw) if len(raw) <= _PACKAGE_MAX_BYTES else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise BadInputError(f"{path}: predictor package file is damaged (not a JSON object)")
    return doc


def _weights_ok(table, names: frozenset | None) -> bool:
    """A dict of feature name (one of `names`, any if None) to a finite number."""
    return isinstance(table, dict) and all(
        isinstance(k, str) and (names is None or k in names)
        and type(v) in (int, float) and math.isfinite(v) for k, v in table.items())


def fit_fallback(designs: Sequence[Sequence[Unit]], latency_ms: Sequence[float],
                 model_ms: float) -> tuple[dict[str, float], dict] | None:
    """The memory-traffic fallback (`FALLBACK_BASIS` weights) and its meta (designs, kinds,
    held-out error), fitted on the designs made of kernels that read each input element once
    (element-wise, data movement, global pools; not window ops such as MaxPool or LRN, which
    cost several times their traffic and have regressors of their own): each is the
    equation `latency - model constant = sum of its kernels' (a + b * bytes)`, solved by
    non-negative least squares on relative errors. The error is measured as the fallback is
    used, on kinds it has not seen: each kind's designs (by their costliest kernel's kind)
    are predicted by a fit on the others; per design |predicted - measured| / measured of the
    kernels' part (latency - model constant). None when fewer than 3 kinds qualify."""
    rows, ys, groups = [], [], []
    for units, y in zip(designs, latency_ms, strict=True):
        if not units or y <= model_ms or any(u.cls in COMPUTE_CLASSES or u.cls == "LRN"
                                             or u.k_area > 1 for u in units):
            continue
        f = [fallback_features(u) for u in units]
        rows.append([sum(x[name] for x in f) for name in FALLBACK_BASIS])
        ys.append(y - model_ms)
        groups.append(max(units, key=lambda u: u.in_elems + u.out_elems).kind)
    kinds = sorted(set(groups))
    if len(kinds) < 3:
        return None
    X, y, groups = np.array(rows), np.array(ys), np.array(groups)
    pred = np.empty(len(y))
    for kind in kinds:
        test = groups == kind
        pred[test] = X[test] @ _solve(X[~test], y[~test])
    rel = np.abs(pred - y) / y
    weights = dict(zip(FALLBACK_BASIS, map(float, _solve(X, y)), strict=True))
    meta = {"basis": list(FALLBACK_BASIS), "designs": int(len(y)), "kinds": kinds,
            "held_out": {"kinds": len(kinds), "median_abs_rel_err": round(float(np.median(rel)), 4),
                         "p90_abs_rel_err": round(float(np.percentile(rel, 90)), 4),
                         "note": "leave one kind out: each kind priced by a fit on the others"}}
    return weights, meta


def _design_matrix(designs: Sequence[Sequence[Unit]], columns) -> np.ndarray:
    index = {c: i for i, c in enumerate(columns)}
    X = np.zeros((len(designs), len(columns)))
    for r, units in enumerate(designs):
        context = context_of(units)
        for u in units:
            for name, value in zip(basis_of(u.cls), _vector(u, context), strict=True):
                X[r, index[(u.kind, name)]] += value
        for name in MODEL_BASIS:
            X[r, index[("", name)]] = 1.0
    return X


def _solve(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative errors, columns scaled to unit norm."""
    A = X / y[:, None]
    norms = np.linalg.norm(A, axis=0)
    norms[norms == 0] = 1.0
    return nnls(A / norms, np.ones(len(y))) / norms


def _cross_validate(X: np.ndarray, y: np.ndarray, folds: int) -> dict:
    n = len(y)
    if n < 2 * folds:
        return {"folds": 0, "note": "too few designs for k-fold validation"}
    order = np.random.default_rng(0).permutation(n)
    pred = np.empty(n)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        pred[test] = X[test] @ _solve(X[train], y[train])
    return {"folds": folds, **_scores(y, pred)}


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    rel = np.abs(pred - y) / y
    return {"designs": int(len(y)), "median_abs_rel_err": round(float(np.median(rel)), 4),
            "p90_abs_rel_err": round(float(np.percentile(rel, 90)), 4),
            "within_10pct": round(float(np.mean(rel <= 0.10)), 4),
            "spearman": round(spearman(y, pred, undefined=float("nan")), 4)}


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as scipy's default)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a: Sequence[float], b: Sequence[float], undefined: float = 0.0) -> float:
    """Spearman rank correlation (ties get their average rank); `undefined` when either side
    is constant or has fewer than two values."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else undefined


def nnls(A: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """min ||Ax - b|| subject to x >= 0 (Lawson-Hanson active set)."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(A, 1) * max(m, n)
    max_iter = max_iter or 3 * n
    for _ in range(max_iter):
        w = A.T @ (b - A @ x)
        if passive.all() or np.max(np.where(passive, -np.inf, w)) <= tol:
            break
        passive[int(np.argmax(np.where(passive, -np.inf, w)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > tol):
                x = z
                break
            neg = passive & (z <= tol)
            alpha = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


def measured_units(rows, units_of_design: Callable[[str], list[Unit] | None],
                   progress: Callable[[int, int, str], None] | None = None
                   ) -> tuple[list[list[Unit]], list[float], list[str]]:
    """Measured designs as predictor input: (units per resolved design, their latencies, the
    designs `units_of_design` cannot resolve)."""
    designs, y, skipped = [], [], []
    for i, row in enumerate(rows):
        if progress:
            progress(i + 1, len(rows), row.design)
        units = units_of_design(row.design)
        if units is None:
            skipped.append(row.design)
            continue
        designs.append(units)
        y.append(row.latency_ms)
    return designs, y, skipped


def fit_rows(rows, units_of_design: Callable[[str], list[Unit] | None], meta: dict,
             progress: Callable[[int, int, str], None] | None = None) -> KernelPredictor:
    """Fit from measurement rows; designs `units_of_design` cannot resolve are skipped and
    listed in meta["training"]["skipped"]."""
    designs, y, skipped = measured_units(rows, units_of_design, progress)
    meta = dict(meta)
    meta.setdefault("training", {})["skipped"] = skipped
    meta["training"]["designs"] = len(designs)
    return KernelPredictor.fit(designs, y, meta)


def data_hash(path: str | os.PathLike) -> str:
    """The training data's digest as predictor packages record it."""
    from toolchain.files import sha256_file

    return "sha256:" + sha256_file(path)
