"""import_onnx: ONNX -> IR with deterministic names, fixed input shapes, opaque unknown ops and
one-line BadInputErrors for bad inputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes import unknown_ops
from passes.import_onnx import import_onnx
from toolchain.errors import BadInputError
from toolchain.ir import TensorInfo

F = TensorProto.FLOAT
CUSTOM = "com.example"


def _model(nodes, x_shape=(1, 3, 8, 8), y_rank=4, opsets=(("", 17),), extra_inputs=()):
    """x -> nodes -> y with a 3 -> 3 1x1 conv weight `w`; y is declared with symbolic dims."""
    w = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.5, np.float32), "w")
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", F, list(x_shape)), *extra_inputs],
        [helper.make_tensor_value_info("y", F, [f"y{i}" for i in range(y_rank)])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _chain(names: list[str], ops: list[str]):
    """x -> Conv -> op... -> y, nodes named as given ("" for no name)."""
    tensors = ["x", *[f"t{i}" for i in range(len(ops) - 1)], "y"]
    nodes = []
    for i, (name, op) in enumerate(zip(names, ops, strict=True)):
        inputs = [tensors[i], "w"] if op == "Conv" else [tensors[i]]
        nodes.append(helper.make_node(op, inputs, [tensors[i + 1]], name=name or None))
    return _model(nodes)


def test_names_kept_when_unique_else_derived_from_op_type_and_index():
    model = _chain(["c", "dup", "dup", "", "Sigmoid_3", ""],
                   ["Conv", "Relu", "Relu", "Sigmoid", "Sigmoid", "Tanh"])
    graph = import_onnx(model)
    # "dup" twice: both derived; index 3 unnamed, but "Sigmoid_3" is taken by node 4
    assert graph.topo() == ["c", "Relu_1", "Relu_2", "Sigmoid_3_1", "Sigmoid_3", "Tanh_5"]
    assert [graph.op(n) for n in graph.topo()] == [n.op_type for n in model.graph.node]
    assert import_onnx(model).topo() == graph.topo()  # deterministic


def test_all_names_given_and_unique_are_all_kept():
    graph = import_onnx(_chain(["a", "b", "c"], ["Conv", "Relu", "Sigmoid"]))
    assert graph.topo() == ["a", "b", "c"]
    assert graph.node("a")["inputs"] == ["x", "w"] and graph.node("c")["outputs"] == ["y"]


@pytest.mark.parametrize("batch", ["N", None], ids=["named", "unnamed"])
def test_symbolic_batch_becomes_one_with_a_note(batch):
    graph = import_onnx(_model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")],
                               x_shape=(batch, 3, 8, 8)))
    assert graph.shape("x") == (1, 3, 8, 8) and graph.shape("y") == (1, 3, 8, 8)
    assert graph.inputs == ["x"]
    assert graph.notes == [f"input 'x': symbolic batch dimension {batch!r} taken as 1"]


def test_static_shapes_give_no_note_and_every_shape_is_known():
    graph = import_onnx(_chain(["c", "r"], ["Conv", "Relu"]))
    assert graph.notes == []
    assert all(graph.tensors[t].known for t in ("x", "w", "t0", "y"))
    assert graph.tensors["t0"] == TensorInfo((1, 3, 8, 8), "float32")


@pytest.mark.parametrize(("x_shape", "given", "want"), [
    (("N", 3, "h", "w"), (2, 3, 16, 16), (2, 3, 8, 8)),
    ((1, 3, 8, 8), (1, 3, 12, 12), (1, 3, 6, 6)),
], ids=["symbolic", "static"])
def test_input_shapes_override(x_shape, given, want):
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
             helper.make_node("MaxPool", ["a"], ["y"], name="p", kernel_shape=[2, 2],
                              strides=[2, 2])]
    graph = import_onnx(_model(nodes, x_shape=x_shape), {"x": given})
    assert graph.shape("x") == given and graph.shape("a") == given
    assert graph.shape("y") == want
    assert graph.notes == []  # given, not assumed


def test_shape_with_start_folds_on_import():
    """A Shape reading dims start:end of an activation used to crash the import (KeyError)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
             helper.make_node("Shape", ["a"], ["s"], name="shape", start=-3),
             helper.make_node("ConstantOfShape", ["s"], ["z"], name="zeros"),
             helper.make_node("Add", ["a", "z"], ["y"], name="add")]
    graph = import_onnx(_model(nodes))
    assert graph.topo() == ["c", "add"]
    np.testing.assert_array_equal(graph.initializers["z"], np.zeros((3, 8, 8)))
    assert graph.shape("y") == (1, 3, 8, 8)


