"""Kernel shrink: a KxK Conv (K = 5 or 7) becomes kxk (k < K, odd) by keeping the kernel's centre.

Rule (as once-for-all's elastic kernels): W'[:, :, i, j] = W[:, :, i + d, j + d] with
d = (K - k) / 2; explicit pads shrink by d on every side, so the output shape is unchanged
(SAME_* auto_pad keeps it by itself). Pre-conditions (`common.shrink_refusal`, the rule
discover_space offers sizes by): a square Conv with dilation 1, odd k < K, and pads >= d or
SAME_* - auto_pad=VALID has no pads to give back (else BadInputError). Post-condition: every
tensor keeps its shape; the outputs change (the border taps are dropped), facts
"costs"/"kernels"/"space" are stale.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from passes.common import shrink_refusal
from toolchain.errors import BadInputError
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["ShrinkKernelsPass", "shrink_kernel"]

logger = logging.getLogger(__name__)


def shrink_kernel(graph: Graph, name: str, size: int) -> bool:
    """Shrink Conv `name` to size x size; False if it already has that size."""
    refusal = shrink_refusal(graph, name, size)
    if refusal:
        raise BadInputError(f"kernel_size: {refusal}")
    d = graph.node(name)
    attrs, weight = d["attrs"], d["inputs"][1]
    W = graph.initializers[weight]
    K = W.shape[2]
    if size == K:
        return False
    cut = (K - size) // 2
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    new_weight = graph.fresh_name(f"{weight}.k{size}")
    graph.initializers[new_weight] = W[:, :, cut:K - cut, cut:K - cut].copy()
    graph.tensors[new_weight] = TensorInfo(graph.initializers[new_weight].shape, W.dtype.name)
    graph.set_input(name, 1, new_weight)
    attrs["kernel_shape"] = [size, size]
    if "pads" in attrs:
        attrs["pads"] = [p - cut for p in pads]
    graph.remove_unused()
    return True


@dataclass
class ShrinkKernelsPass(Pass):
    """Cut the Convs named in the plan down to their centre kxk taps."""

    name = "shrink_kernels"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    sizes: dict[str, int] = field(default_factory=dict)  # Conv (kernel) name -> new kernel size

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        shrunk = [n for n, k in sorted(self.sizes.items()) if shrink_kernel(graph, n, k)]
        return PassResult(changed=bool(shrunk), stats={"kernels_shrunk": len(shrunk)})
