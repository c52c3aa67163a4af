"""Design-space discovery: the rewrite options that are legal per kernel, applied to none.

Rules (each option also needs the target to support it; the target filters precisions):
- precision fp32 / fp16 / int8: every compute kernel (Conv / Gemm / MatMul with a weight).
- width 1.0 / 0.75 / 0.5 (channels by `pruned_channels`): a Conv with group 1 or a Gemm of at
  least 4 output channels that prune_channels can prune - the one rule `common.prune_site`:
  from the anchor's output (a fused bias or scale included), the channels reach, only through
  per-channel ops (BatchNormalization, activations, bias / scale by a weight that broadcasts
  along the channel axis only, pooling, Flatten of a 1x1 map) and depthwise Convs (which
  shrink with them), nothing but the input channels of other Convs (group 1) or Gemms.
  Channels tied by an Add, Concat, a gating Mul, a reshape or a graph output are not pruned
  (all-or-nothing tying is left to the prune pass's future versions).
- kernel_size: a square Conv kernel of 5 or 7 (dilation 1) may shrink to the centre 3 (and 5)
  when shrink_kernels can keep its output shape (`common.shrink_refusal`): explicit pads that
  shrink by the same amount, or SAME_* auto_pad; never VALID, which has no pads to give back.
- skip block: an Add of two equal-shaped tensors x and f(x), where f's nodes read nothing but
  x, weights and each other and nothing outside reads them; the block takes the Add's name.
- resolution: a single NCHW input with H == W, spatial dims pooled away by a global pooling
  before any reshape or matrix product; sizes H x (1, 7/8, 3/4, 5/8, 1/2), multiples of 8.
Requires "kernels"; produces "space" (graph.space).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from passes.common import prune_site, shrink_refusal
from toolchain.errors import BadInputError
from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassResult
from toolchain.space import PRECISIONS, WIDTHS, Kernel, Space, pruned_channels

__all__ = ["DiscoverSpacePass", "discover_space", "skippable_blocks", "prunable",
           "input_resolutions"]

logger = logging.getLogger(__name__)

_MAX_BLOCK_NODES = 64
_MIN_PRUNE_CHANNELS = 4  # narrower kernels keep all their channels: little to save


def _prunable_channels(graph: Graph, kernel: Kernel) -> int | None:
    """The output channels of a kernel that prune_channels can prune (`prune_site` succeeds)
    and that has at least 4 of them, else None."""
    if kernel.op_type not in ("Conv", "Gemm"):
        return None
    try:
        channels = prune_site(graph, kernel.name).channels
    except BadInputError as err:
        logger.debug("no width for %s: %s", kernel.name, err)
        return None
    return channels if channels >= _MIN_PRUNE_CHANNELS else None


def prunable(graph: Graph, kernel: Kernel) -> bool:
    """True if discover_space offers widths for `kernel` (prune_channels then accepts them)."""
    return _prunable_channels(graph, kernel) is not None


def _widths(channels: int) -> list[float]:
    seen, out = set(), []
    for w in WIDTHS:
        c = pruned_channels(channels, w)
        if c not in seen:
            seen.add(c)
            out.append(w)
    return out


def _kernel_sizes(kernel: Kernel, graph: Graph) -> list[int]:
    ks = kernel.kernel_shape
    if kernel.op_type != "Conv" or len(ks) != 2 or ks[0] != ks[1] or ks[0] not in (5, 7):
        return []
    sizes = [k for k in (7, 5, 3) if k <= ks[0] and shrink_refusal(graph, kernel.name, k) is None]
    return sizes if len(sizes) > 1 else []


def _branch(graph: Graph, x: str, y: str) -> tuple[str, ...] | None:
    """Nodes computing y from x alone (plus weights), or None."""
    src = graph.producer(y)
    if src is None:
        return None
    nodes, stack = set(), [src]
    while stack:
        n = stack.pop()
        if n in nodes:
            continue
        nodes.add(n)
        if len(nodes) > _MAX_BLOCK_NODES:
            return None
        for t in graph.node(n)["inputs"]:
            if not t or t == x or graph.is_weight(t):
                continue
            p = graph.producer(t)
            if p is None:
                return None
            stack.append(p)
    for n in nodes:
        for t in graph.node(n)["outputs"]:
            if t in graph.outputs:
                return None
            if t != y and any(u not in nodes for u in graph.consumers(t)):
                return None
    if len(graph.consumers(y)) != 1 or not any(x in graph.node(n)["inputs"] for n in nodes):
        return None
    order = {n: graph.node(n)["order"] for n in nodes}
    return tuple(sorted(nodes, key=order.get))


def skippable_blocks(graph: Graph) -> dict[str, tuple[str, ...]]:
    blocks = {}
    for name in graph.topo():
        d = graph.node(name)
        if d["op_type"] not in ("Add", "Sum") or len(d["inputs"]) != 2:
            continue
        a, b = d["inputs"]
        if graph.is_weight(a) or graph.is_weight(b) or a == b:
            continue
        sa, sb = graph.shape(a), graph.shape(b)
        if sa is None or sa != sb or not all(isinstance(s, int) for s in sa):
            continue
        branch = _branch(graph, a, b) or _branch(graph, b, a)
        if branch:
            blocks[name] = (*branch, name)
    return blocks


def input_resolutions(graph: Graph) -> tuple[str | None, list[int]]:
    if len(graph.inputs) != 1:
        return None, []
    name = graph.inputs[0]
    shape = graph.shape(name)
    if shape is None or len(shape) != 4 or shape[2] != shape[3] or shape[2] < 16:
        return None, []
    ops = {graph.op(n) for n in graph.nx}
    if not ops & {"GlobalAveragePool", "GlobalMaxPool"}:
        return None, []
    for n in graph.nx:
        d = graph.node(n)
        if d["op_type"] in ("Reshape", "Flatten", "Gemm", "MatMul", "Resize", "Upsample"):
            s = graph.shape(d["inputs"][0])
            if s is None or (len(s) == 4 and s[2] * s[3] != 1):
                return None, []
    size = shape[2]
    sizes = []
    for f in (1.0, 0.875, 0.75, 0.625, 0.5):
        r = size if f == 1.0 else max(8, int(round(size * f / 8)) * 8)
        if r not in sizes and r <= size:
            sizes.append(r)
    return name, sizes


def discover_space(graph: Graph, kernels: list[Kernel]) -> Space:
    space = Space()
    for k in kernels:
        if not k.is_compute:
            continue
        options: dict[str, list] = {"precision": list(PRECISIONS)}
        channels = _prunable_channels(graph, k)
        if channels is not None:
            options["width"] = _widths(channels)
        sizes = _kernel_sizes(k, graph)
        if sizes:
            options["kernel_size"] = sizes
        space.options[k.name] = options
    space.blocks = skippable_blocks(graph)
    space.input_name, space.resolutions = input_resolutions(graph)
    graph.space = space
    return space


@dataclass
class DiscoverSpacePass(Pass):
    """List each kernel's legal options, the skippable blocks and the input resolutions."""

    name = "discover_space"
    requires = frozenset({"kernels"})
    produces = frozenset({"space"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        space = discover_space(graph, graph.kernels)
        return PassResult(changed=False, stats={"kernels_with_choices": len(space.options),
                                                "skippable_blocks": len(space.blocks),
                                                "design_space_log10": space.size_log10()})
