"""`toolchain.inspect(path)`: what the toolchain sees in a model and what it could change.

The returned dict is exactly what `fleetc inspect --json` prints (schema version 1, README).
Before the analysis the model must pass onnx's full check (`check_model(full_check=True)`:
the checker plus strict shape and type inference, declared shapes included - every command's
`load_model` runs it without them) and, when it uses no custom op domain, load in an
onnxruntime session; a model that fails either is a BadInputError with the reason.
"""
from __future__ import annotations

import logging
import os
import re

import numpy as np
import onnx

from passes import load_and_analyze, unknown_ops
from passes.import_onnx import load_model
from toolchain.errors import BadInputError
from toolchain.ir import Graph

__all__ = ["inspect", "inspect_graph", "INSPECT_SCHEMA_VERSION", "format_table"]

logger = logging.getLogger(__name__)

INSPECT_SCHEMA_VERSION = 1


def _io(graph: Graph, names: list[str]) -> list[dict]:
    return [{"name": t, "shape": list(graph.shape(t) or []), "dtype": graph.dtype(t)}
            for t in names]


def _shape(shape) -> list | None:
    return None if shape is None else list(shape)


def inspect_graph(graph: Graph) -> dict:
    kernels, space = graph.kernels, graph.space
    metas = [graph.node(n)["meta"] for n in graph.nx]
    params = sum(int(np.size(w)) for w in graph.initializers.values())
    summary = {
        "inputs": _io(graph, graph.inputs), "outputs": _io(graph, graph.outputs),
        "opset": graph.opset.get("", 0), "nodes": len(graph), "kernels": len(kernels),
        "macs": sum(m["count_costs.macs"] for m in metas),
        "flops": sum(m["count_costs.flops"] for m in metas),
        "params": params,
        "param_bytes": sum(int(w.nbytes) for w in graph.initializers.values()),
        "design_space_log10": round(space.size_log10(), 3),
        "notes": list(graph.notes),
    }
    rows = [{"name": k.name, "op_type": k.op_type, "fused": list(k.fused), "nodes": list(k.nodes),
             "input_shape": _shape(k.input_shape), "output_shape": _shape(k.output_shape),
             "macs": k.macs, "flops": k.flops, "params": k.params,
             "options": space.options.get(k.name, {})} for k in kernels]
    return {"schema_version": INSPECT_SCHEMA_VERSION, "model": graph.source,
            "summary": summary, "kernels": rows,
            "skip_blocks": {b: list(n) for b, n in space.blocks.items()},
            "resolutions": {"input": space.input_name, "sizes": space.resolutions},
            "unknown_ops": unknown_ops(graph)}


def inspect(path: str | os.PathLike | onnx.ModelProto,
            input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Check, import and analyse a model; the dict `fleetc inspect --json` prints."""
    model = load_model(path)
    label = "<model>" if isinstance(path, onnx.ModelProto) else str(path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as err:
        raise BadInputError(f"{label}: invalid model (onnx full check): {_first(err)}") from err
    domains = {o.domain for o in model.opset_import} | {n.domain for n in model.graph.node}
    if domains <= set(_STANDARD_DOMAINS):   # onnxruntime knows no custom domain's ops
        _ort_load(model if isinstance(path, onnx.ModelProto) else label, label)
    graph = load_and_analyze(model, input_shapes)
    graph.source = label
    return inspect_graph(graph)


_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def _ort_load(model: onnx.ModelProto | str, label: str) -> None:
    """An onnxruntime session of the model (from its file when it has one: models of 2 GB and
    more), no graph optimization; BadInputError with the first line of the reason."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    errors = tuple(v for v in vars(state).values()
                   if isinstance(v, type) and issubclass(v, Exception)) + (RuntimeError,)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except errors as err:
        raise BadInputError(f"{label}: onnxruntime cannot load the model: {_first(err)}") from err


def _first(err: Exception) -> str:
    """The first non-empty line of an error, without onnxruntime's prefixes and the C++ source
    location and signature it puts before the reason."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:)?", "",
                  text)
    return re.sub(r"/onnxruntime_src/\S+:\d+ .*?\) ", "", text)


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _options(o: dict) -> str:
    parts = []
    if o.get("precision"):
        parts.append("/".join(o["precision"]))
    if o.get("width"):
        parts.append("w " + "/".join(f"{w:g}" for w in o["width"]))
    if o.get("kernel_size"):
        parts.append("k " + "/".join(str(k) for k in o["kernel_size"]))
    return "  ".join(parts) or "-"


def format_table(report: dict) -> str:
    s = report["summary"]
    dims = lambda io: ", ".join(f"{x['name']} {'x'.join(map(str, x['shape']))} {x['dtype']}"  # noqa: E731
                                for x in io)
    lines = [f"model    {report['model']}",
             f"inputs   {dims(s['inputs'])}", f"outputs  {dims(s['outputs'])}",
             f"opset {s['opset']}  nodes {s['nodes']}  kernels {s['kernels']}  "
             f"MACs {_human(s['macs'])}  FLOPs {_human(s['flops'])}  "
             f"params {_human(s['params'])} ({_human(s['param_bytes'])}B)",
             f"design space 10^{s['design_space_log10']:.1f} plans  "
             f"skippable blocks {len(report['skip_blocks'])}  "
             f"resolutions {report['resolutions']['sizes'] or '-'}"]
    lines += [f"note: {n}" for n in s["notes"]]
    header = ("kernel", "op", "output", "MACs", "params", "options")
    rows = [(k["name"], "+".join([k["op_type"], *k["fused"]]),
             "x".join(map(str, k["output_shape"] or ["?"])), _human(k["macs"]),
             _human(k["params"]), _options(k["options"])) for k in report["kernels"]]
    widths = [min(40, max(len(str(r[i])) for r in [header, *rows])) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    lines += ["", fmt.format(*header)]
    lines += [fmt.format(*(str(c)[:40] for c in r[:5]), r[5]) for r in rows]
    if report["skip_blocks"]:
        lines += ["", "skippable residual blocks: " + ", ".join(report["skip_blocks"])]
    if report["unknown_ops"]:
        lines += ["", "unknown ops (kept as opaque nodes): " + ", ".join(
            f"{u['name']} ({u['domain'] + '.' if u['domain'] else ''}{u['op_type']})"
            for u in report["unknown_ops"])]
    return "\n".join(lines)
