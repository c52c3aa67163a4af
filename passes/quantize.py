"""Per-kernel int8: static QDQ quantization through onnxruntime's quantization tooling.

Pre-condition: the fold_batchnorm pass ran just before on the same kernels, so a quantized
kernel is one Conv (onnxruntime fuses DQ -> Conv -> Q into an integer kernel; a Conv followed
by a float BN would stay float). Rule: `onnxruntime.quantization.quantize_static` runs with
`quant_format=QDQ`, per-channel symmetric int8 weights, uint8 activations calibrated (MinMax)
on the calibration data, and `nodes_to_quantize` = the int8 kernels' nodes plus the
data-movement / elementwise nodes (Add, pooling, Concat, ...) all of whose inputs come from
quantized nodes; everything else is excluded and stays float. Never the QOperator or dynamic
formats (TVM cannot import them). Calibration runs once per call, unless the calibration data
carries the fp32 model's activation ranges (`CalibData.int8_ranges`, from `reference_ranges`:
the fp32 model and its copy with every foldable BN folded, one calibration each): compile's
sensitivity step quantizes one kernel of the fp32 model at a time, and those ranges are what
calibrating each such model would find (up to float rounding), so it calibrates once per model.
An activation that is not finite on the calibration data cannot be quantized: BadInputError
naming it. Post-conditions: output shapes unchanged; Q/DQ pairs around the int8 kernels; the
original node names are kept, so later passes (fp16) still find their kernels.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from passes.common import kernel_nodes, topological_nodes
from passes.export_onnx import export_onnx
from toolchain.calib import CalibData, feeds, synthetic_calib
from toolchain.errors import BadInputError
from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["QuantizePass", "quantize", "reference_ranges"]

logger = logging.getLogger(__name__)

# Ops onnxruntime's QDQ quantizer handles that are quantized when all their inputs are int8.
_FOLLOWERS = {"Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu",
              "Clip", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize"}
_QUANTIZABLE_ACTS = {"Relu", "Clip", "LeakyRelu", "Sigmoid"}
PRE_PROCESSED = ("onnx.quant.pre_process", "onnxruntime.quant")   # onnxruntime's metadata mark


def _nodes_to_quantize(graph: Graph, kernels: dict[str, tuple[str, ...]]) -> list[str]:
    chosen = set()
    for name, nodes in kernels.items():
        chosen.add(name)
        chosen.update(n for n in nodes[1:] if graph.op(n) in _QUANTIZABLE_ACTS)
    for n in graph.topo():
        d = graph.node(n)
        data = [t for t in d["inputs"] if t and not graph.is_weight(t)]
        if n not in chosen and d["op_type"] in _FOLLOWERS and data and \
                all(graph.producer(t) in chosen for t in data):
            chosen.add(n)
    return sorted(chosen)


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration samples."""

    def __init__(self, calib: CalibData, graph: Graph) -> None:
        self._all = list(feeds(calib, graph))
        self._feeds = iter(self._all)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter(self._all[start_index:end_index])

    def stride(self) -> int:
        """Feeds per calibration round (the calibrator keeps every tensor of a round in memory;
        onnxruntime wants the count to divide the total)."""
        return next(s for s in range(min(STRIDE, len(self)), 0, -1) if len(self) % s == 0)


STRIDE = 4   # calibration rounds of at most 4 feeds: min/max merge exactly across rounds


def quantize(graph: Graph, kernels: list[str], calib: CalibData | None) -> list[str]:
    """Quantize the named kernels to int8 QDQ in place; returns the nodes quantized."""
    from passes.import_onnx import import_onnx

    if not kernels:
        return []
    groups = kernel_nodes(graph, kernels, "int8")
    bad = [k for k in kernels if graph.op(k) not in ("Conv", "Gemm", "MatMul")]
    if bad:
        raise BadInputError(f"int8: kernel {bad[0]!r} is a {graph.op(bad[0])}, not a Conv, Gemm "
                            "or MatMul")
    nodes = _nodes_to_quantize(graph, groups)
    calib = calib or synthetic_calib(graph)
    try:
        model = export_onnx(graph)
        quantized = _quantize_part(model, nodes, calib, graph) if calib.int8_ranges else \
            _run_quantize_static(model, nodes, calib, graph)
    except Exception as err:   # onnxruntime asserts on what it cannot quantize: say why
        bad = _non_finite(graph, nodes, calib)
        if bad:
            raise BadInputError(_NOT_FINITE.format(bad)) from err
        raise
    bad = _bad_scale(quantized)
    if bad:
        raise BadInputError(_NOT_FINITE.format(bad))
    new = import_onnx(quantized, {t: tuple(graph.shape(t)) for t in graph.inputs})
    _float_outputs(new)
    graph.assign(new)
    return nodes


