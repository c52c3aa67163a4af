"""Apply a plan to a model: the one entry point that compile, fleet and `fleetc rewrite` call.

The passes are `passes.plan_passes(plan)`: resize_input -> skip_blocks -> shrink_kernels ->
prune_channels -> fold_batchnorm -> quantize (int8) -> to_fp16. Structure first, then widths
(reconstruction sees the final structure), then precision (int8 ranges are calibrated on the
final weights).
Before anything runs the plan is checked against the model's design space and the target's
precisions (BadInputError naming the first illegal choice); choices for kernels inside a
skipped block are dropped (the block is gone). After the passes the result is checked:
onnx.checker, an onnxruntime session, and the original output shapes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from passes import plan_passes
from passes.count_costs import node_macs
from passes.export_onnx import export_onnx
from passes.resize_input import fit_to_shape
from toolchain.calib import CalibData, load_calib, synthetic_calib
from toolchain.errors import UnsupportedOpError
from toolchain.ir import Graph
from toolchain.pipeline import PassContext, PassRecord, Pipeline
from toolchain.space import PRECISIONS, Plan
from toolchain.target import Target, resolve_target

__all__ = ["apply_plan", "rewrite", "RewriteResult", "KernelSize",
           "check_model", "kernel_sizes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelSize:
    """One kernel's multiply-accumulates and parameter bytes (weights as stored)."""

    name: str
    op_type: str
    macs: int
    param_bytes: int
    precision: str = "fp32"


@dataclass(frozen=True)
class RewriteResult:
    model: onnx.ModelProto
    before: dict[str, KernelSize]
    after: dict[str, KernelSize]      # kernels that still exist, by their original names
    records: tuple[PassRecord, ...] = ()
    dropped: tuple[str, ...] = ()     # plan choices for kernels removed with a skipped block
    synthetic_calib: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def _graph(source) -> Graph:
    from passes.import_onnx import import_onnx

    if isinstance(source, Graph):
        return source.copy()
    return import_onnx(source)


def _plan(plan) -> Plan:
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    return Plan.load(plan)


def _target_of(plan: Plan, target: str | Target | None) -> Target | None:
    """The API edge: the given target (name or Target), else the plan's, else none."""
    if target is None and plan.target:
        target = plan.target
    return None if target is None else resolve_target(target)


def _calib(calib, graph: Graph, needed: bool) -> CalibData | None:
    if isinstance(calib, CalibData):
        return calib
    if calib is not None:
        return load_calib(calib, graph)
    return synthetic_calib(graph) if needed else None


def _calib_at(calib: CalibData | None, shapes: dict[str, list[int]]) -> CalibData | None:
    """Calibration images at the plan's input size (int8 ranges are calibrated on them)."""
    if calib is None or not shapes:
        return calib
    inputs = {k: fit_to_shape(v, list(shapes.get(k, ()))) for k, v in calib.inputs.items()}
    return CalibData(inputs, calib.labels, calib.source)


def _weight_bytes(graph: Graph, node: str) -> int:
    """Bytes of the weights a node reads, directly or through DequantizeLinear / Cast."""
    total, stack, seen = 0, list(graph.node(node)["inputs"][1:]), set()
    while stack:
        t = stack.pop()
        if not t or t in seen:
            continue
        seen.add(t)
        if graph.is_weight(t):
            total += int(np.asarray(graph.initializers[t]).nbytes)
            continue
        p = graph.producer(t)
        if p is not None and graph.op(p) in ("DequantizeLinear", "Cast"):
            stack.extend(graph.node(p)["inputs"])
    return total


def kernel_sizes(graph: Graph, kernels: dict[str, tuple[str, ...]]) -> dict[str, KernelSize]:
    """Costs of the named kernels (name -> nodes) that exist in `graph`."""
    out = {}
    for name, nodes in kernels.items():
        if name not in graph:
            continue
        live = [n for n in nodes if n in graph]
        w = graph.node(name)["inputs"][1] if len(graph.node(name)["inputs"]) > 1 else ""
        p = graph.producer(w) if w else None
        precision = ("int8" if p is not None and graph.op(p) == "DequantizeLinear" else
                     "fp16" if graph.dtype(graph.node(name)["inputs"][0]) == "float16"
                     else "fp32")
        out[name] = KernelSize(name, graph.op(name), node_macs(graph, name),
                               sum(_weight_bytes(graph, n) for n in live), precision)
    return out


