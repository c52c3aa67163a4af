"""Calibration data: the samples int8 ranges, pruning reconstruction and accuracy are measured on.

Format (the same in every command that takes `--calib`): a `.npz` file with
- `inputs`: one array N x <input shape without batch> for a single-input model, or
- one array per model input, keyed by the input's name (each with the same N);
- optional `labels`: int array of N class indices (accuracy is measured when present).
Arrays must have the model input's dtype (float64 data for a float32 input is cast, with a
note) and, after the leading N, its dimensions; every value finite and at most 1e6 in
magnitude (int8 ranges and pruning reconstruction overflow float32 beyond). N is at least
MIN_CALIB_SAMPLES (8) and at least the model's batch size: with fewer, int8 ranges and pruning
reconstruction rest on a handful of images and top-1 accuracy moves in steps of 12.5 points or
more (100+ labelled samples are recommended for accuracy limits around 1 point). Labels are
class indices of the model's output: 0 <= label < the number of classes.

Without a file the documented fallback is `synthetic_calib`: seeded standard-normal inputs,
announced by a loud warning, because int8 ranges and reconstruction are then fit to noise and
accuracy is unmeasured.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError
from toolchain.files import regular_file
from toolchain.ir import Graph

__all__ = ["CalibData", "load_calib", "synthetic_calib", "feeds", "SYNTHETIC_WARNING",
           "MIN_CALIB_SAMPLES", "MAX_CALIB_BYTES", "MAX_CALIB_ABS"]

logger = logging.getLogger(__name__)

MIN_CALIB_SAMPLES = 8
MAX_CALIB_BYTES = 4 << 30   # uncompressed arrays of one .npz
MAX_CALIB_ABS = 1e6         # int8 ranges and reconstruction overflow float32 far beyond it

SYNTHETIC_WARNING = ("WARNING: no calibration data (--calib): using {n} random inputs; int8 "
                     "ranges and pruning reconstruction are fit to noise and the accuracy of "
                     "the result is UNMEASURED")


@dataclass(frozen=True)
class CalibData:
    """N samples per model input (full arrays, N first), optional labels, where they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "synthetic"
    # Activation ranges (tensor -> (min, max)) the fp32 model reaches on these samples, when
    # known: the int8 rewrite of one kernel of that model uses them instead of calibrating
    # again (compile's sensitivity step; passes/quantize.py). Never for other plans.
    int8_ranges: dict[str, tuple[float, float]] | None = None
    # The same for pruning: each consumer's input statistics on the fp32 model
    # (`passes.prune_channels.reference_grams`), for the pruning of one kernel of that model.
    prune_grams: dict | None = None

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> CalibData:
        """The first n samples."""
        labels = None if self.labels is None else self.labels[:n]
        return CalibData({k: v[:n] for k, v in self.inputs.items()}, labels, self.source)

    def with_ranges(self, ranges: dict[str, tuple[float, float]] | None) -> CalibData:
        return CalibData(self.inputs, self.labels, self.source, ranges, self.prune_grams)

    def with_grams(self, grams: dict | None) -> CalibData:
        return CalibData(self.inputs, self.labels, self.source, self.int8_ranges, grams)


