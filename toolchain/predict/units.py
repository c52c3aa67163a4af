"""Cost units: what the kernel-level latency predictor prices, built from `group_kernels`.

A unit is one kernel of `group_kernels` seen by a runtime, with the numbers its cost depends on
(MACs, elements read and written, weight elements, kernel area, channels) and its precision.

Quantized (QDQ) graphs are read the way onnxruntime runs them:
- a DequantizeLinear of a weight is folded into its consumer, which becomes an int8 unit;
- a QuantizeLinear -> DequantizeLinear pair between two int8 units is a requantization fused
  into the producer: no unit;
- a QuantizeLinear of a float value (graph input, fp32 producer) is a `quantize` unit, and a
  DequantizeLinear feeding a float consumer or a graph output is a `dequantize` unit: these are
  real element-wise conversions at precision boundaries.

Under a plan (`units_under_plan`) the same units are derived from the original float model:
structural choices (input size, skipped blocks, kernel sizes) go through the graph passes that
the rewrite uses; precision and width are applied to the units directly (widths scale the
channels of the kernel and of the kernels that read its output), so pricing a plan costs no
rewrite and no quantization.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from toolchain.ir import Graph
from toolchain.space import Kernel, Plan, pruned_channels

__all__ = ["Unit", "units_of", "units_under_plan", "graph_units", "COMPUTE_OPS", "op_class",
           "QDQ_FOLLOWERS", "ort_float_nodes", "structural_graph"]

logger = logging.getLogger(__name__)

COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
# Float kernels onnxruntime runs in its blocked NCHWc layout: a conversion next to one also
# changes layout (ReorderOutput / ReorderInput and a Transpose to the int8 kernels' NHWC).
_LAYOUT_OPS = ("Conv",)
# Ops that cost the same under another name.
_ALIASES = {"Sum": "Add", "Flatten": "Reshape", "Squeeze": "Reshape", "Unsqueeze": "Reshape",
            "Identity": "Reshape", "GlobalMaxPool": "GlobalAveragePool",
            "ReduceMean": "GlobalAveragePool"}
# A float-weight compute kernel between int8 neighbours (DQ -> Conv -> Q, the weights plain
# float): onnxruntime quantizes its weights itself, per tensor with a zero point, and runs it on
# integers - through a path 2-3x slower than the rewrite's symmetric per-channel int8 kernels
# (measured with onnxruntime's profiler: a 1x1 16->96 conv at 72x72 took 0.27 ms vs 0.08 ms).
INT8_ASYM = "int8a"
# A max-pool between a float producer and int8 readers: onnxruntime moves the QuantizeLinear
# above it and runs it on uint8 in NCHW layout, a generic path about 4 ns per input element
# (1.35 ms for a ResNet stem's pool at 160x160; the int8 network's NHWC pool is ~20x faster).
INT8_NCHW = "int8nchw"
_INT8_LIKE = ("int8", INT8_ASYM, INT8_NCHW)
_PRECISION_OF_DTYPE = {"float32": "fp32", "float16": "fp16", "int8": "int8", "uint8": "int8"}


@dataclass(frozen=True)
class Unit:
    """One priced kernel. Element counts are per inference (batch included)."""

    name: str
    cls: str                 # "conv", "dwconv", "gemm", an op type, "quantize", "dequantize"
    precision: str           # fp32 | fp16 | int8 | int8w (float compute, weights via DQ) |
                             # int8a (INT8_ASYM) | int8nchw (INT8_NCHW)
    macs: float = 0.0
    in_elems: float = 0.0    # elements of the data inputs (weights excluded)
    out_elems: float = 0.0
    weight_elems: float = 0.0
    k_area: int = 1          # kernel height x width (pooling window for pools)
    cin: int = 0             # input channels per group (compute units)
    groups: int = 1          # convolution groups, > 1 for grouped (not depthwise) convs
    cout: int = 0
    rows: float = 0.0        # output rows (batch x channels x height): per-row overheads
    edge_in: float = 0.0     # input elements that are graph inputs (layout / format changes
    edge_out: float = 0.0    # at the model's edges), output elements that are graph outputs
    inner: float = 0.0       # quantize / dequantize: elements converted next to a float
                             # convolution (an int8 layer's border with it, where onnxruntime
                             # also changes layout), not at the model's edges
    inputs: tuple[str, ...] = ()   # data input tensors, to follow widths through the graph
    output: str = ""

    @property
    def kind(self) -> str:
        """The regressor that prices it: class and precision."""
        return f"{self.cls}/{self.precision}"


def op_class(kernel: Kernel, weight_shape: tuple | None = None) -> str:
    """The regressor class of a kernel; `weight_shape` for QDQ kernels (weights through DQ)."""
    op = _ALIASES.get(kernel.op_type, kernel.op_type)
    w = kernel.weight_shape or weight_shape
    if op in ("Conv", "ConvTranspose"):
        depthwise = kernel.group > 1 and w is not None and len(w) > 1 and w[1] == 1
        return "dwconv" if depthwise else "conv"
    if op in ("Gemm", "MatMul"):
        return "gemm"
    return op


def _numel(shape) -> float:
    if not shape:
        return 0.0
    return float(math.prod(int(d) if isinstance(d, int) and d > 0 else 1 for d in shape))


def _data_inputs(graph: Graph, node: str) -> list[str]:
    return [t for t in graph.node(node)["inputs"] if t and not graph.is_weight(t)]


def _weight_shape(graph: Graph, kernel: Kernel) -> tuple | None:
    if kernel.weight_shape is not None:
        return kernel.weight_shape
    ins = [t for t in graph.node(kernel.nodes[0])["inputs"] if t]
    # QDQ: the weight arrives through a DequantizeLinear of an initializer.
    if kernel.op_type in COMPUTE_OPS and len(ins) > 1:
        return graph.shape(ins[1])
    return None


def _unit(graph: Graph, kernel: Kernel, precision: str, skip: set[str]) -> Unit:
    w = _weight_shape(graph, kernel) if kernel.op_type in COMPUTE_OPS else None
    cls = op_class(kernel, w)
    inputs = tuple(t for t in _data_inputs(graph, kernel.nodes[0]) if t not in skip)
    out = graph.node(kernel.nodes[-1])["outputs"][0]
    in_elems = sum(_numel(graph.shape(t)) for t in inputs)
    out_elems = _numel(graph.shape(out))
    shape_out = graph.shape(out) or ()
    cin = cout = 0
    rows = out_elems
    if cls in ("conv", "dwconv") and w is not None and len(w) >= 3:
        cout, cin = int(w[0]), int(w[1])
        rows = _numel(shape_out[:3]) if len(shape_out) >= 3 else out_elems
    elif cls == "gemm" and w is not None and len(w) == 2:
        transb = graph.node(kernel.nodes[0])["attrs"].get("transB", 0)
        cin, cout = (int(w[1]), int(w[0])) if transb else (int(w[0]), int(w[1]))
        rows = out_elems / max(cout, 1)
    attrs = graph.node(kernel.nodes[0])["attrs"]
    k_area = int(math.prod(kernel.kernel_shape or attrs.get("kernel_shape") or (1,)))
    if cls == "LRN":
        k_area = int(attrs.get("size", 1))
    macs = float(kernel.macs)
    if cls in ("conv", "dwconv", "gemm") and macs == 0 and w is not None:
        macs = out_elems * _numel(w[1:])
    groups = kernel.group if cls == "conv" else 1
    return Unit(name=kernel.name, cls=cls, precision=precision, macs=macs, in_elems=in_elems,
                out_elems=out_elems, weight_elems=_numel(w) if w is not None else 0.0,
                k_area=k_area, cin=cin, groups=groups, cout=cout, rows=rows, inputs=inputs,
                output=out,
                **_edges(graph, inputs, out))


def _edges(graph: Graph, inputs: tuple[str, ...], output: str) -> dict[str, float]:
    """Elements crossing the model's edges; through Q/DQ, the float tensor they convert."""
    def source(t: str) -> str:
        p = graph.producer(t)
        while p is not None and graph.op(p) in _QUANT_OPS:
            t = graph.node(p)["inputs"][0]
            p = graph.producer(t)
        return t

    def sink_is_output(t: str) -> bool:
        seen = [t]
        while seen:
            t = seen.pop()
            if t in graph.outputs:
                return True
            seen += [graph.node(c)["outputs"][0] for c in graph.consumers(t)
                     if graph.op(c) in _QUANT_OPS]
        return False
    return {"edge_in": sum(_numel(graph.shape(t)) for t in inputs if source(t) in graph.inputs),
            "edge_out": _numel(graph.shape(output)) if sink_is_output(output) else 0.0}


