"""ONNX -> IR, the front end of every command.

Rule: load the model (external data included), check it with onnx.checker, upgrade a copy
whose default-domain opset is below REWRITE_OPSET to it (onnx's version converter: per-channel
QDQ, which the int8 rewrite writes, needs opset 13; the note `upgraded_note` names the source
opset and the file is never written), fix the input
shapes (a symbolic batch dimension becomes 1; other symbolic dimensions need `input_shapes`,
whose shapes must be positive integers of the declared rank, else BadInputError), build the
Graph, then infer shapes, fold constants and infer shapes again.
Post-conditions: every node has a unique deterministic name (its ONNX name when present and
unique, else "<op_type>_<index>" with index its position in the model); facts "shapes" hold;
ops the toolchain does not know stay as opaque nodes (listed by `unknown_ops`).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from passes.fold_constants import fold_constants
from passes.infer_shapes import infer_shapes, value_info_to_tensorinfo
from toolchain.errors import BadInputError
from toolchain.files import regular_file
from toolchain.ir import Graph, TensorInfo

__all__ = ["import_onnx", "load_model", "parse_input_shape", "MAX_INPUT_DIM", "MIN_OPSET",
           "MAX_OPSET", "REWRITE_OPSET", "upgraded_note"]

logger = logging.getLogger(__name__)

MAX_INPUT_ELEMENTS = 1 << 26   # per input sample: 256 MiB of float32 (calibration data is
#                                made of such samples; a 4096 x 4096 RGB image is 50 M)
MAX_INPUT_DIM = (1 << 31) - 1   # of a model input's dimension (declared or --input-shape)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'NAME=1x3x224x224' -> ('NAME', (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise BadInputError(f"--input-shape {text!r}: expected NAME=D1xD2x... with positive "
                            "integers, e.g. input=1x3x224x224")
    return name, shape


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        try:
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
        except ValueError as err:   # a negative offset or length
            raise BadInputError(f"{path}: tensor {tensor.name!r}: bad external data entry: "
                                f"{err}") from err
        data = path.parent / info.location
        if not data.is_file():
            raise BadInputError(f"{path}: external data file missing: {data} (tensor "
                                f"{tensor.name!r})")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (onnx.checker.ValidationError, OSError, ValueError) as err:
        raise BadInputError(f"{path}: cannot read external data: "
                            f"{str(err).splitlines()[0]}") from err


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load and check a model (a regular file; onnx's full check - the checker plus strict shape
    and type inference - with the declared shapes of intermediate values and outputs left out;
    every initializer readable); every failure is a one-line BadInputError naming the file."""
    if isinstance(source, onnx.ModelProto):
        model, label = source, "<model>"
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise BadInputError(f"{label}: no such file")
        if path.is_dir():
            raise BadInputError(f"{label}: is a directory, not an ONNX model")
        regular_file(path, "model file")   # a device or FIFO is never read (/dev/zero never ends)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError, OSError) as err:
            raise BadInputError(f"{label}: not an ONNX model (cannot parse: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__})"
                                ) from err
        if not model.graph.node and not model.graph.output:
            raise BadInputError(f"{label}: not an ONNX model (no graph; empty or truncated file)")
        _load_external_data(model, path)
    if not model.graph.output:
        raise BadInputError(f"{label}: invalid model: the graph has no outputs")
    _check_input_dims(model, label)
    _check_opset(model, label)
    _check_nodes(model, label)
    try:
        _full_check(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"{label}: invalid model: {first}") from err
    _check_initializers(model, label)
    return _upgrade_opset(model, label)


MIN_OPSET = 7   # onnxruntime guarantees the default domain from opset 7 (Gemm-6 has no kernel)
# The highest opset both back ends accept: onnxruntime 1.32 has kernels up to opset 28, TVM
# 0.27's ONNX frontend implements op versions up to 23 (tests/passes/test_import_onnx.py
# checks both against the installed versions).
MAX_OPSET = 23
REWRITE_OPSET = 13   # per-channel QDQ (DequantizeLinear's `axis`), written by the int8 rewrite
_UPGRADED = "fleetc.opset_upgraded_from"   # metadata of the upgraded copy: the source opset


def _default_opset(model: onnx.ModelProto) -> onnx.OperatorSetIdProto | None:
    return next((e for e in model.opset_import if e.domain in ("", "ai.onnx")), None)