def test_custom_domain_op_is_kept_as_an_opaque_node():
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
             helper.make_node("Foo", ["a"], ["b"], name="foo", domain=CUSTOM, alpha=0.5,
                              mode="fast", sizes=[1, 2]),
             helper.make_node("Relu", ["b"], ["y"], name="r")]
    graph = import_onnx(_model(nodes, opsets=(("", 17), (CUSTOM, 1))))
    assert graph.topo() == ["c", "foo", "r"]
    foo = graph.node("foo")
    assert (foo["op_type"], foo["domain"]) == ("Foo", CUSTOM)
    assert foo["attrs"] == {"alpha": 0.5, "mode": "fast", "sizes": [1, 2]}
    assert foo["inputs"] == ["a"] and graph.consumers("b") == ["r"]
    assert graph.tensors["b"] == TensorInfo(None, "unknown")  # nothing inferred through it
    assert graph.opset == {"": 17, CUSTOM: 1}
    assert unknown_ops(graph) == [{"name": "foo", "op_type": "Foo", "domain": CUSTOM}]


def test_model_facts_and_weights():
    model = _chain(["c"], ["Conv"])
    model.opset_import[0].domain = "ai.onnx"  # the same domain, spelled out
    model.ir_version = 7
    model.graph.input.append(helper.make_tensor_value_info("w", F, [3, 3, 1, 1]))  # IR<4 style
    before = model.SerializeToString()
    graph = import_onnx(model)
    assert model.SerializeToString() == before  # the caller's model is not modified
    assert graph.inputs == ["x"] and graph.outputs == ["y"]  # a weight listed as input is a weight
    assert graph.opset == {"": 17} and graph.ir_version == 7 and graph.name == "tiny"
    assert graph.source == "<model>"
    np.testing.assert_array_equal(graph.initializers["w"], np.full((3, 3, 1, 1), 0.5))
    assert graph.tensors["w"] == TensorInfo((3, 3, 1, 1), "float32")


def test_constants_are_folded_on_import(tmp_path):
    nodes = [helper.make_node("Constant", [], ["k"], name="k", value_float=2.0),
             helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
             helper.make_node("Mul", ["a", "k"], ["y"], name="m")]
    path = tmp_path / "m.onnx"
    onnx.save(_model(nodes), str(path))
    graph = import_onnx(path)
    assert graph.topo() == ["c", "m"] and graph.initializers["k"] == np.float32(2.0)
    assert graph.source == str(path)


def _write(tmp_path, name: str, data: bytes | None):
    path = tmp_path / name
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    return path