def units_of(graph: Graph, kernels: list[Kernel],
             float_nodes: frozenset[str] | None = None) -> list[Unit]:
    """Units of an analyzed graph (float or QDQ), in kernel order.

    `float_nodes`: nodes the runtime is known to leave in float although the QDQ pattern
    around them says int8 (see `ort_float_nodes`); None = trust the pattern."""
    by_node = {n: k for k in kernels for n in k.nodes}
    quant = {k.name for k in kernels if k.op_type in _QUANT_OPS}
    weight_dq = {k.name for k in kernels if k.op_type == "DequantizeLinear"
                 and graph.is_weight(graph.node(k.name)["inputs"][0])}
    # Activation DequantizeLinear outputs: int8 values seen as float by the graph.
    dq_out = {graph.node(k.name)["outputs"][0] for k in kernels
              if k.op_type == "DequantizeLinear" and k.name not in weight_dq}

    def is_int8(kernel: Kernel) -> bool:
        # onnxruntime runs a node in int8 when its data inputs come dequantized and its
        # output goes only to QuantizeLinear (DQ -> op -> Q fuses into a QLinear op).
        ins = [t for t in graph.node(kernel.nodes[0])["inputs"] if t and not graph.is_weight(t)]
        ins = [t for t in ins if graph.op(graph.producer(t) or kernel.name) != "DequantizeLinear"
               or t in dq_out]
        out = graph.node(kernel.nodes[-1])["outputs"][0]
        readers = graph.consumers(out)
        return (bool(ins) and all(t in dq_out for t in ins) and bool(readers)
                and all(graph.op(r) == "QuantizeLinear" for r in readers))

    weights = {graph.node(k.name)["outputs"][0] for k in kernels if k.name in weight_dq}
    units, int8 = [], set()
    def touched_by_qdq(kernel: Kernel) -> bool:
        ins = [t for t in graph.node(kernel.nodes[0])["inputs"] if t]
        out = graph.node(kernel.nodes[-1])["outputs"][0]
        return (any(t in dq_out or t in weights for t in ins)
                or any(graph.op(r) == "QuantizeLinear" for r in graph.consumers(out)))

    def dequantized_weights(kernel: Kernel) -> bool:
        ins = [t for t in graph.node(kernel.nodes[0])["inputs"] if t]
        return kernel.op_type in COMPUTE_OPS and len(ins) > 1 and ins[1] in weights

    def float_weights(kernel: Kernel) -> bool:
        ins = [t for t in graph.node(kernel.nodes[0])["inputs"] if t]
        return kernel.op_type in COMPUTE_OPS and len(ins) > 1 and graph.is_weight(ins[1])

    def from_int8(kernel: Kernel) -> bool:
        """Its data input comes from an int8 kernel (through Q/DQ)."""
        t = graph.node(kernel.nodes[0])["inputs"][0]
        p = graph.producer(t)
        while p is not None and graph.op(p) in _QUANT_OPS:
            p = graph.producer(graph.node(p)["inputs"][0])
        return p is not None and by_node.get(p) is not None and by_node[p].name in int8

    for k in kernels:
        if k.name in quant:
            continue
        if float_nodes is not None and touched_by_qdq(k):
            int8_here = k.name not in float_nodes   # the runtime's own answer
        else:
            int8_here = is_int8(k)
        if int8_here and float_weights(k):
            precision = INT8_ASYM
        elif int8_here and k.op_type == "MaxPool" and not from_int8(k):
            precision = INT8_NCHW
        elif int8_here:
            precision = "int8"
        elif dequantized_weights(k):
            # QDQ left unfused (no QuantizeLinear right after it): onnxruntime runs a float
            # kernel and dequantizes its weights at every inference - slower than fp32.
            precision = "int8w"
        else:
            precision = _PRECISION_OF_DTYPE.get(k.dtype, "fp32")
        if precision in _INT8_LIKE:
            int8.add(k.name)
        units.append(_unit(graph, k, precision, skip=weights))
    units += _conversions(graph, kernels, by_node, int8, weight_dq)
    units += layout_changes(units)
    order = {k.name: i for i, k in enumerate(kernels)}
    return sorted(units, key=lambda u: order.get(u.name, len(order)))


