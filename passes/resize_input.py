"""Input resolution: run a fully convolutional model at another spatial input size.

Rule: the input's declared shape becomes the requested one and shapes are re-inferred; weights
are untouched. Pre-conditions: a single NCHW input whose spatial dimensions are pooled away by
a global pooling before any reshape or matrix product (`discover_space`'s resolution rule);
only H and W may change, to sizes >= 1 (else BadInputError). Post-condition: the graph
outputs keep their shapes; calibration images must be resized too (`resize_images`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from passes.discover_space import input_resolutions
from passes.infer_shapes import infer_shapes
from toolchain.errors import BadInputError
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["ResizeInputPass", "resize_input", "resize_images", "fit_to_shape"]

logger = logging.getLogger(__name__)


def resize_input(graph: Graph, name: str, shape: tuple[int, ...]) -> bool:
    """Give input `name` the NCHW `shape`; False if it already has it."""
    old = graph.shape(name)
    if name not in graph.inputs or old is None:
        raise BadInputError(f"input_shape: {name!r} is not an input of this model "
                            f"(inputs: {graph.inputs})")
    shape = tuple(int(d) for d in shape)
    if shape == tuple(old):
        return False
    if len(shape) != 4 or shape[:2] != tuple(old[:2]) or min(shape) < 1:
        raise BadInputError(f"input_shape: {name}={list(shape)}: only the spatial size of "
                            f"{list(old)} may change")
    if input_resolutions(graph)[0] != name:
        raise BadInputError("input_shape: the model is not fully convolutional with a global "
                            "pooling before its classifier; its input size cannot change")
    outputs = {t: graph.shape(t) for t in graph.outputs}
    graph.tensors[name] = TensorInfo(shape, graph.dtype(name))
    infer_shapes(graph)
    changed = [t for t in graph.outputs if graph.shape(t) != outputs[t]]
    if changed:
        raise BadInputError(f"input_shape: {name}={list(shape)} changes the output shape of "
                            f"{changed}")
    return True


def resize_images(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of N x C x H x W images (half-pixel centres, as ONNX Resize linear)."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(x.dtype)

    (r0, r1, fr), (c0, c1, fc) = axis(x.shape[2], height), axis(x.shape[3], width)
    rows = x[:, :, r0, :] * (1 - fr)[:, None] + x[:, :, r1, :] * fr[:, None]
    return (rows[:, :, :, c0] * (1 - fc) + rows[:, :, :, c1] * fc).astype(x.dtype)


def fit_to_shape(x: np.ndarray, shape) -> np.ndarray:
    """An NCHW batch resized to `shape`'s spatial size when that is known (positive integers)
    and differs from the batch's; any other array as it is."""
    if x.ndim == 4 and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]) \
            and tuple(shape[2:]) != x.shape[2:]:
        return resize_images(x, shape[2], shape[3])
    return x


@dataclass
class ResizeInputPass(Pass):
    """Set the plan's input shapes (spatial size only) and re-infer every shape."""

    name = "resize_input"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = [n for n, s in sorted(self.shapes.items()) if resize_input(graph, n, s)]
        return PassResult(changed=bool(changed), stats={"inputs_resized": len(changed)})