def _external_data_missing(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(_chain(["c"], ["Conv"]), str(path), save_as_external_data=True,
              location="ext.bin", size_threshold=0)
    (tmp_path / "ext.bin").unlink()
    return path


def _not_ssa():
    model = _chain(["c", "r"], ["Conv", "Relu"])
    model.graph.node[1].output[0] = "t0"  # t0 written twice
    return model


@pytest.mark.parametrize(("make", "shapes", "match"), [
    (lambda p: p / "missing.onnx", None, r"missing\.onnx: no such file$"),
    (lambda p: _write(p, "dir.onnx", None), None, "is a directory, not an ONNX model$"),
    (lambda p: _write(p, "garbage.onnx", b"\x08\x07garbage\xff\xfe"), None,
     r"garbage\.onnx: not an ONNX model \(cannot parse"),
    (lambda p: _write(p, "empty.onnx", b""), None,
     r"empty\.onnx: not an ONNX model \(no graph; empty or truncated file\)$"),
    (lambda p: _not_ssa(), None, "^<model>: invalid model: .*single static assignment"),
    (lambda p: _chain(["c", "z"], ["Conv", "NoSuchOp"]), None,
     "^<model>: invalid model: No Op registered for NoSuchOp"),
    (_external_data_missing, None, r"external data file missing: .*ext\.bin \(tensor 'w'\)$"),
    (lambda p: _chain(["c"], ["Conv"]), {"z": (1, 3, 8, 8)},
     r"^--input-shape names \['z'\], but the model's inputs are \['x'\]$"),
    (lambda p: _model([helper.make_node("Conv", ["x", "w"], ["y"])], x_shape=(1, 3, "h", 8)),
     None, r"^input 'x' has symbolic dimensions \['h'\]: give its shape with --input-shape "
     r"x=D1xD2x\.\.\.$"),
    (lambda p: _chain(["c"], ["Conv"]), {"x": (1, 3, 8)},
     r"^--input-shape x=1x3x8: input 'x' has rank 4 \(declared \[1, 3, 8, 8\]\), not 3$"),
    (lambda p: _model([helper.make_node("Conv", ["x", "w"], ["y"])], x_shape=("N", 3, "h", "w")),
     {"x": (1, 3, 8, 8, 1)}, r"^--input-shape x=1x3x8x8x1: input 'x' has rank 4 \(declared "
     r"\['N', 3, 'h', 'w'\]\), not 5$"),
    (lambda p: _chain(["c"], ["Conv"]), {"x": (1, 3, 0, 8)},
     r"^--input-shape x=1x3x0x8: expected positive integers"),
    (lambda p: _chain(["c"], ["Conv"]), {"x": (1, 3, -8, 8)},
     r"^--input-shape x=1x3x-8x8: expected positive integers"),
    (lambda p: _chain(["c"], ["Conv"]), {"x": ()}, r"^--input-shape x=: expected positive"),
], ids=["missing", "directory", "garbage", "empty", "not-ssa", "unknown-default-domain-op",
        "external-data-missing", "unknown-input-name", "symbolic-spatial", "shape-rank-too-low",
        "shape-rank-too-high", "shape-zero-dim", "shape-negative-dim", "shape-empty"])
def test_bad_input_is_a_one_line_bad_input_error(tmp_path, make, shapes, match):
    with pytest.raises(BadInputError, match=match) as info:
        import_onnx(make(tmp_path), shapes)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


@pytest.mark.parametrize("opset", [6, 1_000_000])
def test_an_opset_onnxruntime_cannot_run_is_bad_input(opset):
    """Gemm-6 has no onnxruntime kernel and opset 1000000 does not exist: both were exit 1
    after the rewrite (the final onnxruntime check), found by benchmarks/fuzz.py --seed 11."""
    from onnx import TensorProto, helper

    from passes.import_onnx import MIN_OPSET

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    with pytest.raises(BadInputError, match=f"opset {opset} .* fleetc reads opsets {MIN_OPSET} to"):
        import_onnx(model)


def test_an_unknown_auto_pad_is_bad_input():
    """onnx's checker accepts any auto_pad string; onnxruntime then failed inside the rewrite
    (exit 1, benchmarks/fuzz.py --seed 1 case model:1:189)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="WRONG")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(BadInputError, match="node 'c' has auto_pad 'WRONG', not one of"):
        import_onnx(model)


def _relu_model(name: str = "relu", shape=(1, 2)):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name=name)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_an_input_too_large_to_hold_is_bad_input():
    """32 x 3 x 8 x 2^31-1 passed the per-dimension bound and ran out of memory making random
    calibration data (exit 1, fuzz seed 2 case model:2:431)."""
    from passes.import_onnx import MAX_INPUT_ELEMENTS

    with pytest.raises(BadInputError, match=f"more than fleetc handles \\({MAX_INPUT_ELEMENTS}"):
        import_onnx(_relu_model(shape=(1, 3, 8, (1 << 31) - 1)))


def test_a_name_that_is_not_utf8_is_bad_input(tmp_path):
    """Flipped bytes in a node name: protobuf hands the name back as bytes and the export
    failed (UnicodeDecodeError, exit 1, fuzz seed 2 case model:2:710)."""
    data = _relu_model(name="nodeQQ").SerializeToString().replace(b"nodeQQ", b"\xb3odeQQ")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(BadInputError, match="not UTF-8 text"):
        import_onnx(path)


def test_a_conv_bias_of_the_wrong_shape_is_bad_input():
    """A [C, 1] bias passed onnx's full check and failed in onnxruntime during the rewrite
    (exit 1, fuzz seed 3 case model:3:294)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros((2, 1), np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    with pytest.raises(BadInputError, match=r"bias of shape \[2, 1\], not \[2\]"):
        import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