# Float units onnxruntime runs in its blocked NCHWc layout (its NchwcTransformer, as its
# optimized graphs show): dense and depthwise convolutions always (channels padded to blocks
# of 16); pools and concatenations of blocked inputs whose channels fill whole blocks; an Add
# of two blocked inputs (not of a constant); Relu / Clip, and Dropout / Identity (which it
# removes), as their input. Everything else - grouped convs, reshapes, transposes, LRN, Gemm,
# batch norms - runs in plain NCHW. A model input is reordered at the model's edge to what its
# reader wants (priced by the edge features), so it does not decide a unit's layout.
_BLOCK = 16
FLOAT = ("fp32", "fp16", "int8w")
LAYOUT_CLASSES = ("ReorderInput", "ReorderOutput")
_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "Concat")
_AS_INPUT = ("Relu", "Clip", "Dropout", "Identity")


def layout_changes(units: list[Unit]) -> list[Unit]:
    """`ReorderInput` / `ReorderOutput` units where a float NCHWc unit and a float NCHW unit
    meet inside the model (once per tensor and direction), as onnxruntime inserts them: around
    ShuffleNet's grouped convs and channel shuffles, AlexNet's LRN, DenseNet's batch norms."""
    blocked: dict[str, bool] = {}
    channels: dict[str, int] = {}
    elems: dict[str, float] = {}
    for u in units:
        if u.precision not in FLOAT or u.cls in ("quantize", "dequantize"):
            continue
        ins = [t for t in u.inputs if t in blocked]   # inputs made by float units
        if u.cls in ("conv", "dwconv"):
            blocked[u.output] = u.groups == 1
        elif u.cls in _POOLS:
            blocked[u.output] = all(blocked[t] and channels[t] % _BLOCK == 0 for t in ins)
        elif u.cls == "Add":
            blocked[u.output] = len(u.inputs) == 2 and all(blocked[t] for t in ins)
        else:
            blocked[u.output] = u.cls in _AS_INPUT and bool(ins) and blocked[ins[0]]
        if u.cls in ("conv", "dwconv"):
            channels[u.output] = u.cout
        else:
            channels[u.output] = sum(channels[t] for t in ins[:None if u.cls == "Concat" else 1])
        elems[u.output] = u.out_elems
    out, seen = [], set()
    for u in units:
        wants = blocked.get(u.output)   # the layout a unit reads is the one it writes
        for t in u.inputs if wants is not None else ():
            if t in blocked and blocked[t] != wants and (t, wants) not in seen:
                seen.add((t, wants))
                cls = "ReorderInput" if wants else "ReorderOutput"
                out.append(Unit(f"{t}:{cls}", cls, "fp32", in_elems=elems[t],
                                out_elems=elems[t], rows=elems[t], inputs=(t,),
                                output=f"{t}:{cls}"))
    return out


