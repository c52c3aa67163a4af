"""Model cases: ONNX bytes mutated (truncation, byte flips, protobuf field mutations through
onnx.helper - ranks, dtypes, pads, opsets, batch-norm parameters, names, dims, attributes,
node order, custom ops, external data), model paths that are not regular files, and output
paths that are inputs, folders, links or special files; run through inspect, rewrite,
predict and (heavy) compile."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.fuzzing.bases import base_plan, model_bytes, model_proto
from tests.fuzzing.cases import Case, pick

__all__ = ["model_case", "mutate_model", "PROTO_MUTATIONS", "output_variant"]

DTYPES = [TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT8, TensorProto.STRING,
          TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16, 0, 77, 1000]


def _nodes(model, op_type: str) -> list:
    return [n for n in model.graph.node if n.op_type == op_type]


def _inits(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def input_rank(model, rng):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if rng.random() < 0.5:
        del dims[-1]
        return "graph input rank 4 -> 3", True
    dims.add().dim_value = 1
    return "graph input rank 4 -> 5", True


def input_dtype(model, rng):
    value = pick(rng, DTYPES)
    model.graph.input[0].type.tensor_type.elem_type = value
    return f"graph input dtype -> {value}", True


def output_dtype(model, rng):
    value = pick(rng, DTYPES)
    model.graph.output[0].type.tensor_type.elem_type = value
    return f"graph output dtype -> {value}", True


def init_dtype(model, rng):
    init = pick(rng, list(model.graph.initializer))
    value = pick(rng, DTYPES)
    init.data_type = value
    return f"initializer {init.name!r} dtype -> {value}", value != TensorProto.FLOAT


def init_dims(model, rng):
    init = pick(rng, [i for i in model.graph.initializer if i.dims])
    how = int(rng.integers(4))
    if how == 0:
        init.dims.append(1)
    elif how == 1:
        del init.dims[-1]
    elif how == 2:
        init.dims[0] = init.dims[0] * 2
    else:
        del init.dims[:]
        init.dims.extend([1_000_000, 1_000_000])
    return f"initializer {init.name!r} dims -> {list(init.dims)}", True


def conv_pads(model, rng):
    node = pick(rng, _nodes(model, "Conv"))
    value = pick(rng, [[-1, -1, -1, -1], [1, 1], [-3, 0, 0, -3], [1] * 6])
    _set_attr(node, "pads", value)
    return f"Conv {node.name!r} pads -> {value}", True


def conv_attr(model, rng):
    node = pick(rng, _nodes(model, "Conv"))
    name, value = pick(rng, [("strides", [0, 0]), ("dilations", [0, 0]), ("group", 3),
                             ("kernel_shape", [9, 9]), ("auto_pad", "WRONG"),
                             ("strides", [-1, 2]), ("bogus", 1), ("group", 0)])
    _set_attr(node, name, value)
    return f"Conv {node.name!r} {name} -> {value!r}", True


def attr_type(model, rng):
    node = pick(rng, [n for n in model.graph.node if n.attribute])
    attr = pick(rng, list(node.attribute))
    node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(attr.name, pick(rng, [1.5, "x", [0.5, 2.5]])))
    return f"{node.op_type} {node.name!r} attribute {attr.name} of the wrong type", True


def _set_attr(node, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def bad_opset(model, rng):
    value = pick(rng, [1_000_000, 0, -5, 2 ** 40, 1, 6])
    model.opset_import[0].version = value
    return f"opset -> {value}", None if value in (1, 6) else True


def ir_version(model, rng):
    value = pick(rng, [0, 1, 3, 99, 2 ** 40])
    model.ir_version = value
    return f"ir_version -> {value}", True


def bn_params(model, rng):
    nodes = _nodes(model, "BatchNormalization")
    if not nodes:
        return None
    inits = _inits(model)
    name = pick(rng, list(nodes[0].input[1:]))
    arr = onnx.numpy_helper.to_array(inits[name])
    new = arr[:5] if rng.random() < 0.5 else np.concatenate([arr, arr[:1]])
    inits[name].CopyFrom(onnx.numpy_helper.from_array(new, name))
    return f"BatchNormalization parameter {name!r} length {arr.size} -> {new.size}", True


def rename(model, rng):
    g = model.graph
    how = int(rng.integers(5))
    if how == 0:
        node = pick(rng, list(g.node))
        node.input[0] = "ghost"
        return f"node {node.name!r} reads a tensor nobody writes", True
    if how == 1:
        g.output[0].name = "ghost"
        return "graph output renamed to a tensor nobody writes", True
    if how == 2:
        a, b = g.node[0], g.node[1]
        b.output[0] = a.output[0]
        return f"nodes {a.name!r} and {b.name!r} write the same tensor", True
    if how == 3:
        init = pick(rng, list(g.initializer))
        init.name = init.name + "_renamed"
        return f"initializer {init.name!r} renamed away from its readers", True
    node = pick(rng, list(g.node))
    node.name = pick(rng, ["../../x", "a\nb", "k" * 5000, "", g.node[0].name, "fleet.json"])
    return f"node renamed to {node.name[:40]!r}", None


def huge_dims(model, rng):
    dim = model.graph.input[0].type.tensor_type.shape.dim[int(rng.integers(1, 4))]
    value = pick(rng, [2 ** 31 - 1, 10 ** 12, 0, -3, 2 ** 62])
    dim.dim_value = value
    return f"graph input dim -> {value}", True if value <= 0 else None


def symbolic_dims(model, rng):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    which = int(rng.integers(len(dims)))
    dims[which].dim_param = pick(rng, ["N", "H", "", "a b"])
    return f"graph input dim {which} symbolic {dims[which].dim_param!r}", False if which == 0 \
        else None


def drop_node(model, rng):
    node = pick(rng, list(model.graph.node))
    model.graph.node.remove(node)
    return f"node {node.name!r} removed", True


def node_order(model, rng):
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    return "nodes in reverse order (not topologically sorted)", True


def cycle(model, rng):
    node = model.graph.node[0]
    node.input[0] = model.graph.node[-1].output[0]
    return f"node {node.name!r} reads the last node's output (a cycle)", True


def custom_op(model, rng):
    node = pick(rng, [n for n in model.graph.node if n.op_type in ("Relu", "Clip")])
    if rng.random() < 0.5:
        node.op_type, node.domain = "FuzzOp", "com.fuzz"
        del node.input[1:]
        model.opset_import.append(helper.make_opsetid("com.fuzz", 1))
        return f"{node.name!r} -> custom-domain op com.fuzz.FuzzOp", None
    node.op_type = "NotAnOp"
    return f"{node.name!r} -> unknown op NotAnOp in the default domain", True


def external_data(model, rng):
    init = max(model.graph.initializer, key=lambda i: len(i.raw_data))
    where = pick(rng, ["missing.bin", "../../../etc/passwd", "/dev/zero", "/etc/hostname",
                       "w.bin", "m.onnx"])
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    length = pick(rng, ["16", str(2 ** 40), "-1"])
    for key, value in (("location", where), ("offset", "0"), ("length", length)):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    return f"initializer {init.name!r} external data at {where} (length {length})", True


def empty_parts(model, rng):
    part = pick(rng, ["node", "output", "input", "initializer"])
    model.graph.ClearField(part)
    return f"graph without {part}s", True


def value_info(model, rng):
    tensor = model.graph.node[0].output[0]
    elem = pick(rng, [TensorProto.FLOAT, TensorProto.INT64])
    model.graph.value_info.append(helper.make_tensor_value_info(tensor, elem, [7, 7]))
    return f"value_info of {tensor!r} conflicts with its inferred shape", None


def float_data(model, rng):
    init = pick(rng, [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT])
    init.ClearField("raw_data")
    init.float_data.extend([1.0, 2.0, 3.0])
    return f"initializer {init.name!r} holds 3 values, not its dims' count", True


def metadata(model, rng):
    model.doc_string = "d" * 1_000_000
    entry = model.metadata_props.add()
    entry.key, entry.value = "../x\n", "\u0000" * 10
    return "1 MB doc string and odd metadata", False


PROTO_MUTATIONS = [input_rank, input_dtype, output_dtype, init_dtype, init_dims, conv_pads,
                   conv_attr, attr_type, bad_opset, ir_version, bn_params, rename, huge_dims,
                   symbolic_dims, drop_node, node_order, cycle, custom_op, external_data,
                   empty_parts, value_info, float_data, metadata]


def _proto_mutant(name: str, rng, count: int) -> tuple[bytes, str, bool | None]:
    """`count` mutations in a row; one that does not apply to what the earlier ones left (no
    BatchNormalization, no input left) is tried on a copy and dropped."""
    model = model_proto(name)
    done, bad = [], False
    for _ in range(10 * count):
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        try:
            result = pick(rng, PROTO_MUTATIONS)(trial, rng)
        except (IndexError, ValueError, KeyError, StopIteration):
            result = None
        if result is not None:
            model = trial
            done.append(result[0])
            bad = bad or result[1] is True
        if len(done) == count:
            break
    return model.SerializeToString(), "; ".join(done) or "unchanged", bad or None


def _byte_mutant(name: str, rng) -> tuple[bytes, str, bool | None]:
    data = bytearray(model_bytes(name))
    how = int(rng.integers(5))
    if how == 0:
        cut = int(rng.integers(len(data)))
        return bytes(data[:cut]), f"truncated to {cut} of {len(data)} bytes", None
    if how == 1:
        return b"", "empty file", True
    if how == 2:
        return b"not a model\n" * 50, "a text file", True
    span = min(len(data), 8192) if rng.random() < 0.7 else len(data)
    flips = int(rng.integers(1, 33))
    for pos in rng.integers(0, span, flips):
        data[int(pos)] ^= int(rng.integers(1, 256))
    if how == 3:
        return bytes(data), f"{flips} bytes flipped in the first {span} bytes", None
    return bytes(data) + bytes(rng.integers(0, 256, 64, dtype=np.uint8)), \
        f"{flips} bytes flipped and 64 random bytes appended", None


def mutate_model(name: str, rng) -> tuple[bytes, str, bool | None]:
    """Bytes of a mutant of base model `name`, what was done, whether it is invalid."""
    if rng.random() < 0.25:
        return _byte_mutant(name, rng)
    return _proto_mutant(name, rng, 1 if rng.random() < 0.8 else int(rng.integers(2, 4)))


def _special_model(case: Case, rng) -> None:
    """The model path is not a regular model file."""
    how = pick(rng, ["dir", "fifo", "zero", "null", "loop", "dangling", "missing", "link"])
    case.mutation = f"model path: {how}"
    case.expect_bad = how != "link"
    if how == "dir":
        case.dirs.append("m.onnx")
    elif how == "fifo":
        case.fifos.append("m.onnx")
    elif how == "link":
        case.files["real.onnx"] = model_bytes("tiny")
        case.links["m.onnx"] = "real.onnx"
    elif how != "missing":
        case.links["m.onnx"] = {"zero": "/dev/zero", "null": "/dev/null", "loop": "m.onnx",
                                "dangling": "gone.onnx"}[how]


# -o paths that are (or hold) inputs, folders, links or special files; "" = none of these.
REWRITE_OUTPUTS = ["m.onnx", "./m.onnx", "link.onnx", "outdir", "", "fifo.onnx",
                   "notes/out.onnx", "new/sub/out.onnx", "dangling.onnx"]
COMPILE_OUTPUTS = [".", "d", "notes", "m.onnx", "link", "dirlink", "", "fifo", "empty"]


def output_variant(case: Case, out: str, model_path: str) -> str:
    """Lay out what an odd -o path needs; return the path. Whether it is legal: bad_output."""
    if out in ("link.onnx", "link"):
        case.links[out] = model_path
    elif out in ("fifo.onnx", "fifo"):
        case.fifos.append(out)
    elif out in ("outdir",):
        case.dirs.append(out)
    elif out.startswith("notes"):
        case.files["notes/thesis.tex"] = b"\\documentclass{article} my thesis\n"
    elif out == "dirlink":
        case.dirs.append("empty")
        case.links[out] = "empty"
    elif out == "empty":
        case.dirs.append("empty")
    elif out == "dangling.onnx":
        case.links[out] = "nowhere/x.onnx"
    return out


def bad_output(out: str) -> bool | None:
    if out in ("new/sub/out.onnx", "notes/out.onnx", "dirlink", "empty"):
        return False
    return None if out == "dangling.onnx" else True


def _command(rng, heavy: bool) -> str:
    if heavy:
        return "compile"
    return pick(rng, ["inspect"] * 8 + ["json"] * 4 + ["shape", "predict", "predict"]
                + ["rewrite"] * 5)


def _args(case: Case, rng, name: str, what: str, odd_output: bool) -> None:
    if what == "compile":
        _compile(case, rng, odd_output)
    elif what == "rewrite":
        _rewrite(case, rng, name, odd_output)
    elif what == "predict":
        case.args = ["predict", "m.onnx", "-t", "host-ort-1t"]
    else:
        case.args = ["inspect", "m.onnx"] + {"inspect": [], "json": ["--json"],
                                             "shape": ["--input-shape", "x=1x3x8x8"]}[what]


def _rewrite(case: Case, rng, name: str, odd_output: bool) -> None:
    plan = base_plan(name) if rng.random() < 0.5 else {"version": 1}
    case.files["p.json"] = json.dumps(plan).encode()
    out = "out.onnx"
    if odd_output:
        out = output_variant(case, pick(rng, REWRITE_OUTPUTS), "m.onnx")
        case.mutation += f"; -o {out!r}"
        case.expect_bad = bad_output(out)
    case.args = ["rewrite", "m.onnx", "--plan", "p.json", "-o", out]
    case.outputs, case.output_kind = [out], "onnx"


def _compile(case: Case, rng, odd_output: bool) -> None:
    model, out = "m.onnx", "out"
    if odd_output:
        out = pick(rng, COMPILE_OUTPUTS)
        if out == "d":
            case.files["d/m.onnx"] = case.files.pop("m.onnx")
            case.files["d/notes"] = b"x\n"
            model = "d/m.onnx"
        output_variant(case, out, model)
        case.mutation += f"; -o {out!r}"
        case.expect_bad = bad_output(out)
    case.args = ["compile", model, "--target", "host-ort-1t", "--latency-ms", "100",
                 "--no-measure", "-o", out]
    case.outputs, case.output_kind = [out], "compile"


def model_case(rng, heavy: bool) -> Case:
    """A mutated model (heavy: a tiny one, through compile), an odd model path, or - for
    rewrite and compile - the valid model with an odd -o path."""
    name = pick(rng, ("tiny", "small")) if heavy else pick(rng, ("tiny", "small", "tiny",
                                                                  "small", "digits"))
    what = _command(rng, heavy)
    odd_output = what in ("rewrite", "compile") and rng.random() < 0.35
    case = Case(mutation=f"{name}: valid model", args=[])
    if odd_output:
        case.files["m.onnx"] = model_bytes(name)
    elif rng.random() < 0.1:
        _special_model(case, rng)
    else:
        data, mutation, case.expect_bad = mutate_model(name, rng)
        case.mutation = f"{name}: {mutation}"
        case.files["m.onnx"] = data
    _args(case, rng, name, what, odd_output)
    return case
