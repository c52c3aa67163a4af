"""Helpers shared by several passes: op sets, kernel lookup, running a graph on calibration
data, and the applicability rules that discover_space offers and the rewrite passes apply (one
definition each, so an offered option is always applicable). Not a pass."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from passes.export_onnx import export_onnx, to_value_info
from passes.group_kernels import group_kernels
from toolchain.calib import CalibData, feeds
from toolchain.errors import BadInputError
from toolchain.ir import Graph

__all__ = ["run_collect", "kernel_nodes", "PER_CHANNEL_OPS", "PruneSite", "prune_site",
           "shrink_refusal", "topological_nodes"]

# Ops that act on each channel alone: a channel pruned before them can be pruned after them.
PER_CHANNEL_OPS = frozenset({
    "BatchNormalization", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu",
    "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Dropout", "Identity"})


def topological_nodes(nodes: list, ready: set[str]) -> tuple[list, list]:
    """ONNX `nodes` in an order where each comes after the producers of its inputs (stable),
    given the tensors `ready` at the start (graph inputs, initializers); second, the nodes
    that never become ready (a cycle or a missing input), empty when all are placed."""
    ready = set(ready) | {""}
    todo, order = list(nodes), []
    while todo:
        rest = []
        for n in todo:
            if all(t in ready for t in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(todo):
            return order, rest
        todo = rest
    return order, []


def run_collect(graph: Graph, calib: CalibData, tensors: list[str]
                ) -> Iterator[dict[str, np.ndarray]]:
    """Run the graph in onnxruntime over the calibration samples, yielding, per run, the values
    of `tensors` (any intermediate tensor names). One thread, no graph optimisation, so the
    values are exactly the IR's tensors."""
    import onnxruntime as ort
    from onnx import helper

    model = export_onnx(graph)
    known = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in known:
            info = graph.tensors.get(t)
            model.graph.output.append(to_value_info(t, info) if info else
                                      helper.make_empty_tensor_value_info(t))
            known.add(t)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    for feed in feeds(calib, graph):
        yield dict(zip(tensors, sess.run(tensors, feed), strict=True))


def kernel_nodes(graph: Graph, names: list[str], what: str) -> dict[str, tuple[str, ...]]:
    """Kernel name -> its node names (anchor first); BadInputError for an unknown kernel."""
    kernels = {k.name: k for k in group_kernels(graph)}
    unknown = sorted(n for n in names if n not in kernels)
    if unknown:
        raise BadInputError(f"{what}: no kernel named {unknown[0]!r} in this model "
                            "(see `fleetc inspect` for kernel names)")
    return {n: kernels[n].nodes for n in names}


# --- channel pruning: where a kernel's output channels go (prune_channels, discover_space) ------

@dataclass(frozen=True)
class PruneSite:
    """Where one kernel's output channels go: the nodes to slice and the consumers."""

    kernel: str
    channels: int
    path: tuple[str, ...]       # per-channel and depthwise nodes, in traversal order
    consumers: tuple[str, ...]  # group-1 Convs / Gemms reading the channels as input 0


def _depthwise(graph: Graph, node: str) -> bool:
    d = graph.node(node)
    w = d["inputs"][1] if len(d["inputs"]) > 1 else ""
    return (d["op_type"] == "Conv" and int(d["attrs"].get("group", 1)) > 1
            and graph.is_weight(w) and graph.initializers[w].shape[1] == 1)


def _per_channel_weight(graph: Graph, d: dict, t: str, channels: int) -> bool:
    """Add/Mul of `t` and a weight that broadcasts along the channel axis only: all its dims are
    1 except, at most, the one aligned with axis 1 of `t`, which is C. A (C,) or (1, 1, C, 1)
    weight aligns with W or H instead, and a weight of higher rank would move the channels."""
    others = [i for i in d["inputs"] if i != t]
    if d["op_type"] not in ("Add", "Mul") or d["inputs"].count(t) != 1 or len(others) != 1 \
            or not graph.is_weight(others[0]):
        return False
    w, shape = graph.initializers[others[0]].shape, graph.shape(t)
    if shape is None or len(w) > len(shape):
        return False
    axis = len(w) - (len(shape) - 1)
    return all(s == 1 for i, s in enumerate(w) if i != axis) and \
        (axis < 0 or w[axis] in (1, channels))


def _flattens_channels(graph: Graph, d: dict, t: str) -> bool:
    """Flatten at axis 1 of an N x C x 1 x 1 map: the channels stay the second axis."""
    shape = graph.shape(t)
    return d["op_type"] == "Flatten" and shape is not None and len(shape) >= 2 \
        and int(d["attrs"].get("axis", 1)) % len(shape) == 1 and all(s == 1 for s in shape[2:])