def _check_opset(model: onnx.ModelProto, label: str) -> None:
    """The default domain's opset is one onnxruntime and TVM's frontend read (7 .. MAX_OPSET)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not MIN_OPSET <= entry.version <= MAX_OPSET:
            raise BadInputError(f"{label}: opset {entry.version} of the default ONNX domain is not "
                                f"supported: fleetc reads opsets {MIN_OPSET} to {MAX_OPSET} (the "
                                "highest both onnxruntime and TVM's ONNX frontend accept)")


def _upgrade_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """A copy at REWRITE_OPSET when the model's default opset is below it (else the model),
    checked again; a conversion that fails is a BadInputError naming the op that blocks it."""
    entry = _default_opset(model)
    if entry is None or entry.version >= REWRITE_OPSET:
        return model
    source = entry.version
    try:
        new = onnx.version_converter.convert_version(model, REWRITE_OPSET)
        _full_check(new)
    except Exception as err:   # the converter raises RuntimeError, ConvertError, ...
        raise BadInputError(f"{label}: cannot upgrade opset {source} to {REWRITE_OPSET} (the "
                            f"rewrites need it): {_blocking_op(model, err)}") from err
    onnx.helper.set_model_props(new, {**{p.key: p.value for p in new.metadata_props},
                                      _UPGRADED: str(source)})
    return new


def _blocking_op(model: onnx.ModelProto, err: Exception) -> str:
    """The first node that does not convert alone, named with its op type, else the
    converter's own first line."""
    version = _default_opset(model).version
    for node in model.graph.node:
        names = [t for t in (*node.input, *node.output) if t]
        g = helper.make_graph(
            [node], "probe", [helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None)
                              for t in dict.fromkeys(node.input) if t],
            [helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None)
             for t in node.output if t])
        probe = helper.make_model(g, opset_imports=[helper.make_opsetid("", version)])
        probe.ir_version = model.ir_version
        try:
            onnx.version_converter.convert_version(probe, REWRITE_OPSET)
        except Exception:   # noqa: BLE001 - any failure blocks the upgrade
            return f"op {node.op_type} (node {node.name[:60] or names[0][:60]!r}) has no upgrade"
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def upgraded_note(model: onnx.ModelProto) -> str | None:
    """The note for a model `load_model` upgraded (None if it did not)."""
    props = {p.key: p.value for p in model.metadata_props}
    if _UPGRADED not in props:
        return None
    return (f"opset {props[_UPGRADED]} upgraded to {_default_opset(model).version} on import "
            "(onnx version converter; the rewrites need it); the model file is unchanged")


_AUTO_PADS = (b"NOTSET", b"SAME_UPPER", b"SAME_LOWER", b"VALID")


