"""Accuracy from calibration data: scores of a model, per-choice sensitivity, predicted drops.

Metric: with labels, top-1 accuracy (percent) on the calibration samples; without labels, top-1
agreement with the fp32 model (percent; the fp32 model scores 100), with the mean output cosine
similarity to fp32 reported beside it. A drop is in points: baseline score minus score.
Degenerate data: when the fp32 outputs do not vary with the inputs (relative spread below
DEGENERATE_SPREAD: 1000x float32 rounding, a floor that looks at no model's accuracy) or the
labels are all one class, accuracy cannot be measured with the data (every change would agree
100%); the metric is then "distortion": the mean relative L2 distance of the outputs from
fp32's, in percent (score = 100 - distortion, so a drop is the distortion in percent).

Sensitivity: each atomic change (one kernel's precision, or its width, or its kernel size; one
block skipped; one input resolution) is applied alone to the fp32 model and its drop measured
in onnxruntime on the calibration batch; what the optimizer adds up is `effective_drop`: the
measured drop floored at 0, plus a small weight on the output cosine lost. A combined kernel
choice (int8 and width 0.75) is predicted as the sum of its atomic drops, and a plan's
predicted drop as the sum over its choices - the additive model the exact solver needs.
Results are cached on disk (keyed by the model bytes, the calibration data, the sample count
and the fleetc version) and saved after every measurement, so an interrupted run resumes. The
cache entry is a folder (`drops.json` and its `digests.json`, replaced whole by rename, see
`toolchain.files`); a damaged one is measured again, with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from passes.resize_input import fit_to_shape
from toolchain.errors import BadInputError
from toolchain.files import (
    check_digests,
    owned_temp_dir,
    publish_dir,
    remove_dead_temps,
    write_digests,
)
from toolchain.space import Choice, Plan

__all__ = [
    "Score", "AccuracyEstimator", "SensitivityTable", "measure_sensitivity", "atomic_changes",
    "choice_key", "cache_key", "effective_drop", "COSINE_WEIGHT", "DEGENERATE_SPREAD",
    "degenerate_reason",
]

logger = logging.getLogger(__name__)

ORIGINAL = Choice()
COSINE_WEIGHT = 0.1   # points per percent of output cosine lost (see effective_drop)
CACHE_FORMAT = 3      # in the cache key: 3 = the distortion metric on degenerate data (2: an
#                       entry folder with digests, 1: a bare JSON file)
MAX_DISTORTION = 10.0      # relative L2 of one sample's output, capped (1000%): a change whose
#                            output overflows (NaN, inf) counts as this, so the sum stays finite
DEGENERATE_SPREAD = 1e-4   # relative spread of the fp32 outputs across samples below which they
#                            do not vary with the input (float32 rounding is ~1e-7)
_DROPS = "drops.json"
_TEMP_PREFIX = ".build-"


@dataclass(frozen=True)
class Score:
    metric: str              # "top1" (labels), "agreement" (with fp32) or "distortion"
    value: float             # the metric, percent (distortion: 100 - distortion)
    top1: float | None       # percent, when labels are given
    agreement: float         # top-1 agreement with fp32, percent
    cosine: float            # mean cosine similarity of the outputs to fp32's
    samples: int
    distortion: float = 0.0  # mean relative L2 distance of the outputs from fp32's, percent


class AccuracyEstimator:
    """Runs models in onnxruntime on the calibration batch and scores them against fp32."""

    def __init__(self, reference: onnx.ModelProto, inputs: dict[str, np.ndarray],
                 labels: np.ndarray | None = None, batch: int = 64, threads: int = 0) -> None:
        if not inputs:
            raise BadInputError("calibration data has no inputs")
        counts = {len(v) for v in inputs.values()}
        if len(counts) != 1:
            raise BadInputError(f"calibration inputs have different sample counts {counts}")
        self.samples = counts.pop()
        if labels is not None and len(labels) != self.samples:
            raise BadInputError(f"calibration labels: {len(labels)} for {self.samples} samples")
        self.inputs, self.labels = inputs, labels
        self.batch, self.threads = batch, threads
        self._batched = self._batching(reference)
        self._ref = self.outputs(reference)
        if labels is not None and self._ref.ndim != 2:
            raise BadInputError(f"labels given but the model output has shape "
                                f"{self._ref.shape}; top-1 needs (samples, classes)")
        self.degenerate = degenerate_reason(self._ref, labels)
        self.metric = "distortion" if self.degenerate else \
            "top1" if labels is not None else "agreement"
        self.baseline = self._score(self._ref)

    def outputs(self, model: onnx.ModelProto) -> np.ndarray:
        """The model's first output over every sample, batched (inputs resized if needed).

        A model with a fixed batch of 1 (the IR fixes it) runs as a copy with a symbolic batch
        (`_with_free_batch`, reshapes that bake the 1 in included) when the reference model's
        copy was shown to give the per-sample outputs (decided once, in `_batching`); else one
        sample at a time, so onnxruntime is never asked to run what fails."""
        free = _with_free_batch(model) if self._free_batch() else None
        if free is not None:
            try:
                return self._run(free, self.batch, strict=True)
            except (BadInputError, _BatchMismatchError) as err:
                logger.debug("free-batch run failed (%s); running per fixed batch", err)
        return self._run(model, None, strict=False)

    def _free_batch(self) -> bool:
        return getattr(self, "_batched", False)

    def _batching(self, reference: onnx.ModelProto) -> bool:
        """Whether the reference's free-batch copy runs two samples at once and gives what it
        gives them one at a time (onnxruntime's log silenced: a failure is expected here)."""
        free = _with_free_batch(reference)
        if free is None or self.samples < 2:
            return False
        two = AccuracyEstimator.__new__(AccuracyEstimator)
        two.inputs = {k: v[:2] for k, v in self.inputs.items()}
        two.samples, two.batch, two.threads = 2, 2, self.threads
        try:
            both = two._run(free, 2, strict=True, quiet=True)
        except (BadInputError, _BatchMismatchError) as err:
            logger.info("the model does not run batched (%s): one sample at a time",
                        str(err).splitlines()[0][:200])
            return False
        one = two._run(reference, None, strict=False)
        scale = max(float(np.abs(one).max()), 1e-6)
        return bool(np.allclose(both, one, rtol=1e-3, atol=1e-4 * scale))

    def _run(self, model: onnx.ModelProto, step: int | None, strict: bool,
             quiet: bool = False) -> np.ndarray:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 4 if quiet else 3
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
        except Exception as err:
            raise BadInputError(f"onnxruntime cannot load the model: "
                                f"{str(err).splitlines()[0]}") from err
        feeds_meta = sess.get_inputs()
        missing = [i.name for i in feeds_meta if i.name not in self.inputs]
        if missing:
            raise BadInputError(f"calibration data has no array for model input(s) {missing} "
                                f"(it has {sorted(self.inputs)})")
        if step is None:
            dim0 = feeds_meta[0].shape[0] if feeds_meta[0].shape else None
            step = dim0 if isinstance(dim0, int) and dim0 > 0 else self.batch
        chunks = []
        run_opts = ort.RunOptions()
        run_opts.log_severity_level = opts.log_severity_level
        for start in range(0, self.samples, step):
            feeds = {i.name: self._feed(i, start, step) for i in feeds_meta}
            try:
                out = sess.run([sess.get_outputs()[0].name], feeds, run_opts)[0]
            except Exception as err:
                if strict:
                    raise _BatchMismatchError(str(err)) from err
                raise
            n = min(step, self.samples - start)
            if strict and (out.ndim == 0 or out.shape[0] != len(next(iter(feeds.values())))):
                raise _BatchMismatchError(f"output {out.shape} for a batch of {n}")
            chunks.append(out[:n])
        return np.concatenate(chunks).reshape(self.samples, -1)

    def _feed(self, meta, start: int, step: int) -> np.ndarray:
        x = self.inputs[meta.name][start:start + step]
        if len(x) < step and isinstance(meta.shape[0], int):
            pad = np.zeros((step - len(x),) + x.shape[1:], x.dtype)   # fixed batch: pad
            x = np.concatenate([x, pad])
        return fit_to_shape(x, meta.shape)   # a plan may have changed the input resolution

    def _score(self, out: np.ndarray) -> Score:
        ref = self._ref
        agree = float(np.mean(out.argmax(1) == ref.argmax(1)) * 100)
        num = np.sum(out * ref, axis=1)
        den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
        cosine = float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)))
        top1 = None
        if self.labels is not None:
            top1 = float(np.mean(out.argmax(1) == self.labels.reshape(-1)) * 100)
        ref_norm = np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
        with np.errstate(over="ignore", invalid="ignore"):
            rel = np.linalg.norm(out - ref, axis=1) / ref_norm
        rel = np.minimum(np.nan_to_num(rel, nan=MAX_DISTORTION, posinf=MAX_DISTORTION),
                         MAX_DISTORTION)   # a non-finite output is as bad as it gets
        distortion = float(np.mean(rel) * 100)
        value = {"top1": top1, "agreement": agree, "distortion": 100.0 - distortion}[self.metric]
        return Score(self.metric, value, top1, agree, cosine, self.samples, distortion)

    def score(self, model: onnx.ModelProto) -> Score:
        return self._score(self.outputs(model))

    def drop(self, model: onnx.ModelProto) -> float:
        """Points lost against the fp32 model (negative = better on this data)."""
        return self.baseline.value - self.score(model).value