def _conversions(graph: Graph, kernels: list[Kernel], by_node: dict[str, Kernel],
                 int8: set[str], weight_dq: set[str]) -> list[Unit]:
    """Quantize / dequantize units at the boundaries between float and int8 units."""
    out = []
    for k in kernels:
        node = graph.node(k.name)
        if k.op_type == "QuantizeLinear":
            src = graph.producer(node["inputs"][0])
            producer = by_node.get(src) if src else None
            if producer is None or producer.name not in int8:
                elems = _numel(graph.shape(node["inputs"][0]))
                out.append(Unit(k.name, "quantize", "int8", in_elems=elems, out_elems=elems,
                                rows=elems, inputs=(node["inputs"][0],), output=node["outputs"][0],
                                inner=elems if producer is not None and
                                producer.op_type in _LAYOUT_OPS else 0.0,
                                **_edges(graph, (node["inputs"][0],), node["outputs"][0])))
        elif k.op_type == "DequantizeLinear" and k.name not in weight_dq:
            t = node["outputs"][0]
            readers = [by_node[c] for c in graph.consumers(t) if c in by_node]
            float_readers = [r for r in readers if r.name not in int8
                             and r.op_type not in _QUANT_OPS]
            if t in graph.outputs or float_readers:
                elems = _numel(graph.shape(t))
                out.append(Unit(k.name, "dequantize", "int8", in_elems=elems, out_elems=elems,
                                rows=elems, inputs=(node["inputs"][0],), output=t,
                                inner=elems if any(r.op_type in _LAYOUT_OPS
                                                   for r in float_readers) else 0.0,
                                **_edges(graph, (node["inputs"][0],), t)))
    return out