def _model_inputs(graph: Graph) -> dict[str, tuple[tuple, str]]:
    return {name: (tuple(graph.shape(name) or ()), graph.dtype(name)) for name in graph.inputs}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz file: a regular file, a zip of .npy members (no other members, no
    pickles) whose headers match their data and declare at most MAX_CALIB_BYTES in all - read
    before any array is, so a lying header never allocates."""
    regular_file(path, "calibration file")
    try:
        with zipfile.ZipFile(path) as zf:
            size = sum(_member_bytes(zf, info, path) for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise BadInputError(f"{path}: not a .npz calibration file ({_npy_hint(path, err)})"
                            ) from None
    if size > MAX_CALIB_BYTES:
        raise BadInputError(f"{path}: {size / 1e9:.1f} GB of arrays; a calibration file holds "
                            f"at most {MAX_CALIB_BYTES / 1e9:.0f} GB")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise BadInputError(f"{path}: not a .npz calibration file ({err})") from None


def _member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> int:
    """Bytes of one member's array, from its .npy header; BadInputError unless it is a .npy
    array (format 1.0 or 2.0, no objects) holding exactly the data its header declares."""
    where = f"{path}: member {info.filename!r}"
    if info.file_size > MAX_CALIB_BYTES:
        raise BadInputError(f"{where}: {info.file_size / 1e9:.1f} GB unpacked; a calibration "
                            f"file holds at most {MAX_CALIB_BYTES / 1e9:.0f} GB")
    if not info.filename.endswith(".npy"):
        raise BadInputError(f"{where}: not a .npy array (np.savez writes one per key)")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise BadInputError(f"{where}: .npy format {version} (1.0 or 2.0 expected)")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        header = f.tell()
    if dtype.hasobject:
        raise BadInputError(f"{where}: an array of Python objects (pickles are not read)")
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - header:
        raise BadInputError(f"{where}: its header declares {list(shape)} {dtype} "
                            f"({declared} bytes), it holds {info.file_size - header}")
    return declared


def _npy_hint(path: Path, err: Exception) -> str:
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            return ("a single .npy array; save a .npz: np.savez(path, inputs=x, labels=y)")
    return str(err)


def _match_inputs(arrays: dict[str, np.ndarray], graph: Graph, label: str) -> dict:
    expected = _model_inputs(graph)
    if "inputs" in arrays:
        if len(expected) != 1:
            raise BadInputError(f"{label}: key 'inputs' is only for a single-input model; this "
                                f"model has inputs {sorted(expected)}: give one key per input")
        return {next(iter(expected)): arrays["inputs"]}
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise BadInputError(f"{label}: no data for model input(s) {missing} (keys: "
                            f"{sorted(arrays)}; use 'inputs' for a single-input model)")
    return {name: arrays[name] for name in expected}


def _cast(inputs: dict[str, np.ndarray], graph: Graph, label: str) -> dict[str, np.ndarray]:
    """float64 data for a float32 input, cast with a note (numpy's default dtype is float64)."""
    out = dict(inputs)
    for name, arr in inputs.items():
        if arr.dtype == np.float64 and _model_inputs(graph)[name][1] == "float32":
            logger.warning("%s: input %r is float64; cast to float32, the model's dtype", label,
                           name)
            with np.errstate(over="ignore"):   # values beyond float32 become inf: refused next
                out[name] = arr.astype(np.float32)
    return out


def _check_values(name: str, arr: np.ndarray, label: str) -> None:
    """Finite values of at most MAX_CALIB_ABS in magnitude (float inputs)."""
    if arr.dtype.kind not in "fc":
        return
    flat = arr.reshape(len(arr), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise BadInputError(f"{label}: input {name!r} has NaN or infinite values in "
                            f"{int(bad.sum())} of {len(arr)} samples (the first: sample "
                            f"{int(np.argmax(bad))}); calibration data must be finite")
    big = (np.abs(flat) > MAX_CALIB_ABS).any(axis=1)
    if big.any():
        raise BadInputError(f"{label}: input {name!r} has values beyond +-{MAX_CALIB_ABS:g} in "
                            f"{int(big.sum())} of {len(arr)} samples (the first: sample "
                            f"{int(np.argmax(big))}); float32 arithmetic would overflow")


def _check(inputs: dict[str, np.ndarray], graph: Graph, label: str) -> int:
    counts = set()
    for name, arr in inputs.items():
        shape, dtype = _model_inputs(graph)[name]
        if arr.dtype.name != dtype:
            raise BadInputError(f"{label}: input {name!r} has dtype {arr.dtype.name}, the model "
                                f"expects {dtype}")
        if arr.ndim != len(shape) or tuple(arr.shape[1:]) != tuple(shape[1:]):
            want = "N x " + " x ".join(str(d) for d in shape[1:])
            raise BadInputError(f"{label}: input {name!r} has shape {list(arr.shape)}, the model "
                                f"expects {want}")
        counts.add(arr.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise BadInputError(f"{label}: every input needs the same, non-zero number of samples "
                            f"(got {sorted(counts)})")
    n = counts.pop()
    least = max(MIN_CALIB_SAMPLES, _batch(graph))
    if n < least:
        raise BadInputError(f"{label}: {n} sample(s); calibration needs at least {least} "
                            "(int8 ranges, pruning reconstruction and accuracy are measured on "
                            "them)")
    for name, arr in inputs.items():
        _check_values(name, arr, label)
    return n


def _batch(graph: Graph) -> int:
    """The model's batch size (the IR fixes it, usually to 1)."""
    return max(1, int((graph.shape(graph.inputs[0]) or (1,))[0]))


def _classes(graph: Graph) -> int | None:
    """Classes of a classifier's output (N x C), or None when the output is not one."""
    shape = graph.shape(graph.outputs[0]) if graph.outputs else None
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        return None
    return shape[1]


def _check_labels(labels: np.ndarray, n: int, graph: Graph, label: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
        raise BadInputError(f"{label}: 'labels' must be {n} integers (one per sample), got "
                            f"{labels.dtype.name} array of shape {list(labels.shape)}")
    classes = _classes(graph)
    wrong = labels < 0 if classes is None else (labels < 0) | (labels >= classes)
    if wrong.any():
        i = int(np.argmax(wrong))
        within = f"0..{classes - 1} (the model has {classes} classes)" if classes else ">= 0"
        raise BadInputError(f"{label}: 'labels' must be class indices {within}; sample {i} has "
                            f"{labels[i]}")
    return labels.astype(np.int64)


def load_calib(path: str | os.PathLike, graph: Graph) -> CalibData:
    """Read and validate a calibration file against the model's inputs (BadInputError if not)."""
    path = Path(path)
    arrays = _read_npz(path)
    inputs = _cast(_match_inputs(arrays, graph, str(path)), graph, str(path))
    n = _check(inputs, graph, str(path))
    labels = arrays.get("labels")
    labels = None if labels is None else _check_labels(labels, n, graph, str(path))
    logger.info("calibration data %s: %d samples%s", path, n, ", labelled" if labels is not None
                else "")
    return CalibData(inputs, labels, str(path))


def synthetic_calib(graph: Graph, n: int = 32, seed: int = 0, warn: bool = True) -> CalibData:
    """The fallback without a file: seeded standard-normal (float) or 0/1 (integer) inputs."""
    if warn:    # printed, not also logged: the CLI's log handler would show it twice
        print(SYNTHETIC_WARNING.format(n=n), file=sys.stderr)
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, (shape, dtype) in _model_inputs(graph).items():
        dims = (n, *shape[1:])
        if np.dtype(dtype).kind == "f":
            inputs[name] = rng.standard_normal(dims).astype(dtype)
        else:
            inputs[name] = rng.integers(0, 2, dims).astype(dtype)
    return CalibData(inputs)


def feeds(calib: CalibData, graph: Graph) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts with the model's own batch size (the IR fixes the batch, usually to 1)."""
    batch = _batch(graph)
    for start in range(0, len(calib) - batch + 1, batch):
        yield {k: v[start:start + batch] for k, v in calib.inputs.items()}