def _check_nodes(model: onnx.ModelProto, label: str) -> None:
    """Names and text attributes are UTF-8 (ONNX strings); `auto_pad` is one of ONNX's four
    values and a Conv bias fits its weights (onnx's checker lets both through and onnxruntime
    then fails inside a session)."""
    graph = model.graph
    names = [n for node in graph.node for n in (node.name, node.op_type, node.domain,
                                                  *node.input, *node.output)]
    names += [v.name for v in (*graph.input, *graph.output, *graph.initializer)]
    if any(not isinstance(n, str) for n in names):   # protobuf hands invalid UTF-8 back as bytes
        raise BadInputError(f"{label}: invalid model: a node or tensor name is not UTF-8 text")
    for node in graph.node:
        for attr in node.attribute:
            for text in [attr.s, *attr.strings]:
                try:
                    text.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadInputError(f"{label}: invalid model: node {node.name[:60]!r}'s "
                                        f"attribute {attr.name[:60]!r} is not UTF-8 text") from None
            if attr.name == "auto_pad" and attr.s not in _AUTO_PADS:
                raise BadInputError(f"{label}: invalid model: node {node.name[:60]!r} has "
                                    f"auto_pad {attr.s[:40].decode(errors='replace')!r}, not one "
                                    "of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    _check_conv_bias(model, label)


def _check_conv_bias(model: onnx.ModelProto, label: str) -> None:
    """A Conv's bias initializer is 1-D with one value per output channel (onnx's inference does
    not check it; onnxruntime then failed while running the model)."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] not in inits \
                or node.input[1] not in inits:
            continue
        bias, weight = inits[node.input[2]], inits[node.input[1]]
        if list(bias.dims) != list(weight.dims[:1]):
            raise BadInputError(f"{label}: invalid model: Conv {node.name[:60]!r} has a bias of "
                                f"shape {list(bias.dims)[:8]}, not [{weight.dims[0]}] (one value "
                                "per output channel)")


def _full_check(model: onnx.ModelProto) -> None:
    """onnx.checker's full check (strict shape and type inference: a rank-3 input into a 2-D
    Conv, pads of the wrong length, batch-norm parameters of another length fail here) without
    the declared shapes of intermediate values and the dimensions of graph outputs: exporters
    leave stale ones and the import infers its own, so a stale one is no reason to refuse a
    model (`fleetc inspect` checks them too). The model is restored as it was."""
    graph = model.graph
    value_info = [v.SerializeToString() for v in graph.value_info]
    outputs = [o.type.SerializeToString() for o in graph.output]
    del graph.value_info[:]
    for out in graph.output:   # the rank stays: the checker wants an output's shape field
        for dim in out.type.tensor_type.shape.dim if out.type.HasField("tensor_type") else ():
            dim.Clear()
    try:
        onnx.checker.check_model(model, full_check=True)
    finally:
        graph.value_info.extend(onnx.ValueInfoProto.FromString(v) for v in value_info)
        for out, saved in zip(graph.output, outputs, strict=True):
            out.type.ParseFromString(saved)


def _check_input_dims(model: onnx.ModelProto, label: str) -> None:
    """Declared input dimensions of at most MAX_INPUT_DIM (ONNX shapes are int64, and shape
    arithmetic on a 2^62 dimension overflows)."""
    for vi in model.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > MAX_INPUT_DIM:
                raise BadInputError(f"{label}: invalid model: input {vi.name!r} has a dimension "
                                    f"above {MAX_INPUT_DIM} (2^31 - 1): {dim.dim_value}")
        elements = math.prod(max(1, d.dim_value) for d in vi.type.tensor_type.shape.dim)
        if elements > MAX_INPUT_ELEMENTS:
            raise BadInputError(f"{label}: invalid model: input {vi.name!r} has {elements} "
                                f"elements, more than fleetc handles ({MAX_INPUT_ELEMENTS})")


def _check_initializers(model: onnx.ModelProto, label: str) -> None:
    """Every initializer decodes to an array of its declared type and shape (the checker lets a
    changed data_type or a data field of the wrong length through)."""
    for init in model.graph.initializer:
        try:
            numpy_helper.to_array(init)
        except (KeyError, ValueError, TypeError) as err:
            why = "unknown data type" if isinstance(err, KeyError) else str(err)
            raise BadInputError(f"{label}: invalid model: initializer {init.name!r} (data type "
                                f"{init.data_type}, dims {list(init.dims)}) cannot be read: "
                                f"{why}") from err


def _given_shape(name: str, given, declared: tuple | None) -> tuple[int, ...]:
    """A shape given for input `name`: positive integers, as many as the model declares."""
    shape = tuple(given)
    if not all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0
               for d in shape) or not shape:
        raise BadInputError(f"--input-shape {name}={'x'.join(map(str, shape))}: expected "
                            "positive integers, e.g. input=1x3x224x224")
    if declared is not None and len(shape) != len(declared):
        raise BadInputError(f"--input-shape {name}={'x'.join(map(str, shape))}: input {name!r} "
                            f"has rank {len(declared)} (declared {list(declared)}), not "
                            f"{len(shape)}")
    return tuple(int(d) for d in shape)


def _fixed_input_shapes(model: onnx.ModelProto, given: dict[str, tuple[int, ...]],
                        notes: list[str]) -> dict[str, tuple[int, ...]]:
    inits = {i.name for i in model.graph.initializer}
    real = [vi for vi in model.graph.input if vi.name not in inits]
    unknown = set(given) - {vi.name for vi in real}
    if unknown:
        raise BadInputError(f"--input-shape names {sorted(unknown)}, but the model's inputs are "
                            f"{[vi.name for vi in real]}")
    shapes = {}
    for vi in real:
        info = value_info_to_tensorinfo(vi)
        if vi.name in given:
            shapes[vi.name] = _given_shape(vi.name, given[vi.name], info.shape)
            continue
        if info.shape is None:
            raise BadInputError(f"input {vi.name!r} has no shape: give it with "
                                f"--input-shape {vi.name}=D1xD2x...")
        dims = list(info.shape)
        if dims and not isinstance(dims[0], int):
            notes.append(f"input {vi.name!r}: symbolic batch dimension {dims[0]!r} taken as 1")
            dims[0] = 1
        symbolic = [d for d in dims if not isinstance(d, int) or d <= 0]
        if symbolic:
            raise BadInputError(f"input {vi.name!r} has symbolic dimensions {symbolic}: give "
                                f"its shape with --input-shape {vi.name}=D1xD2x...")
        shapes[vi.name] = tuple(dims)
    return shapes


def _attrs(node: onnx.NodeProto) -> tuple[dict, dict]:
    values, types = {}, {}
    for a in node.attribute:
        types[a.name] = a.type
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            values[a.name] = a  # subgraphs stay opaque
            continue
        v = helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.TENSOR:
            v = numpy_helper.to_array(v)
        elif a.type == onnx.AttributeProto.STRING:
            v = v.decode(errors="replace")
        elif a.type == onnx.AttributeProto.STRINGS:
            v = [s.decode(errors="replace") for s in v]
        elif a.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
            v = list(v)
        elif a.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.TENSORS,
                        onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS,
                        onnx.AttributeProto.SPARSE_TENSORS):
            v = a
        values[a.name] = v
    return values, types


def _node_names(model: onnx.ModelProto) -> list[str]:
    given = [n.name for n in model.graph.node]
    counts: dict[str, int] = {}
    for n in given:
        counts[n] = counts.get(n, 0) + 1
    taken = {n for n in given if n and counts[n] == 1}
    names = []
    for i, (n, node) in enumerate(zip(given, model.graph.node, strict=True)):
        if n and counts[n] == 1:
            names.append(n)
            continue
        base = candidate = f"{node.op_type}_{i}"
        k = 1
        while candidate in taken:
            candidate = f"{base}_{k}"
            k += 1
        taken.add(candidate)
        names.append(candidate)
    return names


def _build(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> Graph:
    graph = Graph()
    graph.name = model.graph.name or "graph"
    graph.ir_version = model.ir_version
    graph.opset = {o.domain if o.domain != "ai.onnx" else "": o.version
                   for o in model.opset_import}
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        graph.initializers[init.name] = arr
        graph.tensors[init.name] = TensorInfo(tuple(int(d) for d in arr.shape), arr.dtype.name)
    for vi in model.graph.input:
        if vi.name in graph.initializers:
            continue
        dtype = value_info_to_tensorinfo(vi).dtype
        graph.inputs.append(vi.name)
        graph.tensors[vi.name] = TensorInfo(shapes[vi.name], dtype)
    for i, (name, node) in enumerate(zip(_node_names(model), model.graph.node, strict=True)):
        attrs, types = _attrs(node)
        graph.add_node(name, node.op_type, list(node.input), list(node.output), attrs,
                       domain=node.domain, order=i)
        graph.node(name)["attr_types"] = types
    graph.outputs = [vi.name for vi in model.graph.output]
    for vi in model.graph.output:
        graph.tensors.setdefault(vi.name, value_info_to_tensorinfo(vi))
    return graph


def import_onnx(source: str | os.PathLike | onnx.ModelProto,
                input_shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """Load, check and convert a model; the source file is only read."""
    model = load_model(source)
    if model.functions:
        logger.info("model has %d local functions; calls to them stay opaque nodes",
                    len(model.functions))
    notes: list[str] = [n for n in [upgraded_note(model)] if n]
    shapes = _fixed_input_shapes(model, dict(input_shapes or {}), notes)
    graph = _build(model, shapes)
    graph.notes = notes
    graph.source = "<model>" if isinstance(source, onnx.ModelProto) else str(source)
    infer_shapes(graph)
    if fold_constants(graph):
        infer_shapes(graph)
    for out in graph.outputs:
        info = graph.tensors.get(out)
        if info is not None and info.shape is not None:
            dims = tuple(d if isinstance(d, int) else None for d in info.shape)
            graph.tensors[out] = TensorInfo(dims, info.dtype)
    return graph


