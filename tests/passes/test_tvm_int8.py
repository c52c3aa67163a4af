"""Integer compute for QDQ models (passes/tvm_int8): onnxruntime's QDQ int8 conv / depthwise /
grouped conv / Gemm become integer kernels that match onnxruntime's integer execution; what a
rule cannot prove stays float and is listed with the reason."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh

from passes import emit_tvm as emit
from passes.tvm_int8 import integer_compute
from toolchain.target import load_target

pytestmark = pytest.mark.xdist_group("tvm_build")


def float_model() -> onnx.ModelProto:
    """Dense 3x3 conv (padded), depthwise 3x3 stride 2, grouped 3x3 (4 groups, no bias),
    Flatten, Gemm: one layer per rule shape."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return nh.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    n = h.make_node
    nodes = [n("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="dense"),
             n("Conv", ["c1", "Wd", "Bd"], ["d"], group=16, pads=[1, 1, 1, 1], strides=[2, 2],
               name="depthwise"),
             n("Conv", ["d", "Wg"], ["g"], group=4, pads=[1, 1, 1, 1], name="grouped"),
             n("Flatten", ["g"], ["f"], name="flat"),
             n("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1, name="fc")]
    inits = [w("W1", 16, 8, 3, 3), w("B1", 16), w("Wd", 16, 1, 3, 3), w("Bd", 16),
             w("Wg", 16, 4, 3, 3), w("Wf", 10, 16 * 36), w("Bf", 10)]
    g = h.make_graph(nodes, "int8", [h.make_tensor_value_info("x", 1, [1, 8, 12, 12])],
                     [h.make_tensor_value_info("y", 1, [1, 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def qdq_model(nodes: list[str] | None = None) -> onnx.ModelProto:
    """float_model quantized as fleetc's quantize pass does (onnxruntime quantize_static, QDQ,
    uint8 activations, per-channel symmetric int8 weights); the output stays quantized.
    `nodes`: quantize only these (a mixed plan), else all."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self):
            rng = np.random.default_rng(1)
            self.feeds = iter([{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)}
                               for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(float_model(), str(src))
        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        return onnx.load(str(out))


def _imported(proto):
    return emit._import(proto, emit._input_shapes(proto))


def _integer_calls(mod) -> list[str]:
    text = mod.script(show_meta=False)
    return re.findall(r"R\.(nn\.conv2d|matmul)\([^\n]*out_dtype=\"int32\"", text)


def test_qdq_kernels_become_integer_and_match_onnxruntime_integer(tmp_path):
    proto = qdq_model()
    mod, report = integer_compute(_imported(proto))
    assert report.integer == 4 and report.left == () and not report.runs_in_float
    assert sorted(_integer_calls(mod)) == ["matmul"] + ["nn.conv2d"] * 3
    x = np.random.default_rng(2).standard_normal((1, 8, 12, 12)).astype(np.float32)
    res = emit.emit_tvm(proto, load_target("host-tvm"), tmp_path, inputs={"x": x})
    assert res.checked and not res.int8_in_float and res.warnings == ()
    got = _run(tmp_path / "model.so", x)
    want = emit._ort_run(proto, {"x": x}, optimized=True)[0]   # onnxruntime's integer kernels
    assert emit._cosine(got, want) >= 0.99
    # the output is quantized (Q/DQ kept): its integer values differ by at most one step
    scale = float(nh.to_array(next(i for i in proto.graph.initializer
                                   if i.name == proto.graph.node[-1].input[1])))
    steps = np.abs(np.round(got / scale) - np.round(want / scale))
    assert np.mean(steps > 1) == 0.0


def _run(so, x):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_lowered_integer_kernels_accumulate_in_int32():
    proto = qdq_model()
    mod, _ = integer_compute(_imported(proto))
    scheduled, kinds, rules = emit.schedule_module(mod, load_target("host-tvm").tvm())
    kernels = [gv.name_hint for gv, _ in scheduled.functions_items()
               if re.match(r"fused_(conv2d|matmul)", gv.name_hint)]
    assert len(kernels) == 4 and all(kinds[k] == "default" for k in kernels)
    for k in kernels:
        text = scheduled[k].script()
        # int32 accumulator: an int32 buffer updated with int32 products of the 8-bit inputs
        assert re.search(r'T\.sblock_alloc_buffer\([^\n]*"int32"', text), k
        assert 'T.Cast("int32", ' in text and "float32" not in text.split("_update")[1]\
            .split("T.writes")[0], k


def _set(proto, name, value):
    init = next(i for i in proto.graph.initializer if i.name == name)
    init.CopyFrom(nh.from_array(value, name))


def _weight_of(proto, node_name):
    conv = next(n for n in proto.graph.node if n.name == node_name)
    dq = next(n for n in proto.graph.node if n.output[0] == conv.input[1])
    return dq


def test_a_weight_zero_point_stays_float_and_is_listed(tmp_path):
    proto = qdq_model()
    dq = _weight_of(proto, "dense")
    zero = nh.to_array(next(i for i in proto.graph.initializer if i.name == dq.input[2]))
    _set(proto, dq.input[2], np.full_like(zero, 3))
    mod, report = integer_compute(_imported(proto))
    assert report.integer == 3 and len(report.left) == 1
    assert "weight zero point is not 0" in report.left[0]
    res = emit.emit_tvm(proto, load_target("host-tvm"), tmp_path)   # still equals onnxruntime
    assert res.int8_in_float and any("weight zero point is not 0" in w for w in res.warnings)


def test_per_channel_activation_scales_stay_float():
    proto = qdq_model()
    conv = next(n for n in proto.graph.node if n.name == "grouped")
    dq = next(n for n in proto.graph.node if n.output[0] == conv.input[0])
    scale = nh.to_array(next(i for i in proto.graph.initializer if i.name == dq.input[1]))
    zero = nh.to_array(next(i for i in proto.graph.initializer if i.name == dq.input[2]))
    for node in proto.graph.node:   # the Q and its DQ share the scale and zero point
        if node.input[1:3] == dq.input[1:3]:
            node.attribute.append(h.make_attribute("axis", 1))
    _set(proto, dq.input[1], np.full(16, scale, np.float32))
    _set(proto, dq.input[2], np.full(16, zero, zero.dtype))
    _, report = integer_compute(_imported(proto))
    assert [r.split(": ", 1)[1] for r in report.left] == [
        "per-channel activation scales (one per tensor only)"]


def test_float_kernels_reading_an_int8_layer_are_not_listed():
    # a mixed plan: the fp32 depthwise conv reads the int8 dense conv's dequantized output;
    # it is a float kernel by plan, not an int8 kernel left in float (no warning for it)
    proto = qdq_model(["dense"])
    depthwise = next(n for n in proto.graph.node if n.name == "depthwise")
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == depthwise.input[0]
               for n in proto.graph.node)
    _, report = integer_compute(_imported(proto))
    assert report.integer == 1 and report.left == ()


def test_a_float_model_is_left_unchanged():
    mod = _imported(float_model())
    new, report = integer_compute(mod)
    assert report.integer == 0 and report.left == ()
    assert new.script() == mod.script()


def _asm(proto, target):
    executable, kinds, rules = emit.build_module(proto, target)
    return executable.mod.imports[0].inspect_source("asm"), rules


def test_x86_vnni_build_tensorizes_dense_convs_with_vpdpbusd():
    # znver4 (AVX-512 VNNI) named explicitly: the assembly is read, the code is not run
    asm, rules = _asm(qdq_model(), emit.tvm_target({"kind": "llvm", "mcpu": "znver4"}))
    assert "packed_conv" in rules.values()
    assert re.search(r"vpdpbusd\s+%zmm", asm), "no VNNI dot product in the x86 code"


@pytest.mark.parametrize("target, dot", [("rpi4", False), ("rpi5", True)])
def test_aarch64_int8_uses_sdot_only_with_dotprod(target, dot):
    asm, rules = _asm(qdq_model(), load_target(target).tvm())
    assert ("packed_conv" in rules.values()) == dot
    assert bool(re.search(r"\bsdot\s+v\d+\.4s", asm)) == dot
    assert not re.search(r"\budot\s", asm)


def test_sdot_packing_shift_is_exact_on_the_host(monkeypatch, tmp_path):
    # aarch64's sdot takes int8 activations: the packed conv shifts uint8 by -128 and the
    # offset adds 128 * sum(W) back. Packed the sdot way for this host (untensorized), the
    # build must still equal onnxruntime's integer execution.
    from passes.tvm_schedules import dot_products

    sdot = dot_products.DotProduct("fleetc_sdot_4x4", 4, "int8")
    # the rewrite packs for sdot; the schedule rules still see this host's real instructions
    monkeypatch.setattr(dot_products, "dot_products", lambda target: (sdot,))
    proto = qdq_model()
    x = np.random.default_rng(3).standard_normal((1, 8, 12, 12)).astype(np.float32)
    res = emit.emit_tvm(proto, load_target("host-tvm"), tmp_path, inputs={"x": x})
    assert not res.int8_in_float and any("pack_int8" in f for f in res.schedules)
    got = _run(tmp_path / "model.so", x)
    want = emit._ort_run(proto, {"x": x}, optimized=True)[0]
    assert np.array_equal(got, want)