def _step(graph: Graph, kernel: str, t: str, channels: int) -> tuple[list, list, list]:
    """One tensor's readers -> (path nodes, consumers, next tensors); BadInputError if tied."""
    path, consumers, nxt = [], [], []
    if t in graph.outputs:
        raise BadInputError(f"width: kernel {kernel!r}: its channels reach the graph output "
                            f"{t!r} and cannot be pruned")
    for user in graph.consumers(t):
        d = graph.node(user)
        op, ins = d["op_type"], d["inputs"]
        if op == "Conv" and ins[0] == t and _depthwise(graph, user):
            path.append(user)
            nxt.append(d["outputs"][0])
        elif op == "Conv" and ins[0] == t and int(d["attrs"].get("group", 1)) == 1:
            consumers.append(user)
        elif op == "Gemm" and ins[0] == t and not d["attrs"].get("transA", 0):
            consumers.append(user)
        elif (op in PER_CHANNEL_OPS and ins[0] == t) or _per_channel_weight(graph, d, t, channels) \
                or _flattens_channels(graph, d, t):
            path.append(user)
            nxt.append(d["outputs"][0])
        else:
            raise BadInputError(f"width: kernel {kernel!r}: its channels are tied by {op} node "
                                f"{user!r} and cannot be pruned on their own")
    return path, consumers, nxt


def prune_site(graph: Graph, kernel: str) -> PruneSite:
    """Trace where the output channels of `kernel` go (BadInputError if they cannot be pruned).

    Rule: from the anchor's output (so a bias or scale fused into the kernel is checked like any
    other node), the channels pass only through per-channel ops (PER_CHANNEL_OPS on their first
    input, Add/Mul by a per-channel weight, Flatten of a 1x1 map) and depthwise Convs, and end
    in input 0 of group-1 Convs or Gemms (at least one). Anything else - a graph output, an
    Add/Concat/Mul of two activations, a reshape - ties the channels: BadInputError names it.
    discover_space offers a width exactly where this succeeds; prune_channels applies it."""
    if kernel not in graph or graph.op(kernel) not in ("Conv", "Gemm"):
        raise BadInputError(f"width: {kernel!r} is not a Conv or Gemm kernel of this model")
    d = graph.node(kernel)
    weight = d["inputs"][1]
    if not graph.is_weight(weight) or (graph.op(kernel) == "Conv"
                                       and int(d["attrs"].get("group", 1)) != 1):
        raise BadInputError(f"width: kernel {kernel!r} is grouped or has no constant weight")
    W = graph.initializers[weight]
    channels = W.shape[1] if graph.op(kernel) == "Gemm" and not d["attrs"].get("transB", 0) \
        else W.shape[0]
    path, consumers, stack, seen = [], [], [d["outputs"][0]], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        p, c, nxt = _step(graph, kernel, t, channels)
        path += [n for n in p if n not in path]
        consumers += [n for n in c if n not in consumers]
        stack += nxt
    if not consumers:
        raise BadInputError(f"width: kernel {kernel!r}: its channels reach no Conv or Gemm")
    return PruneSite(kernel, channels, tuple(path), tuple(consumers))


# --- kernel shrink: KxK -> centre kxk with the output shape kept (shrink_kernels, discover_space)

def shrink_refusal(graph: Graph, conv: str, size: int) -> str | None:
    """Why Conv `conv` cannot become size x size with every output shape unchanged (a sentence
    naming the Conv), or None if it can (size equal to its own: nothing to do).

    Rule: a square kernel K with dilation 1, an odd size < K (K odd), and padding that gives
    back d = (K - size) / 2 per side: explicit pads >= d shrink by d (the output size
    (H + p_begin + p_end - K) / stride + 1 is then unchanged); SAME_* keeps ceil(H / stride)
    by itself; VALID has no padding to give back, so the output would grow."""
    if conv not in graph or graph.op(conv) != "Conv":
        return f"{conv!r} is not a Conv of this model"
    attrs, weight = graph.node(conv)["attrs"], graph.node(conv)["inputs"][1]
    if not graph.is_weight(weight):
        return f"Conv {conv!r} has no constant weight"
    shape = graph.initializers[weight].shape
    if len(shape) != 4 or shape[2] != shape[3] or any(v != 1 for v in attrs.get("dilations", [])):
        return f"Conv {conv!r} is not square with dilation 1"
    K = shape[2]
    if size == K:
        return None
    if size > K or size < 1 or size % 2 == 0 or K % 2 == 0:
        return f"Conv {conv!r} is {K}x{K}; it can shrink to a smaller odd size, not {size}"
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        return (f"Conv {conv!r} has auto_pad=VALID (no padding to give back); shrinking to "
                f"{size} would change its output shape")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if auto_pad in ("NOTSET", "") and min(pads) < (K - size) // 2:
        return (f"Conv {conv!r} has pads {pads}; shrinking to {size} would change its output "
                "shape")
    return None
