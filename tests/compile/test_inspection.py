"""`fleetc inspect` and `toolchain.inspect`: real models, counts checked independently."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import toolchain
import toolchain.compile.inspection as ti
from tests.helpers import LIGHT_MODELS
from toolchain.cli import cli

RESNET50 = next(p for p in LIGHT_MODELS if p.stem == "light_resnet50")


def _independent_macs(model: onnx.ModelProto) -> int:
    """MACs from the layer shapes alone, with a hand-written shape walk (no fleetc code)."""
    inits = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    for node in model.graph.node:  # the light models build weights with ConstantOfShape
        if node.op_type == "ConstantOfShape":
            inits[node.output[0]] = tuple(numpy_helper.to_array(
                next(i for i in model.graph.initializer if i.name == node.input[0])))
    shapes = {model.graph.input[0].name: (1, 3, 224, 224)}
    total = 0
    for node in model.graph.node:
        a = dict((x.name, helper.get_attribute_value(x)) for x in node.attribute)
        x = shapes.get(node.input[0]) if node.input else None
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            s, p = a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
            h = (x[2] + p[0] + p[2] - w[2]) // s[0] + 1
            wd = (x[3] + p[1] + p[3] - w[3]) // s[1] + 1
            out = (1, w[0], h, wd)
            total += w[0] * h * wd * w[1] * w[2] * w[3]
        elif node.op_type in ("MaxPool", "AveragePool"):
            k, s, p = a["kernel_shape"], a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
            out = (1, x[1], (x[2] + p[0] + p[2] - k[0]) // s[0] + 1,
                   (x[3] + p[1] + p[3] - k[1]) // s[1] + 1)
        elif node.op_type == "Gemm":
            w = inits[node.input[1]]
            n = w[0] if a.get("transB", 0) else w[1]
            k = int(np.prod(x[1:]))
            total += n * k
            out = (1, n)
        elif node.op_type == "Reshape":
            out = (1, int(np.prod(x[1:])))
        else:
            out = x
        for o in node.output:
            shapes[o] = out
    return total


def test_resnet50_conv_kernels_and_macs():
    model = onnx.load(str(RESNET50))
    report = ti.inspect(RESNET50)
    convs = [k for k in report["kernels"] if k["op_type"] == "Conv"]
    assert len(convs) == 53
    want = _independent_macs(model)
    assert want > 3.5e9
    assert abs(report["summary"]["macs"] - want) / want < 0.01


def test_cli_json_is_one_document_and_matches_api():
    result = CliRunner().invoke(cli, ["inspect", str(RESNET50), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    api = toolchain.inspect(str(RESNET50))
    assert doc["summary"] == api["summary"]
    assert [k["name"] for k in doc["kernels"]] == [k["name"] for k in api["kernels"]]
    s = doc["summary"]
    assert {"macs", "flops", "params", "nodes", "design_space_log10"} <= set(s)
    assert s["flops"] >= 2 * s["macs"] and s["params"] > 20e6
    for k in doc["kernels"]:
        assert {"name", "op_type", "macs", "params", "options"} <= set(k)
    assert doc["unknown_ops"] == []


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_inspect_every_light_model(path):
    report = ti.inspect(path)
    assert report["summary"]["macs"] > 0
    names = [k["name"] for k in report["kernels"]]
    assert len(names) == len(set(names))
    covered = [n for k in report["kernels"] for n in k["nodes"]]
    assert sorted(covered) == sorted(set(covered)) and len(covered) == report["summary"]["nodes"]
    compute = [k for k in report["kernels"] if k["op_type"] in ("Conv", "Gemm")]
    assert all(k["options"]["precision"] == ["fp32", "fp16", "int8"] for k in compute)


def _model_with_custom_op():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("FancyOp", ["a"], ["b"], domain="com.example"),
             helper.make_node("Relu", ["b"], ["y"])]
    g = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid("com.example", 1)])


def test_unknown_ops_are_kept_and_listed(tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(_model_with_custom_op(), str(path))
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["unknown_ops"] == [{"name": "FancyOp_1", "op_type": "FancyOp",
                                   "domain": "com.example"}]
    assert doc["summary"]["nodes"] == 3
    table = CliRunner().invoke(cli, ["inspect", str(path)])
    assert "FancyOp_1" in table.output and "unknown ops" in table.output


def test_rewriting_through_an_unknown_op_is_exit_2_naming_it(tmp_path):
    """inspect lists it; a command that must transform through it says so (it was exit 1:
    onnxruntime could not load the rewritten model, fuzz seed 5 case model:5:918)."""
    path, plan = tmp_path / "custom.onnx", tmp_path / "plan.json"
    onnx.save(_model_with_custom_op(), str(path))
    plan.write_text(json.dumps({"version": 1, "kernels": {}}))
    result = CliRunner().invoke(cli, ["rewrite", str(path), "--plan", str(plan),
                                      "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2, result.output
    assert "op 'FancyOp' of domain 'com.example' (node 'FancyOp_1') is not an ONNX op" \
        in result.output
    assert not (tmp_path / "out.onnx").exists()