def _quantize_part(model: onnx.ModelProto, nodes: list[str], calib: CalibData,
                   graph: Graph) -> onnx.ModelProto:
    """With known ranges: quantize_static on the part of the model it edits - the nodes to
    quantize and every node reading a tensor they read or write (onnxruntime reroutes all
    readers of a quantized tensor through its Q/DQ pair) - and that part put back in place.
    The same model as quantizing the whole (test), without the whole model's serialization and
    shape inference in onnxruntime's quantizer (seconds per kernel on ResNet-50)."""
    from passes.export_onnx import to_value_info

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    chosen = set(nodes)
    touched = {t for n in g.node if n.name in chosen for t in [*n.input, *n.output]
               if t and t not in inits}
    part = [n for n in g.node if n.name in chosen or any(t in touched for t in n.input)]
    names = {n.name for n in part}
    made = {t for n in part for t in n.output}
    read_outside = {t for n in g.node if n.name not in names for t in n.input}
    read_outside |= {o.name for o in g.output}
    reads = [t for n in part for t in n.input if t]
    ins = list(dict.fromkeys(t for t in reads if t not in made and t not in inits))
    outs = [t for n in part for t in n.output if t in read_outside]
    sub = onnx.helper.make_graph(
        part, "part", [to_value_info(t, graph.tensors.get(t)) for t in ins],
        [to_value_info(t, graph.tensors.get(t)) for t in outs],
        [inits[t] for t in dict.fromkeys(reads) if t in inits])
    sub_model = onnx.helper.make_model(sub, opset_imports=model.opset_import,
                                       ir_version=model.ir_version)
    q = _run_quantize_static(sub_model, nodes, calib, graph)
    new = list(q.graph.initializer)
    taken = {i.name for i in new} | {t for n in q.graph.node for t in n.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:], out.graph.initializer[:], out.graph.value_info[:]
    out.graph.initializer.extend([i for i in g.initializer if i.name not in taken] + new)
    out.graph.node.extend(_topological([n for n in g.node if n.name not in names]
                                       + list(q.graph.node),
                                       {i.name for i in out.graph.initializer},
                                       {i.name for i in g.input}))
    return out


def _topological(nodes: list, weights: set[str], inputs: set[str]) -> list:
    """The nodes in an order where each comes after the producers of its inputs (stable)."""
    order, stuck = topological_nodes(nodes, weights | inputs)
    if stuck:
        raise RuntimeError("quantize: the spliced part leaves a node without its inputs")
    return order


_NOT_FINITE = ("int8: activation {!r} is not finite on the calibration data (float32 "
               "overflow): it cannot be quantized")


