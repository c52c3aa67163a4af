"""Calibration data: the samples int8 ranges, pruning reconstruction and accuracy are measured on.

Format (the same in every command that takes `--calib`): a `.npz` file with
- `inputs`: one array N x <input shape without batch> for a single-input model, or
- one array per model input, keyed by the input's name (each with the same N);
- optional `labels`: int array of N class indices (accuracy is measured when present).
Arrays must have the model input's dtype and, after the leading N, its dimensions.

Without a file the documented fallback is `synthetic_calib`: seeded standard-normal inputs,
announced by a loud warning, because int8 ranges and reconstruction are then fit to noise and
accuracy is unmeasured.
"""
from __future__ import annotations

import logging
import os
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import BadInputError
from toolchain.ir import Graph

__all__ = ["CalibData", "load_calib", "synthetic_calib", "feeds", "SYNTHETIC_WARNING"]

logger = logging.getLogger(__name__)

SYNTHETIC_WARNING = ("WARNING: no calibration data (--calib): using {n} random inputs; int8 "
                     "ranges and pruning reconstruction are fit to noise and the accuracy of "
                     "the result is UNMEASURED")


@dataclass(frozen=True)
class CalibData:
    """N samples per model input (full arrays, N first), optional labels, where they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "synthetic"

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> CalibData:
        """The first n samples."""
        labels = None if self.labels is None else self.labels[:n]
        return CalibData({k: v[:n] for k, v in self.inputs.items()}, labels, self.source)


def _model_inputs(graph: Graph) -> dict[str, tuple[tuple, str]]:
    return {name: (tuple(graph.shape(name) or ()), graph.dtype(name)) for name in graph.inputs}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise BadInputError(f"{path}: no such calibration file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise BadInputError(f"{path}: not a .npz calibration file ({err})") from err


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
    return counts.pop()


def _check_labels(labels: np.ndarray, n: int, label: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
        raise BadInputError(f"{label}: 'labels' must be {n} integers (one per sample), got "
                            f"{labels.dtype.name} array of shape {list(labels.shape)}")
    return labels.astype(np.int64)


def load_calib(path: str | os.PathLike, graph: Graph) -> CalibData:
    """Read and validate a calibration file against the model's inputs (BadInputError if not)."""
    path = Path(path)
    arrays = _read_npz(path)
    inputs = _match_inputs(arrays, graph, str(path))
    n = _check(inputs, graph, str(path))
    labels = arrays.get("labels")
    labels = None if labels is None else _check_labels(labels, n, str(path))
    logger.info("calibration data %s: %d samples%s", path, n, ", labelled" if labels is not None
                else "")
    return CalibData(inputs, labels, str(path))


def synthetic_calib(graph: Graph, n: int = 32, seed: int = 0, warn: bool = True) -> CalibData:
    """The fallback without a file: seeded standard-normal (float) or 0/1 (integer) inputs."""
    if warn:
        print(SYNTHETIC_WARNING.format(n=n), file=sys.stderr)
        logger.warning(SYNTHETIC_WARNING.format(n=n))
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
    batch = max(1, int((graph.shape(graph.inputs[0]) or (1,))[0]))
    for start in range(0, len(calib) - batch + 1, batch):
        yield {k: v[start:start + batch] for k, v in calib.inputs.items()}