def graph_units(graph: Graph, float_nodes: frozenset[str] | None = None) -> list[Unit]:
    """Units of a graph analyzed by `passes` (kernels in graph.meta)."""
    return units_of(graph, graph.kernels, float_nodes)


_INTEGER_OPS = ("QLinearConv", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
                "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QGemm",
                "QLinearMatMul", "MatMulInteger", "ConvInteger", "QLinearSoftmax")
_DATA_MOVES = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
               "Resize", "Concat")


def ort_float_nodes(model) -> frozenset[str]:
    """Nodes of a QDQ model that onnxruntime (CPU, all optimizations) does not run on integers.

    onnxruntime fuses DQ -> op -> Q into integer kernels only where its fusion rules match;
    elsewhere the op runs in float (a Conv then dequantizes its weights at every run). Asking
    onnxruntime itself is the faithful answer: in its optimized graph an integer kernel is a
    QLinear* / QGemm node named after the original node (`conv4` -> `conv4_token_4`), and a
    data-movement op (MaxPool, Reshape, ...) runs on integers when its input comes from one."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="fleetc_ort_") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp, "opt.onnx"))
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    producer = {o: n for n in optimized.graph.node for o in n.output}

    def integer(node, depth: int = 0) -> bool:
        if node.op_type in _INTEGER_OPS or node.op_type == "QuantizeLinear":
            return True
        if node.op_type in _DATA_MOVES and node.input and depth < 8:
            src = producer.get(node.input[0])
            return src is not None and integer(src, depth + 1)
        return False

    integer_names = [n.name for n in optimized.graph.node if integer(n)]
    originals = [n.name for n in model.graph.node if n.op_type not in _QUANT_OPS]
    return frozenset(name for name in originals
                     if not any(m == name or m.startswith(name + "_") for m in integer_names))


# ---------------------------------------------------------------------------------- plans

# Unit classes the quantize pass (passes/quantize.py, "followers") runs in int8 when all their
# inputs are int8; Flatten / Squeeze / Unsqueeze are priced as Reshape.
QDQ_FOLLOWERS = ("Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu",
                 "Clip", "Reshape", "Transpose", "Resize")


def units_under_plan(graph: Graph, plan: Plan,
                     int8_ops: tuple[str, ...] = QDQ_FOLLOWERS) -> list[Unit]:
    """Units of the float model `graph` (analyzed) rewritten by `plan`, without rewriting it.

    `int8_ops`: unit classes that run in int8 when every input is int8, as the quantize pass
    quantizes them (default); the plan's compute kernels are int8 as it says.
    """
    base = [u for u in _structural(graph, plan) if u.cls not in LAYOUT_CLASSES]
    units = [_with_precision(u, plan) for u in base]
    units = _apply_widths(units, plan)
    units = _plan_conversions(units, graph, int8_ops)
    return units + layout_changes(units)


def _with_precision(u: Unit, plan: Plan) -> Unit:
    choice = plan.kernels.get(u.name)
    return replace(u, precision=choice.precision) if choice is not None else u


def _structural(graph: Graph, plan: Plan) -> list[Unit]:
    if not (plan.input_shape or plan.skip_blocks
            or any(c.kernel_size is not None for c in plan.kernels.values())):
        return graph_units(graph)
    return graph_units(structural_graph(graph, plan))


def structural_graph(graph: Graph, plan: Plan) -> Graph:
    """A copy of the analyzed `graph` with the plan's input size, skipped blocks and kernel
    sizes applied (the graph passes the rewrite uses), analyzed again. The copy shares the
    weight arrays (those passes put new arrays in place of the ones they change, never edit one
    in place): a plan's copy costs no weight memory."""
    import copy

    from passes import analyze
    from passes.resize_input import ResizeInputPass
    from passes.shrink_kernels import ShrinkKernelsPass
    from passes.skip_blocks import SkipBlocksPass
    from toolchain.pipeline import PassContext, Pipeline

    g = copy.deepcopy(graph, {id(a): a for a in graph.initializers.values()})
    sizes = {k: c.kernel_size for k, c in plan.kernels.items() if c.kernel_size is not None}
    passes = []
    if plan.input_shape:
        passes.append(ResizeInputPass(shapes={k: tuple(v) for k, v in plan.input_shape.items()}))
    if plan.skip_blocks:
        passes.append(SkipBlocksPass(blocks=tuple(sorted(plan.skip_blocks))))
    if sizes:
        passes.append(ShrinkKernelsPass(sizes=sizes))
    Pipeline(passes).run(g, PassContext(facts={"shapes"}))
    analyze(g)
    return g