def degenerate_reason(ref: np.ndarray, labels: np.ndarray | None) -> str | None:
    """Why accuracy cannot be measured on this data (None if it can): labels of one class, or
    fp32 outputs (samples x values) that do not vary with the input."""
    if labels is not None and len(np.unique(labels)) < 2:
        return "the calibration labels are all one class"
    if len(ref) < 2:
        return None
    mean = ref.mean(axis=0)
    spread = float(np.linalg.norm(ref - mean, axis=1).max() / max(np.linalg.norm(mean), 1e-30))
    if spread < DEGENERATE_SPREAD:
        return (f"the fp32 outputs do not vary with the inputs (relative spread {spread:.2g} "
                f"across {len(ref)} samples)")
    return None


class _BatchMismatchError(Exception):
    """The free-batch copy of a model does not run per batch."""


def _with_free_batch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose inputs and outputs have a symbolic first dimension (None if it has none
    fixed to 1), and whose Reshapes to a constant shape starting with 1 start with -1 instead
    (0 - the input's first dimension - when the shape already has a -1): exporters and the
    opset converter bake the batch of 1 into such shapes. Intermediate shape annotations are
    dropped so nothing contradicts it. Whether the copy computes the same is checked by the
    caller (`AccuracyEstimator._batching`)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    ios = [vi for vi in list(g.input) + list(g.output) if vi.name not in inits]
    if not ios or any(not vi.type.tensor_type.shape.dim
                      or vi.type.tensor_type.shape.dim[0].dim_value != 1 for vi in ios):
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for vi in list(copy.graph.input) + list(copy.graph.output):
        if vi.name not in inits:
            vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    del copy.graph.value_info[:]
    _free_reshapes(copy.graph)
    return copy


def _free_reshapes(graph: onnx.GraphProto) -> None:
    """Reshape shapes [1, ...] (an initializer or a Constant's `value`) -> [-1 or 0, ...], each
    node given its own new initializer."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    for k, node in enumerate(graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or any(
                a.name == "allowzero" and a.i for a in node.attribute):
            continue
        tensor = inits.get(node.input[1]) or consts.get(node.input[1])
        if tensor is None:
            continue
        shape = numpy_helper.to_array(tensor).astype(np.int64).copy()
        if shape.ndim != 1 or not len(shape) or shape[0] != 1:
            continue
        shape[0] = 0 if (shape == -1).any() else -1
        name = f"{node.input[1]}__free_batch_{k}"
        graph.initializer.append(numpy_helper.from_array(shape, name))
        node.input[1] = name


def choice_key(kind: str, name: str, value) -> str:
    """Cache key of one atomic change: ("kernel", "conv1", "int8"), ("block", "add3", "skip")."""
    return f"{kind}|{name}|{value}"


def atomic_changes(choice: Choice) -> list[str]:
    """The atomic parts of a kernel choice, as the values used in sensitivity keys."""
    parts = []
    if choice.precision != "fp32":
        parts.append(choice.precision)
    if choice.width != 1.0:
        parts.append(f"w{choice.width:g}")
    if choice.kernel_size is not None:
        parts.append(f"k{choice.kernel_size}")
    return parts


@dataclass(frozen=True)
class SensitivityTable:
    """Measured drop (points) of every atomic change; plans are predicted by summing."""

    drops: dict[str, float]
    baseline: Score

    def kernel(self, name: str, choice: Choice) -> float:
        return sum(self.drops[choice_key("kernel", name, p)] for p in atomic_changes(choice))

    def block(self, name: str) -> float:
        return self.drops[choice_key("block", name, "skip")]

    def resolution(self, size: int, original: int) -> float:
        return 0.0 if size == original else self.drops[choice_key("resolution", "input", size)]

    def plan(self, plan: Plan, original_resolution: int | None = None) -> float:
        total = sum(self.kernel(k, c) for k, c in plan.kernels.items())
        total += sum(self.block(b) for b in plan.skip_blocks)
        for shape in plan.input_shape.values():
            if original_resolution is not None:
                total += self.resolution(shape[2], original_resolution)
        return total


def _plans_to_measure(kernels: dict[str, list[Choice]], blocks: Iterable[str],
                      resolutions: Iterable[int], input_name: str | None,
                      input_shape: tuple[int, ...] | None) -> list[tuple[str, Plan]]:
    todo: dict[str, Plan] = {}
    for name, choices in kernels.items():
        for c in choices:
            for part in atomic_changes(c):
                single = Choice(precision=part) if part in ("fp16", "int8") else (
                    Choice(width=float(part[1:])) if part.startswith("w") else
                    Choice(kernel_size=int(part[1:])))
                todo.setdefault(choice_key("kernel", name, part), Plan(kernels={name: single}))
    for b in blocks:
        todo[choice_key("block", b, "skip")] = Plan(skip_blocks=[b])
    for r in resolutions:
        if input_name and input_shape and r != input_shape[2]:
            shape = [input_shape[0], input_shape[1], r, r]
            todo[choice_key("resolution", "input", r)] = Plan(input_shape={input_name: shape})
    return sorted(todo.items())


def measure_sensitivity(estimator: AccuracyEstimator, apply: Callable[[Plan], onnx.ModelProto],
                        kernels: dict[str, list[Choice]], blocks: Iterable[str] = (),
                        resolutions: Iterable[int] = (), input_name: str | None = None,
                        input_shape: tuple[int, ...] | None = None,
                        cache: Path | None = None,
                        progress: Callable[[int, int, str], None] | None = None
                        ) -> SensitivityTable:
    """Measure the drop of every atomic change (see the module doc); `cache` is the entry
    folder (created or replaced after every measurement)."""
    todo = _plans_to_measure(kernels, blocks, resolutions, input_name, input_shape)
    raw: dict[str, list[float]] = _read_cache(cache)
    for i, (key, plan) in enumerate(todo):
        if key in raw:
            continue
        if progress:
            progress(i + 1, len(todo), key)
        score = estimator.score(apply(plan))
        raw[key] = [round(estimator.baseline.value - score.value, 6), round(score.cosine, 8)]
        if cache is not None:
            _write_cache(cache, raw)
    return SensitivityTable({k: effective_drop(*raw[k], metric=estimator.metric)
                             for k, _ in todo}, estimator.baseline)


def effective_drop(drop: float, cosine: float, metric: str = "agreement") -> float:
    """What the optimizer adds up for one change: the measured drop, never below 0 (a single
    change that scores better on the calibration set is noise, and summing such gains
    over-promises), plus COSINE_WEIGHT points per percent of output cosine lost (a graded
    signal where the top-1 metric does not move). For the distortion metric the drop is
    already graded (percent relative L2): it alone."""
    if metric == "distortion":
        return max(drop, 0.0)
    return max(drop, 0.0) + COSINE_WEIGHT * 100.0 * max(0.0, 1.0 - cosine)


def _read_cache(entry: Path | None) -> dict[str, list[float]]:
    """The drops measured before, from the cache entry folder. A damaged entry (a file
    missing, truncated or changed against its digests, or drops.json not a table of number
    pairs) is a miss with a warning: everything is measured again and the entry replaced.
    Build folders left beside it by killed runs are removed here."""
    if entry is None:
        return {}
    remove_dead_temps(entry.parent, _TEMP_PREFIX)
    if not os.path.lexists(entry):
        return {}
    for _ in range(3):   # a concurrent run may be replacing the entry
        raw, problem = _load_entry(entry)
        if problem is None:
            return raw
    logger.warning("sensitivity cache %s is damaged (%s): measuring again", entry, problem)
    return {}


def _load_entry(entry: Path) -> tuple[dict[str, list[float]], str | None]:
    problem = check_digests(entry)
    if problem is not None:
        return {}, problem
    try:
        data = json.loads((entry / _DROPS).read_bytes())
        return {str(k): [float(v[0]), float(v[1])] for k, v in data.items()}, None
    except (OSError, ValueError, RecursionError, AttributeError, TypeError, IndexError,
            KeyError):
        return {}, f"{_DROPS} is not a table of measured drops"


def _write_cache(entry: Path, raw: dict[str, list[float]]) -> None:
    """Replace the entry by one holding `raw`: written in a `.build-<pid>-*` folder beside it,
    digests last, renamed into place."""
    with owned_temp_dir(entry.parent, _TEMP_PREFIX) as tmp:
        new = tmp / "entry"
        new.mkdir()
        (new / _DROPS).write_text(json.dumps(raw, indent=0, sort_keys=True))
        write_digests(new)
        publish_dir(new, entry, tmp)


def cache_key(model_bytes: bytes, calib_digest: str, samples: int) -> str:
    """Name of the sensitivity cache entry (a folder) for one model and calibration set."""
    try:
        version = md.version("fleetc")
    except md.PackageNotFoundError:
        version = "dev"
    h = hashlib.sha256(model_bytes)
    h.update(f"|{calib_digest}|{samples}|{version}|{CACHE_FORMAT}".encode())
    return h.hexdigest()[:32]