def check_model(model: onnx.ModelProto, output_shapes: dict[str, tuple]) -> None:
    """The rewritten model passes onnx.checker, loads in onnxruntime, keeps its output shapes."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:  # a bug in a pass: name it, do not write the file
        raise RuntimeError(f"the rewritten model is invalid: {str(err).splitlines()[0]}") from err
    got = {o.name: tuple(o.shape) for o in sess.get_outputs()}
    for name, shape in output_shapes.items():
        if got.get(name) != tuple(shape):
            raise RuntimeError(f"the rewritten model's output {name!r} has shape "
                               f"{got.get(name)}, expected {tuple(shape)}")


def _batch_names(source) -> dict[str, str]:
    """Inputs of the source model whose batch dimension was symbolic: name -> its symbol."""
    if isinstance(source, Graph):
        return {}
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source),
                                                                          load_external_data=False)
    out = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param and not dims[0].HasField("dim_value"):
            out[vi.name] = dims[0].dim_param
    return out


def _symbolic_batch(model: onnx.ModelProto, names: dict[str, str]) -> onnx.ModelProto:
    """Give back the batch dimension import fixed to 1, if the model still runs at batch 2
    with the same per-sample outputs (a Reshape baked at batch 1 would not): the rewritten
    model then evaluates a whole calibration set in one run, as the source did."""
    import onnxruntime as ort

    if not names or len(model.graph.input) != len(names):
        return model
    symbol = next(iter(names.values()))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    for vi in [*out.graph.input, *out.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = symbol
    try:
        sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
        one = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.random.default_rng(0).standard_normal(
            [2, *i.shape[1:]]).astype(np.float32) for i in sess.get_inputs()}
        both = sess.run(None, feeds)
        first = one.run(None, {k: v[:1] for k, v in feeds.items()})
        same = all(b.shape[0] == 2 and np.allclose(b[:1], f, atol=1e-4)
                   for b, f in zip(both, first, strict=True))
    except Exception as err:  # e.g. a shape baked in at batch 1: keep the fixed batch
        logger.info("keeping batch 1 in the rewritten model: %s", str(err).splitlines()[0])
        return model
    return out if same else model


def rewrite(source: Graph | onnx.ModelProto | str | os.PathLike, plan: Plan | dict | str | Path,
            calib: CalibData | str | os.PathLike | None = None, target: str | Target | None = None,
            check: bool = True, reconstruct: bool = True) -> RewriteResult:
    """Apply `plan`; the source is never modified. See the module doc for the order."""
    from passes import analyze, unknown_ops

    graph = _graph(source)
    unknown = unknown_ops(graph)
    if unknown:   # the rewritten model is checked in onnxruntime, which cannot run them
        op = unknown[0]
        raise UnsupportedOpError(f"op {op['op_type']!r} of domain {op['domain']!r} (node "
                                 f"{op['name']!r}) is not an ONNX op: fleetc cannot rewrite or "
                                 "check a model through it")
    plan = _plan(plan)
    tgt = _target_of(plan, target)
    precisions = tuple(tgt.precisions) if tgt else PRECISIONS
    analyze(graph)
    space = graph.space
    plan.check(space, precisions)
    kernels = {k.name: k.nodes for k in graph.kernels if k.is_compute}
    before = kernel_sizes(graph, kernels)
    removed_nodes = {n for b in plan.skip_blocks for n in space.blocks[b]}
    dropped = tuple(sorted(k for k in plan.kernels if k in removed_nodes))
    needs_data = any(c.precision == "int8" or c.width < 1.0 for c in plan.kernels.values())
    data = _calib(calib, graph, needs_data)
    outputs = {t: graph.shape(t) for t in graph.outputs}
    ctx = PassContext(calib=_calib_at(data, plan.input_shape), facts={"shapes"})
    records = Pipeline(plan_passes(plan, set(dropped), reconstruct)).run(graph, ctx)
    model = export_onnx(graph)
    model.producer_name = "fleetc rewrite"
    if tgt:
        onnx.helper.set_model_props(model, {"fleetc.target": tgt.name})
    if check:
        check_model(model, outputs)
        model = _symbolic_batch(model, _batch_names(source))
    return RewriteResult(model, before, kernel_sizes(graph, kernels), tuple(records), dropped,
                         data is not None and data.synthetic)


def apply_plan(graph_or_model: Graph | onnx.ModelProto | str | os.PathLike,
               plan: Plan | dict | str | Path, calib: CalibData | str | os.PathLike | None = None,
               target: str | Target | None = None) -> onnx.ModelProto:
    """The model rewritten by `plan`, checked (checker, onnxruntime, output shapes).

    `calib`: CalibData, a .npz path (toolchain.calib format) or None (random data with a loud
    warning, only if the plan quantizes or prunes). `target`: a Target or its name; the plan's
    own `target` is used when this is None. Raises BadInputError for an illegal plan."""
    return rewrite(graph_or_model, plan, calib, target).model
