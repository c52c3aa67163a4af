"""Any opset from MIN_OPSET to MAX_OPSET: a copy below REWRITE_OPSET is upgraded on import (the
int8 rewrite writes per-channel QDQ, which needs opset 13), `inspect` notes it, the user's file
is never written; above MAX_OPSET is exit 2 naming the limit."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from passes.import_onnx import MAX_OPSET, MIN_OPSET, REWRITE_OPSET, import_onnx
from tests.compile.test_tables import fake_cost
from toolchain.cli import cli
from toolchain.compile.driver import compile_model, prepare
from toolchain.compile.inspection import inspect
from toolchain.errors import BadInputError
from toolchain.space import Plan

pytestmark = pytest.mark.xdist_group("tvm_build")


def _model(opset: int) -> onnx.ModelProto:
    """x (1x3x16x16) -> Conv 3->8 3x3 -> Relu -> Conv 8->8 1x1 -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm 8->4 -> Softmax, with seeded random weights (BatchNormalization-free:
    its attributes changed across opsets 7..15)."""
    rng = np.random.default_rng(opset)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)), "b1": rng.standard_normal(8),
         "w2": rng.standard_normal((8, 8, 1, 1)) * 0.3, "fc": rng.standard_normal((4, 8)),
         "fb": rng.standard_normal(4)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="p"),
             helper.make_node("Flatten", ["p"], ["f"], name="f"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["g"], transB=1, name="fc"),
             helper.make_node("Softmax", ["g"], ["y"], name="sm")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    if opset < 9:   # IR 3 (the opset-7 era): initializers are listed as graph inputs too
        g.input.extend(helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
                       for k, v in w.items())
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if opset < 9 else 8
    return model


def _files(folder, opset: int):
    path = folder / f"m{opset}.onnx"
    path.write_bytes(_model(opset).SerializeToString())
    x = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "calib.npz", inputs=x)
    return path, folder / "calib.npz"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("opset", [MIN_OPSET, REWRITE_OPSET, MAX_OPSET])
def test_models_at_lowest_rewrite_and_highest_opset_compile_to_int8(tmp_path, opset):
    path, calib = _files(tmp_path, opset)
    before = _sha(path)
    prep = prepare(path, calib, cache=False)
    cost = fake_cost(prep.kernels, prep.space)
    res = compile_model(prep, "host-ort-1t", tmp_path / "out", cost=cost,
                        latency_ms=0.1 + 0.6 * (cost(Plan()).latency_ms - 0.1),
                        measure_latency=False)
    assert any(c.precision == "int8" for c in res.plan.kernels.values())
    built = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert {o.domain: o.version for o in built.opset_import}[""] == max(opset, 13)
    assert any(n.op_type == "DequantizeLinear" for n in built.graph.node)
    assert _sha(path) == before   # the user's file is never written


def test_inspect_notes_the_upgrade_and_leaves_the_file(tmp_path):
    path, _ = _files(tmp_path, 9)
    before = _sha(path)
    report = inspect(path)
    assert report["summary"]["opset"] == 13
    assert any("opset 9 upgraded to 13" in n for n in report["summary"]["notes"])
    table = CliRunner().invoke(cli, ["inspect", str(path)])
    assert table.exit_code == 0 and "note: opset 9 upgraded to 13" in table.output
    path13, _ = _files(tmp_path, 13)
    assert not any("upgraded" in n for n in inspect(path13)["summary"]["notes"])
    assert _sha(path) == before


def test_an_opset_above_the_highest_accepted_is_exit_2_naming_the_limit(tmp_path):
    path, calib = _files(tmp_path, MAX_OPSET)
    model = onnx.load(str(path))
    model.opset_import[0].version = MAX_OPSET + 1
    path.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(cli, ["compile", str(path), "-t", "host-ort-1t", "--latency-ms",
                                      "1", "--calib", str(calib), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"opset {MAX_OPSET + 1} " in result.output
    assert f"fleetc reads opsets {MIN_OPSET} to {MAX_OPSET}" in result.output
    assert not (tmp_path / "o").exists()


def test_a_failed_upgrade_names_the_op_that_blocks_it(tmp_path, monkeypatch):
    """onnx's converter upgrades every valid op of 7..12 we tried; an op it could not upgrade
    (simulated: Flatten has no adapter) is named, and the file is unchanged."""
    path, _ = _files(tmp_path, 9)
    before = _sha(path)
    real = onnx.version_converter.convert_version

    def convert(model, version):
        if any(n.op_type == "Flatten" for n in model.graph.node):
            raise RuntimeError("No Adapter For Current Version")
        return real(model, version)

    monkeypatch.setattr(onnx.version_converter, "convert_version", convert)
    with pytest.raises(BadInputError, match=r"cannot upgrade opset 9 to 13 .*op Flatten "
                                            r"\(node 'f'\) has no upgrade") as info:
        import_onnx(path)
    assert "\n" not in str(info.value) and _sha(path) == before


def test_max_opset_is_what_onnxruntime_and_tvm_accept():
    """MAX_OPSET = the lower of onnxruntime's highest kernel opset and the highest op version
    TVM's ONNX frontend implements (a model above it would meet ops TVM reads as older ones)."""
    import inspect as pyinspect
    import re

    from onnxruntime.capi import _pybind_state as ort_state
    from tvm.relax.frontend.onnx import onnx_frontend

    ort_max = max(k.version_range[0] for k in ort_state.get_all_opkernel_def()
                  if k.domain in ("", "ai.onnx"))
    tvm_max = max(int(v) for v in re.findall(r"_impl_v(\d+)", pyinspect.getsource(onnx_frontend)))
    assert MAX_OPSET == min(ort_max, tvm_max)
