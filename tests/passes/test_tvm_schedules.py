"""Default schedule rules (passes/tvm_schedules): every rule schedules its layer of a small
model and the built module's output equals onnxruntime's; functions a tuning record covers
are left alone; aarch64 builds carry NEON FMLA in their conv kernels."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh

from passes.emit_tvm import build_module, emit_tvm, tvm_target
from passes.tvm_schedules import SCHEDULED_ATTR
from toolchain.target import load_target

pytestmark = pytest.mark.xdist_group("tvm_build")


def rules_model() -> onnx.ModelProto:
    """One layer per rule: 1x1 conv + ReLU6 (conv2d, pixels along the vector), depthwise 3x3,
    grouped 3x3 without padding on 16x16 -> 14x14 (conv2d, channels along the vector),
    residual add, max pool, global average pool, Gemm (matmul), transpose (injective)."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return nh.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [w("W1", 16, 8, 1, 1), w("B1", 16), w("Wd", 16, 1, 3, 3), w("Wg", 16, 8, 3, 3),
             w("Wf", 10, 16), w("Bf", 10), nh.from_array(np.float32(0), "lo"),
             nh.from_array(np.float32(6), "hi")]
    n = h.make_node
    nodes = [n("Conv", ["x", "W1", "B1"], ["c1"], name="pw"),
             n("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
             n("Conv", ["r1", "Wd"], ["d"], group=16, pads=[1, 1, 1, 1], name="dw"),
             n("Add", ["d", "r1"], ["s"], name="residual"),
             n("Conv", ["s", "Wg"], ["g"], group=2, name="grouped"),
             n("MaxPool", ["g"], ["m"], kernel_shape=[2, 2], strides=[2, 2], name="maxpool"),
             n("Transpose", ["m"], ["t"], perm=[0, 1, 3, 2], name="transpose"),
             n("GlobalAveragePool", ["t"], ["p"], name="gap"),
             n("Flatten", ["p"], ["f"], name="flat"),
             n("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1, name="fc")]
    g = h.make_graph(nodes, "rules", [h.make_tensor_value_info("x", 1, [1, 8, 16, 16])],
                     [h.make_tensor_value_info("y", 1, [1, 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_every_rule_matches_onnxruntime(tmp_path):
    res = emit_tvm(rules_model(), load_target("host-tvm"), tmp_path)  # raises on a mismatch
    assert res.checked and res.max_abs_error is not None
    assert set(res.rules.values()) == {"conv2d", "depthwise", "matmul", "pool", "injective"}
    assert set(res.schedules.values()) == {"default"}
    # the grouped conv takes the channels-along-the-vector path, the 1x1 the pixel one
    convs = [f for f, r in res.rules.items() if r == "conv2d"]
    assert len(convs) == 2


def test_functions_a_tuning_record_covers_keep_their_schedule(monkeypatch):
    from passes import emit_tvm as emit

    marked = {}

    def one_record(mod, tgt):   # what a database record does: schedule and mark one function
        gv = next(g for g, _ in mod.functions_items() if g.name_hint.startswith("fused_conv2d"))
        marked["before"] = mod[gv].with_attr(SCHEDULED_ATTR, True)
        mod[gv] = marked["before"]
        marked["name"] = gv.name_hint
        return mod

    monkeypatch.setattr(emit, "apply_tuning_records", one_record)
    proto = rules_model()
    tgt = tvm_target({"kind": "llvm"})
    mod, kinds, rules = emit.schedule_module(emit._import(proto, emit._input_shapes(proto)), tgt)
    assert kinds[marked["name"]] == "tuned" and marked["name"] not in rules
    assert mod[marked["name"]].same_as(marked["before"])
    assert sum(k == "default" for k in kinds.values()) >= 5


def conv_model() -> onnx.ModelProto:
    """A 1x1 conv and a depthwise 3x3 (ReLU after each): the aarch64 build's kernels."""
    m = rules_model()
    keep = {"pw", "relu6", "dw"}
    nodes = [nd for nd in m.graph.node if nd.name in keep]
    inits = [i for i in m.graph.initializer if i.name in {"W1", "B1", "Wd", "lo", "hi"}]
    g = h.make_graph(nodes, "convs", list(m.graph.input),
                     [h.make_tensor_value_info("d", 1, [1, 16, 16, 16])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["rpi4", "rpi5", "pixel-a76"])
def test_aarch64_builds_vectorize_convs_with_fmla(target):
    executable, kinds, rules = build_module(conv_model(), load_target(target).tvm())
    assert {"conv2d", "depthwise"} <= set(rules.values()) and set(kinds.values()) == {"default"}
    lib = executable.mod.imports[0]
    asm = lib.inspect_source("asm")
    assert "aarch64" in lib.inspect_source("ll").split("target triple", 1)[1].splitlines()[0]
    assert re.search(r"fmla\s+v\d+\.4s", asm), "no NEON vector FMLA in the aarch64 code"


def cliff_model() -> onnx.ModelProto:
    """Shapes the rules once left slow or unscheduled: a 1x1 conv on a 48-wide plane (a tile
    of three vectors), a conv to 10 channels (no 4-lane divisor), a conv whose weight is a
    ConstantOfShape fill (the onnx package's light models)."""
    rng = np.random.default_rng(1)
    w1 = nh.from_array((rng.standard_normal((16, 8, 1, 1)) * 0.3).astype(np.float32), "W1")
    w2 = nh.from_array((rng.standard_normal((10, 16, 3, 3)) * 0.3).astype(np.float32), "W2")
    shape = nh.from_array(np.array([10, 10, 1, 1], np.int64), "S")
    n = h.make_node
    nodes = [n("Conv", ["x", "W1"], ["a"], name="wide"),
             n("Relu", ["a"], ["r"], name="relu"),
             n("Conv", ["r", "W2"], ["b"], strides=[4, 4], name="ten"),
             n("ConstantOfShape", ["S"], ["W3"], name="fill",
               value=nh.from_array(np.array([0.05], np.float32))),
             n("Conv", ["b", "W3"], ["y"], name="filled")]
    g = h.make_graph(nodes, "cliffs", [h.make_tensor_value_info("x", 1, [1, 8, 48, 48])],
                     [h.make_tensor_value_info("y", 1, [1, 10, 12, 12])], [w1, w2, shape])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_shape_cliffs_are_scheduled_with_whole_vectors(tmp_path):
    res = emit_tvm(cliff_model(), load_target("host-tvm"), tmp_path)  # raises on a mismatch
    assert res.checked and set(res.schedules.values()) == {"default"}
    # the filled weight is a constant (no fill at run time), every conv has a rule
    assert not any("broadcast_to" in f for f in res.schedules)
    assert sorted(res.rules.values()).count("conv2d") == 3
    executable = build_module(cliff_model(), load_target("host-tvm").tvm())[0]
    ll = executable.mod.imports[0].inspect_source("ll")
    widths = {int(w) for w in re.findall(r"<(\d+) x float>", ll)}
    # the 48-wide tile runs as three 16-lane vectors (as a 48-lane one it was 4.5x slower)
    assert 16 in widths and not any(w > 16 and w & (w - 1) for w in widths), sorted(widths)