def _apply_widths(units: list[Unit], plan: Plan) -> list[Unit]:
    """Scale channels: a kernel at width w keeps pruned_channels(cout, w) outputs; readers of
    its output see fewer input channels (depthwise kernels and element-wise ops pass the
    reduction on to their own outputs)."""
    ratio: dict[str, float] = {}   # tensor -> kept fraction of its channels
    out = []
    for u in units:
        r_in = max((ratio.get(t, 1.0) for t in u.inputs), default=1.0)
        choice = plan.kernels.get(u.name)
        if u.cls in ("conv", "gemm"):
            r_out = pruned_channels(u.cout, choice.width) / u.cout if choice and u.cout else 1.0
            cin = max(1, round(u.cin * r_in))
            cout = max(1, round(u.cout * r_out))
            f_in = cin / u.cin if u.cin else r_in
            u = replace(u, macs=u.macs * f_in * r_out, in_elems=u.in_elems * r_in,
                        out_elems=u.out_elems * r_out, weight_elems=u.weight_elems * f_in * r_out,
                        cin=cin, cout=cout, rows=u.rows * (r_out if u.cls == "conv" else 1.0))
        else:
            r_out = r_in
            if r_in != 1.0:
                u = replace(u, macs=u.macs * r_in, in_elems=u.in_elems * r_in,
                            out_elems=u.out_elems * r_in, weight_elems=u.weight_elems * r_in,
                            cout=max(1, round(u.cout * r_in)) if u.cout else 0,
                            rows=u.rows * r_in)
        ratio[u.output] = r_out
        out.append(u)
    return out


