"""Per-kernel int8: static QDQ quantization through onnxruntime's quantization tooling.

Rule: for every kernel named int8, a following BatchNormalization is first folded into its
Conv/Gemm (W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), exact up
to float rounding) so the quantized kernel is one Conv (onnxruntime fuses DQ -> Conv -> Q into
an integer kernel; a Conv followed by a float BN would stay float). Then
`onnxruntime.quantization.quantize_static` runs with `quant_format=QDQ`, per-channel symmetric
int8 weights, int8 activations calibrated (MinMax) on the calibration data, and
`nodes_to_quantize` = the int8 kernels' nodes plus the data-movement / elementwise nodes
(Add, pooling, Concat, ...) all of whose inputs come from quantized nodes; everything else is
excluded and stays float. Never the QOperator or dynamic formats (TVM cannot import them).
Post-conditions: output shapes unchanged; Q/DQ pairs around the int8 kernels; the original
node names are kept, so later passes (fp16) still find their kernels.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from passes.export_onnx import export_onnx
from passes.group_kernels import group_kernels
from toolchain.calib import CalibData, feeds, synthetic_calib
from toolchain.errors import BadInputError
from toolchain.ir import Graph, TensorInfo
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["QuantizePass", "quantize", "fold_batchnorm", "replace_graph", "kernel_nodes"]

logger = logging.getLogger(__name__)

# Ops onnxruntime's QDQ quantizer handles that are quantized when all their inputs are int8.
_FOLLOWERS = {"Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu",
              "Clip", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize"}
_QUANTIZABLE_ACTS = {"Relu", "Clip", "LeakyRelu", "Sigmoid"}


def replace_graph(graph: Graph, new: Graph) -> None:
    """Make `graph` (the caller's object) hold `new`'s contents, keeping graph.meta notes."""
    meta = dict(graph.meta)
    graph.__dict__.update(new.__dict__)
    graph.meta = {**meta, **new.meta}


def kernel_nodes(graph: Graph, names: list[str], what: str) -> dict[str, tuple[str, ...]]:
    """Kernel name -> its node names (anchor first); BadInputError for an unknown kernel."""
    kernels = {k.name: k for k in group_kernels(graph)}
    unknown = sorted(n for n in names if n not in kernels)
    if unknown:
        raise BadInputError(f"{what}: no kernel named {unknown[0]!r} in this model "
                            "(see `fleetc inspect` for kernel names)")
    return {n: kernels[n].nodes for n in names}


def fold_batchnorm(graph: Graph, anchor: str) -> bool:
    """Fold the BatchNormalization that alone reads a Conv's output into the Conv."""
    d = graph.node(anchor)
    out = d["outputs"][0]
    users = graph.consumers(out)
    if d["op_type"] != "Conv" or len(users) != 1 or graph.op(users[0]) != "BatchNormalization" \
            or out in graph.outputs or not graph.is_weight(d["inputs"][1]):
        return False
    bn = graph.node(users[0])
    if bn["attrs"].get("training_mode", 0) or \
            not all(graph.is_weight(t) for t in bn["inputs"][1:5]):
        return False
    gamma, beta, mean, var = (graph.initializers[t].astype(np.float64) for t in bn["inputs"][1:5])
    scale = gamma / np.sqrt(var + float(bn["attrs"].get("epsilon", 1e-5)))
    W = graph.initializers[d["inputs"][1]]
    b = (graph.initializers[d["inputs"][2]].astype(np.float64)
         if len(d["inputs"]) > 2 and d["inputs"][2] else np.zeros(W.shape[0]))
    new_w, new_b = graph.fresh_name(f"{anchor}.weight_bn"), graph.fresh_name(f"{anchor}.bias_bn")
    graph.initializers[new_w] = (W * scale.reshape(-1, *[1] * (W.ndim - 1))).astype(W.dtype)
    graph.initializers[new_b] = ((b - mean) * scale + beta).astype(W.dtype)
    for t in (new_w, new_b):
        graph.tensors[t] = TensorInfo(graph.initializers[t].shape, W.dtype.name)
    graph.set_input(anchor, 1, new_w)
    if len(d["inputs"]) == 2:
        d["inputs"].append("")
    graph.set_input(anchor, 2, new_b)
    graph.replace_uses(bn["outputs"][0], out)
    graph.remove_node(users[0])
    graph.remove_unused()
    return True


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
    for k in kernels:
        fold_batchnorm(graph, k)
    groups = kernel_nodes(graph, kernels, "int8")
    nodes = _nodes_to_quantize(graph, groups)
    calib = calib or synthetic_calib(graph)
    quantized = _run_quantize_static(export_onnx(graph), nodes, calib, graph)
    new = import_onnx(quantized, {t: tuple(graph.shape(t)) for t in graph.inputs})
    _float_outputs(new)
    replace_graph(graph, new)
    return nodes


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


class _DropPreprocessAdvice(logging.Filter):
    """onnxruntime's quantizer advises (on the root logger, at every call) to run its shape
    pre-processing; fleetc's import already infers shapes, so the advice is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


_ADVICE_FILTER = _DropPreprocessAdvice()
logging.getLogger().addFilter(_ADVICE_FILTER)


def _run_quantize_static(model: onnx.ModelProto, nodes: list[str], calib: CalibData,
                         graph: Graph) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    excluded = [n.name for n in model.graph.node if n.name not in set(nodes)]
    with tempfile.TemporaryDirectory(prefix="fleetc_quant_") as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            model, out, _Reader(calib, graph), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        return onnx.load(str(out))


@dataclass
class QuantizePass(Pass):
    """Quantize the plan's int8 kernels (static, QDQ, per-channel weights)."""

    name = "quantize"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    kernels: tuple[str, ...] = field(default_factory=tuple)  # kernel names to make int8

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        calib = ctx.calib if isinstance(ctx.calib, CalibData) else None
        nodes = quantize(graph, list(self.kernels), calib)
        return PassResult(changed=bool(nodes), stats={"kernels_int8": len(self.kernels),
                                                      "nodes_quantized": len(nodes)})