def _bad_scale(model: onnx.ModelProto) -> str | None:
    """The first tensor quantized with a scale that is not a finite positive number."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits:
            scale = numpy_helper.to_array(inits[n.input[1]])
            if not np.all(np.isfinite(scale) & (scale > 0)):
                return n.input[0]
    return None


def _non_finite(graph: Graph, nodes: list[str], calib: CalibData) -> str | None:
    """The first float tensor read or written by `nodes` that is inf or NaN on the data."""
    from passes.common import run_collect

    tensors = sorted({t for n in nodes for t in graph.node(n)["inputs"] + graph.node(n)["outputs"]
                      if t and not graph.is_weight(t) and graph.dtype(t) == "float32"})
    for values in run_collect(graph, calib, tensors):
        bad = [t for t in tensors if not np.all(np.isfinite(values[t]))]
        if bad:
            return bad[0]
    return None


def _float_outputs(graph: Graph) -> None:
    """Drop the Q/DQ pair on a graph output: the model's outputs (logits) are not clipped to the
    range seen in calibration, and nothing after them profits from int8."""
    for out in list(graph.outputs):
        dq = graph.producer(out)
        if dq is None or graph.op(dq) != "DequantizeLinear":
            continue
        q = graph.producer(graph.node(dq)["inputs"][0])
        if q is None or graph.op(q) != "QuantizeLinear":
            continue
        source = graph.node(q)["inputs"][0]
        order = graph.node(dq)["order"]
        graph.remove_node(dq)
        graph.add_node(dq, "Identity", [source], [out], order=order)
    graph.remove_unused()


def _run_quantize_static(model: onnx.ModelProto, nodes: list[str], calib: CalibData,
                         graph: Graph) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    excluded = [n.name for n in model.graph.node if n.name not in set(nodes)]
    # fleetc's import already inferred every shape (what onnxruntime's pre-processing does);
    # saying so on this temporary copy stops quantize_static's advice to run it.
    onnx.helper.set_model_props(model, {PRE_PROCESSED[0]: PRE_PROCESSED[1]})
    with tempfile.TemporaryDirectory(prefix="fleetc_quant_") as tmp:
        out = Path(tmp) / "int8.onnx"
        cache = _ranges_file(calib.int8_ranges, Path(tmp)) if calib.int8_ranges else None
        reader = _Reader(calib, graph)
        quantize_static(
            model, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=cache,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                           "CalibStridedMinMax": reader.stride()})   # bounded memory
        return onnx.load(str(out))


def _ranges_file(ranges: dict[str, tuple[float, float]], folder: Path) -> Path:
    """The ranges as onnxruntime's calibration cache (quantize_static then skips calibrating)."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorsData,
        save_tensors_data,
    )

    data = TensorsData(CalibrationMethod.MinMax, {
        k: (np.array(lo, np.float32), np.array(hi, np.float32)) for k, (lo, hi) in ranges.items()})
    path = folder / "ranges.json"
    save_tensors_data(data, path)
    return path


def _calibrate(model: onnx.ModelProto, calib: CalibData, graph: Graph
               ) -> dict[str, tuple[float, float]]:
    """Min and max of every float tensor of `model` over the calibration samples (onnxruntime's
    MinMax calibrator, as quantize_static runs it)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="fleetc_ranges_") as tmp:
        path = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(path))
        calibrator = create_calibrator(path, [], augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        reader = _Reader(calib, graph)
        step = reader.stride()
        for start in range(0, len(reader), step):
            reader.set_range(start, start + step)
            calibrator.collect_data(reader)
        data = calibrator.compute_data()
        del calibrator
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1])))
            for k, v in data.items()}


def reference_ranges(graph: Graph, calib: CalibData) -> dict[str, tuple[float, float]]:
    """Activation ranges for the int8 rewrite of any one kernel of `graph` (see the module doc):
    the fp32 graph's, overridden by those of its copy with every foldable BN folded into its
    Conv (that Conv's output, what the rewrite quantizes, then holds the BN's values)."""
    from passes.fold_batchnorm import fold_batchnorm

    ranges = _calibrate(export_onnx(graph), calib, graph)
    folded = graph.copy()
    names = [k.name for k in (graph.kernels or []) if folded.op(k.name) == "Conv"] \
        if graph.kernels is not None else []
    if sum(fold_batchnorm(folded, n) for n in names):
        ranges.update(_calibrate(export_onnx(folded), calib, folded))
    return ranges


@dataclass
class QuantizePass(Pass):
    """Quantize the plan's int8 kernels (static, QDQ, per-channel weights)."""

    name = "quantize"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    kernels: tuple[str, ...] = field(default_factory=tuple)  # kernel names to make int8

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        calib = ctx.calib
        nodes = quantize(graph, list(self.kernels), calib)
        return PassResult(changed=bool(nodes), stats={"kernels_int8": len(self.kernels),
                                                      "nodes_quantized": len(nodes)})