def _plan_conversions(units: list[Unit], graph: Graph, int8_ops: tuple[str, ...]) -> list[Unit]:
    """Propagate int8 through `int8_ops`, relabel what onnxruntime runs on integers although the
    plan says float (`_runtime_int8`), then add quantize / dequantize units where int8 and
    float units meet (once per tensor), as the QDQ rewrite and onnxruntime's fusion produce."""
    producer = {u.output: u for u in units}
    prec: dict[str, str] = {}
    fixed = []
    for u in units:
        if u.cls in int8_ops and u.inputs and all(
                prec.get(t) == "int8" for t in u.inputs if t in producer):
            u = replace(u, precision="int8")
        prec[u.output] = u.precision
        fixed.append(u)
    fixed = _runtime_int8(fixed, prec, graph)
    # An int8 Relu / Clip is folded into the quantization range of its input (no kernel runs).
    folded = {u.output: u.inputs[0] for u in fixed
              if u.cls in ("Relu", "Clip") and u.precision == "int8" and u.inputs}
    fixed = [u for u in fixed if u.output not in folded]
    prec = {u.output: "int8" if u.precision in _INT8_LIKE else u.precision for u in fixed}
    for out, src in folded.items():
        prec[out] = prec.get(src, "fp32")
    out, quantized, dequantized = [], set(), set()
    # float convs (onnxruntime's NCHWc layout) on either side: conversions `inner`
    convs = {u.output for u in fixed if u.cls in ("conv", "dwconv") and u.precision == "fp32"}
    conv_read = {t for u in fixed if u.cls in ("conv", "dwconv") and u.precision == "fp32"
                 for t in u.inputs}
    for u in fixed:
        int8_here = u.precision in _INT8_LIKE
        for t in u.inputs:
            src = prec.get(t, "fp32")
            elems = u.in_elems / max(len(u.inputs), 1)
            if int8_here and src != "int8" and t not in quantized and u.precision != INT8_NCHW:
                quantized.add(t)
                out.append(Unit(f"{t}:quantize", "quantize", "int8", in_elems=elems,
                                out_elems=elems, rows=elems, inputs=(t,), output=t,
                                edge_in=elems if t in graph.inputs else 0.0,
                                inner=elems if t in convs else 0.0))
            elif not int8_here and src == "int8" and t not in dequantized:
                dequantized.add(t)
                out.append(Unit(f"{t}:dequantize", "dequantize", "int8", in_elems=elems,
                                out_elems=elems, rows=elems, inputs=(t,), output=t,
                                edge_out=elems if t in graph.outputs else 0.0,
                                inner=elems if t in conv_read else 0.0))
        out.append(u)
    for u in fixed:
        if u.precision in _INT8_LIKE and u.output in graph.outputs and \
                u.output not in dequantized:
            out.append(Unit(f"{u.output}:dequantize", "dequantize", "int8", in_elems=u.out_elems,
                            out_elems=u.out_elems, rows=u.out_elems, inputs=(u.output,),
                            output=u.output, edge_out=u.out_elems))
    return out


def _runtime_int8(units: list[Unit], prec: dict[str, str], graph: Graph) -> list[Unit]:
    """What onnxruntime runs otherwise than the plan says, as `units_of` finds it in the
    rewritten model. A float unit with an int8 reader (the rewrite then quantizes its output,
    and every reader reads it dequantized): a conv whose inputs are int8 too becomes
    INT8_ASYM, a max-pool INT8_NCHW. A max-pool after an int8 kernel is priced as float, as
    `ort_float_nodes` reads it (onnxruntime 1.32 runs it as NhwcMaxPool on uint8; pricing it so
    made the fits worse on two dev sets, docs/measure.md session 7)."""
    readers: dict[str, list[Unit]] = {}
    for u in units:
        for t in u.inputs:
            readers.setdefault(t, []).append(u)
    out = []
    for u in units:
        rs = readers.get(u.output, [])
        quantized_out = u.output not in graph.outputs and any(r.precision == "int8" for r in rs)
        if u.cls == "MaxPool" and u.precision == "int8":
            u = replace(u, precision="fp32")
        elif u.precision == "fp32" and quantized_out:
            if u.cls in ("conv", "dwconv") and u.inputs and \
                    all(prec.get(t) == "int8" for t in u.inputs):
                u = replace(u, precision=INT8_ASYM)
            elif u.cls == "MaxPool":
                u = replace(u, precision=INT8_NCHW)
        out.append(u)
    return out
