"""emit_tvm: host .so matches onnxruntime; cross .tar holds aarch64 objects; errors are named."""
from __future__ import annotations

import tarfile

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh

from passes.emit_tvm import EmitError, _fold_batchnorms, elf_arch, emit_tvm
from toolchain.errors import UnsupportedOpError

pytestmark = pytest.mark.xdist_group("tvm_build")


def tiny_model(extra: onnx.NodeProto | None = None) -> onnx.ModelProto:
    """Conv(3->8, 3x3) + Relu + GlobalAveragePool + Flatten: a few hundred ms to build."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             h.make_node("Flatten", ["p"], ["y"], name="flat")]
    if extra is not None:
        nodes.append(extra)
    out = extra.output[0] if extra is not None else "y"
    g = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", 1, ["N", 3, 8, 8])],
                     [h.make_tensor_value_info(out, 1, ["N", 8] if extra is None else None)],
                     [nh.from_array(W, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def qdq_model() -> onnx.ModelProto:
    m = tiny_model()
    g = m.graph
    scale, zero = nh.from_array(np.float32(0.05), "s"), nh.from_array(np.int8(0), "z")
    q = h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q")
    dq = h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq")
    g.node[0].input[0] = "xd"
    g.node.insert(0, dq)
    g.node.insert(0, q)
    g.initializer.extend([scale, zero])
    return m


def test_host_so_matches_onnxruntime(tmp_path):
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    res = emit_tvm(tiny_model(), {"kind": "llvm"}, tmp_path, inputs={"x": x})
    assert [a.path for a in res.artifacts] == ["model.so"]
    assert res.checked and not res.cross and res.max_abs_error < 1e-4
    assert elf_arch((tmp_path / "model.so").read_bytes()) == res.arch
    assert not res.int8_in_float
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so"]   # no temporary left


def test_batchnorm_after_conv_is_folded_before_the_build(tmp_path):
    # the fold removes the BatchNormalization ahead in the topological order (was KeyError)
    m = tiny_model()
    g = m.graph
    stats = [nh.from_array(np.full(8, v, np.float32), k)
             for k, v in (("g", 2.0), ("b", 0.5), ("mu", 0.1), ("var", 4.0))]
    g.initializer.extend(stats)
    g.node.insert(1, h.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["n"],
                                 name="bn"))
    g.node[2].input[0] = "n"
    folded = _fold_batchnorms(m)
    assert [n.op_type for n in folded.graph.node].count("BatchNormalization") == 0
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    res = emit_tvm(m, {"kind": "llvm"}, tmp_path, inputs={"x": x})
    assert res.checked and res.max_abs_error < 1e-4


def test_qdq_model_is_recorded_as_int8_in_float(tmp_path):
    res = emit_tvm(qdq_model(), {"kind": "llvm"}, tmp_path)
    assert res.int8_in_float and res.checked
    assert any("float" in w for w in res.warnings)


@pytest.mark.parametrize("target", [
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    "raspberry-pi/4b-aarch64",
])
def test_cross_tar_holds_aarch64_objects(tmp_path, target):
    res = emit_tvm(tiny_model(), target, tmp_path)
    assert res.cross and res.arch == "aarch64" and not res.checked
    tar_art = [a for a in res.artifacts if a.path == "model.tar"]
    assert tar_art and tar_art[0].arch == "aarch64"
    with tarfile.open(tmp_path / "model.tar") as tar:
        objs = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert objs
        for m in objs:
            assert elf_arch(tar.extractfile(m).read()) == "aarch64"
    # model.so only when an aarch64 cross compiler is installed; then it must be aarch64 too.
    if (tmp_path / "model.so").exists():
        assert elf_arch((tmp_path / "model.so").read_bytes()) == "aarch64"
    else:
        assert any("no aarch64 cross compiler" in w for w in res.warnings)


def test_failing_build_names_the_pass(tmp_path):
    with pytest.raises(EmitError, match=r"failed in pass \S+: .*bogus"):
        emit_tvm(tiny_model(), {"kind": "llvm", "mtriple": "bogus-unknown-none"}, tmp_path)
    assert not list(tmp_path.iterdir())


def test_unknown_op_is_named_before_tvm_runs(tmp_path):
    bad = h.make_node("NoSuchOp", ["y"], ["z"], name="weird", domain="")
    with pytest.raises(UnsupportedOpError, match="NoSuchOp"):
        emit_tvm(tiny_model(bad), {"kind": "llvm"}, tmp_path)


def test_elf_arch_reads_the_machine_field():
    header = bytearray(b"\x7fELF\x02\x01" + bytes(14))
    header[18:20] = (183).to_bytes(2, "little")
    assert elf_arch(bytes(header)) == "aarch64"
    assert elf_arch(b"not an elf file at all") == "not-elf"


def test_without_cross_compiler_only_the_tar_is_written(tmp_path, monkeypatch):
    import passes.emit_tvm as emit

    monkeypatch.setattr(emit, "find_cross_compiler", lambda arch, preferred=None: None)
    res = emit.emit_tvm(tiny_model(), "raspberry-pi/4b-aarch64", tmp_path)
    assert [a.path for a in res.artifacts] == ["model.tar"]
    assert any("no aarch64 cross compiler" in w for w in res.warnings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar"]
