"""discover_space: per-kernel options (precision, width, kernel size), skippable residual blocks
and input resolutions - each offered only where the rewrite passes can apply it."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.count_costs import CountCostsPass
from passes.discover_space import DiscoverSpacePass
from passes.group_kernels import GroupKernelsPass
from passes.import_onnx import import_onnx
from passes.infer_shapes import infer_shapes
from passes.prune_channels import PruneChannelsPass, prune_site
from passes.shrink_kernels import shrink_kernel
from toolchain.errors import BadInputError
from toolchain.measure import zoo
from toolchain.pipeline import PassContext, Pipeline
from toolchain.space import PRECISIONS

F = TensorProto.FLOAT


def _model(nodes, weights: dict, inputs: dict | None = None, outputs: dict | None = None):
    """Weights are name -> shape (seeded random values) or array; inputs name -> shape (default
    x: 1x16x8x8); outputs name -> rank (default y: 4), declared with symbolic dims."""
    rng = np.random.default_rng(0)
    inputs = inputs or {"x": (1, 16, 8, 8)}
    outputs = outputs or {"y": 4}
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, F, [f"{n}{i}" for i in range(r)])
         for n, r in outputs.items()],
        [numpy_helper.from_array(s if isinstance(s, np.ndarray)
                                 else rng.normal(size=s).astype(np.float32), n)
         for n, s in weights.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _analyze(model):
    graph = import_onnx(model)
    records = Pipeline([CountCostsPass(), GroupKernelsPass(), DiscoverSpacePass()]).run(
        graph, PassContext(facts={"shapes"}))
    return graph, records[-1]


def _conv(name, x, y, w, **attrs):
    return helper.make_node("Conv", [x, w], [y], name=name, **attrs)


def _relu(name, x, y):
    return helper.make_node("Relu", [x], [y], name=name)


# --- width ---------------------------------------------------------------------------------
# c1 (16 -> 16 channels) followed by a path that ends in the input channels of c2 / fc.
_W1, _W2, _FC = {"w1": (16, 16, 1, 1)}, {"w2": (8, 16, 1, 1)}, {"fc": (10, 16)}
_BN = {f"bn.{p}": (16,) for p in ("s", "b", "m", "v")}

PRUNABLE = {
    "bn-relu-conv": ([_conv("c1", "x", "a", "w1"),
                      helper.make_node("BatchNormalization", ["a", *_BN], ["b"], name="bn"),
                      _relu("r", "b", "c"), _conv("c2", "c", "y", "w2")], {**_W1, **_BN, **_W2}),
    "through-depthwise": ([_conv("c1", "x", "a", "w1"), _relu("r", "a", "b"),
                           _conv("dw", "b", "c", "wd", group=16, pads=[1] * 4),
                           _conv("c2", "c", "y", "w2")], {**_W1, "wd": (16, 1, 3, 3), **_W2}),
    # the pool first: a bias or scale right after c1 would be fused into its kernel
    "pool-bias-scale": ([_conv("c1", "x", "a", "w1"),
                         helper.make_node("MaxPool", ["a"], ["b"], name="pool",
                                          kernel_shape=[2, 2], strides=[2, 2]),
                         helper.make_node("Add", ["b", "bias"], ["c"], name="add"),
                         helper.make_node("Mul", ["scale", "c"], ["d"], name="mul"),
                         _conv("c2", "d", "y", "w2")],
                        {**_W1, "bias": (1, 16, 1, 1), "scale": (16, 1, 1), **_W2}),
    "pool-flatten-gemm": ([_conv("c1", "x", "a", "w1"), _relu("r", "a", "b"),
                           helper.make_node("GlobalAveragePool", ["b"], ["c"], name="gap"),
                           helper.make_node("Flatten", ["c"], ["d"], name="flat"),
                           helper.make_node("Gemm", ["d", "fc"], ["y"], name="c2", transB=1)],
                          {**_W1, **_FC}),
    "two-consumers": ([_conv("c1", "x", "a", "w1"), _relu("r", "a", "b"),
                       _conv("c2", "b", "y", "w2"), _conv("c3", "b", "z", "w3")],
                      {**_W1, **_W2, "w3": (4, 16, 3, 3)}),
}


@pytest.mark.parametrize("case", sorted(PRUNABLE))
def test_width_offered_when_channels_reach_only_convs_and_gemms(case):
    nodes, weights = PRUNABLE[case]
    outputs = {"y": 4, "z": 4} if case == "two-consumers" else {"y": 2 if "gemm" in case else 4}
    graph, _ = _analyze(_model(nodes, weights, outputs=outputs))
    options = graph.space.options
    assert options["c1"] == {"precision": list(PRECISIONS), "width": [1.0, 0.75, 0.5]}
    assert "width" not in options["c2"]  # its channels are the graph output
    site = prune_site(graph, "c1")       # and the prune pass agrees: no BadInputError
    assert "c2" in site.consumers


def _tied(extra_nodes, extra_weights=None, inputs=None):
    """c1 (16 -> 16) -> Relu -> r, then `extra_nodes` reading r."""
    nodes = [_conv("c1", "x", "a", "w1"), _relu("relu", "a", "r"), *extra_nodes]
    return _model(nodes, {**_W1, **(extra_weights or {})}, inputs=inputs)


@pytest.mark.parametrize("model", [
    _tied([helper.make_node("Add", ["r", "x"], ["s"], name="res"), _conv("c2", "s", "y", "w2")],
          _W2),
    _tied([helper.make_node("Concat", ["r", "x"], ["s"], name="cat", axis=1),
           _conv("c2", "s", "y", "w2")], {"w2": (8, 32, 1, 1)}),
    _tied([helper.make_node("Sigmoid", ["r"], ["g"], name="sig"),
           helper.make_node("Mul", ["r", "g"], ["s"], name="gate"), _conv("c2", "s", "y", "w2")],
          _W2),
    _tied([helper.make_node("Reshape", ["r", "shape"], ["s"], name="reshape"),
           _conv("c2", "s", "y", "w2")], {"shape": np.array([1, 16, 8, 8]), **_W2}),
    _tied([_conv("c2", "r", "y", "w2", group=2)], {"w2": (8, 8, 1, 1)}),
    _tied([helper.make_node("Add", ["r", "bias"], ["y"], name="add")], {"bias": (16, 1, 1)}),
    _tied([helper.make_node("Transpose", ["r"], ["s"], name="t", perm=[0, 1, 3, 2]),
           _conv("c2", "s", "y", "w2")], _W2),
], ids=["residual-add", "concat", "gating-mul", "reshape", "grouped-consumer", "graph-output",
        "transpose"])
def test_no_width_when_channels_are_tied(model):
    graph, _ = _analyze(model)
    assert graph.space.options["c1"] == {"precision": list(PRECISIONS)}


@pytest.mark.parametrize(("w1", "attrs"), [
    ((3, 16, 1, 1), {}),
    ((16, 1, 3, 3), {"group": 16, "pads": [1] * 4}),
], ids=["fewer-than-4-channels", "depthwise-itself"])
def test_no_width_for_tiny_or_grouped_kernels(w1, attrs):
    cout = w1[0]
    model = _model([_conv("c1", "x", "a", "w1", **attrs), _relu("r", "a", "b"),
                    _conv("c2", "b", "y", "w2")], {"w1": w1, "w2": (8, cout, 1, 1)})
    graph, _ = _analyze(model)
    assert "width" not in graph.space.options["c1"]


@pytest.mark.parametrize(("fused", "shape", "offered"), [
    (True, (1, 16, 1, 1), True),
    (True, (16,), False),            # broadcasts along W (here equal to C), fused into c1
    (True, (1, 1, 16, 1), False),    # along H
    (True, (1, 16, 16, 16), False),  # per position
    (False, (1, 16, 1, 1), True),
    (False, (16,), False),
    (False, (1, 1, 16, 1), False),
    (False, (1, 16, 16, 16), False),
], ids=["fused-1C11", "fused-C", "fused-11C1", "fused-1CHW", "after-pool-1C11", "after-pool-C",
        "after-pool-11C1", "after-pool-1CHW"])
def test_width_offered_exactly_where_prune_channels_accepts_a_bias(fused, shape, offered):
    """One rule (common.prune_site) for both passes: a bias fused into c1's kernel is checked
    too (discover_space used to start after it), and a (C,) or (1, 1, C, 1) weight, which
    broadcasts along W or H, ties the channels (discover_space used to accept it)."""
    pool = [] if fused else [helper.make_node("MaxPool", ["a"], ["p"], name="pool",
                                              kernel_shape=[1, 1])]
    model = _model([_conv("c1", "x", "a", "w1"), *pool,
                    helper.make_node("Add", ["a" if fused else "p", "bias"], ["b"], name="add"),
                    _conv("c2", "b", "y", "w2")], {**_W1, "bias": shape, **_W2},
                   inputs={"x": (1, 16, 16, 16)})
    graph, _ = _analyze(model)
    assert graph.kernels[0].nodes == (("c1", "add") if fused else ("c1",))
    assert ("width" in graph.space.options["c1"]) == offered
    if not offered:
        with pytest.raises(BadInputError, match="tied by Add node 'add'"):
            prune_site(graph, "c1")
        return
    # the offered width applies: prune_channels prunes c1 to half, every output shape kept
    site = prune_site(graph, "c1")
    assert site.path == (("add",) if fused else ("pool", "add")) and site.consumers == ("c2",)
    result = PruneChannelsPass(widths={"c1": graph.space.options["c1"]["width"][-1]}).run(
        graph, PassContext(facts={"shapes"}))
    assert result.stats["channels_kept"] == {"c1": 8} and graph.shape("b") == (1, 8, 16, 16)
    assert graph.shape("y") == (1, 8, 16, 16)


def _gemm_after_custom_op(tail: bool):
    """x -> Foo (opaque) -> Gemm fc -> Relu [-> Gemm fc2] -> y, y declared (a, b): inference
    knows nothing after Foo, so the last kernel's output dims are unknown (None, None)."""
    nodes = [helper.make_node("Foo", ["x"], ["f"], name="foo", domain="com.example"),
             helper.make_node("Gemm", ["f", "fc"], ["g"], name="fc", transB=1),
             _relu("relu", "g", "r" if tail else "y")]
    weights = {"fc": (16, 8)}
    if tail:
        nodes.append(helper.make_node("Gemm", ["r", "fc2"], ["y"], name="fc2", transB=1))
        weights["fc2"] = (10, 16)
    model = _model(nodes, weights, inputs={"x": (1, 8)}, outputs={"y": 2})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


@pytest.mark.parametrize("tail", [False, True], ids=["gemm-output", "gemm-into-gemm"])
def test_gemm_with_unknown_output_dims_is_no_crash(tail):
    """discover_space read a Gemm's channels off its output dims: TypeError (None < 4) when
    they were unknown. The channels come from the weight now, the rule is prune_site's."""
    graph, _ = _analyze(_gemm_after_custom_op(tail))
    last = graph.kernels[-1]
    assert last.op_type == "Gemm" and last.output_shape == (None, None)
    assert "width" not in graph.space.options[last.name]  # its channels are the graph output
    assert ("width" in graph.space.options["fc"]) == tail  # fc feeds fc2 through the Relu
    if tail:
        assert prune_site(graph, "fc").consumers == ("fc2",)


# --- kernel size ---------------------------------------------------------------------------
def _kxk(k, attrs, group=1):
    return _model([_conv("c", "x", "y", "w", **attrs)], {"w": (16, 16 // group, *k)},
                  inputs={"x": (1, 16, 12, 12)})


@pytest.mark.parametrize(("k", "attrs", "group", "sizes"), [
    ((5, 5), {"pads": [2] * 4}, 1, [5, 3]),
    ((7, 7), {"pads": [3] * 4}, 1, [7, 5, 3]),
    ((7, 7), {"pads": [1] * 4}, 1, [7, 5]),   # 3x3 would need pads of 2
    ((5, 5), {"auto_pad": "SAME_UPPER"}, 1, [5, 3]),
    ((5, 5), {"pads": [2] * 4, "group": 16}, 16, [5, 3]),
    ((7, 7), {"pads": [3] * 4, "strides": [2, 2]}, 1, [7, 5, 3]),
], ids=["5x5", "7x7", "7x7-small-pads", "same-upper", "depthwise-5x5", "7x7-stride2"])
def test_kernel_shrink_offered_and_keeps_the_output_shape(k, attrs, group, sizes):
    graph, _ = _analyze(_kxk(k, attrs, group))
    assert graph.space.options["c"]["kernel_size"] == sizes
    before = graph.shape("y")
    shrink_kernel(graph, "c", sizes[-1])  # the smallest offered size is legal ...
    infer_shapes(graph)
    assert graph.shape("y") == before     # ... and keeps the output shape


@pytest.mark.parametrize(("k", "attrs"), [
    ((3, 3), {"pads": [1] * 4}),
    ((5, 5), {"pads": [0] * 4}),
    ((5, 5), {"pads": [4] * 4, "dilations": [2, 2]}),
    ((5, 3), {"pads": [2, 1, 2, 1]}),
    ((9, 9), {"pads": [4] * 4}),
], ids=["3x3", "5x5-no-pads", "dilated", "not-square", "9x9"])
def test_no_kernel_shrink(k, attrs):
    graph, _ = _analyze(_kxk(k, attrs))
    assert "kernel_size" not in graph.space.options["c"]


@pytest.mark.parametrize("k", [5, 7])
def test_no_kernel_shrink_with_valid_padding(k):
    """VALID has no pads to give back: shrinking would grow the output (8x8 -> 10x10 for 5x5
    -> 3x3). It used to count as 'not explicit pads' and was offered and applied."""
    graph, _ = _analyze(_kxk((k, k), {"auto_pad": "VALID"}))
    assert graph.shape("y") == (1, 16, 13 - k, 13 - k)
    assert "kernel_size" not in graph.space.options["c"]
    with pytest.raises(BadInputError, match=r"^kernel_size: Conv 'c' has auto_pad=VALID \(no "
                       r"padding to give back\); shrinking to 3 would change its output shape$"):
        shrink_kernel(graph, "c", 3)


# --- skip blocks ---------------------------------------------------------------------------
def _residual(order=("x", "f"), extra=(), outputs=None, inputs=None):
    """y = Add(x, conv(relu(conv(x)))) with `order` the Add's input order."""
    nodes = [_conv("c1", "x", "a", "w1", pads=[1] * 4), _relu("r", "a", "b"),
             _conv("c2", "b", "f", "w2", pads=[1] * 4), *extra,
             helper.make_node("Add", list(order), ["y"], name="add")]
    return _model(nodes, {"w1": (16, 16, 3, 3), "w2": (16, 16, 3, 3), "bias": (1, 16, 1, 1)},
                  inputs=inputs, outputs=outputs)


@pytest.mark.parametrize("order", [("x", "f"), ("f", "x")])
def test_residual_block_is_skippable(order):
    graph, record = _analyze(_residual(order))
    assert graph.space.blocks == {"add": ("c1", "r", "c2", "add")}
    assert record.stats["skippable_blocks"] == 1


@pytest.mark.parametrize("model", [
    _residual(outputs={"y": 4, "b": 4}),                              # branch is an output
    _residual(extra=[_relu("other", "b", "z")], outputs={"y": 4, "z": 4}),
    _residual(("x", "g"), [helper.make_node("Mul", ["f", "z"], ["g"], name="m")],
              inputs={"x": (1, 16, 8, 8), "z": (1, 16, 8, 8)}),     # branch reads another input
    _residual(("x", "p"), [helper.make_node("GlobalAveragePool", ["f"], ["p"], name="gap")]),
    _residual(("x", "bias")),                                         # a bias add, no branch
    _residual(("f", "f")),                                            # f + f
    _residual(outputs={"y": 4, "f": 4}),                              # f(x) is an output
    _residual(extra=[_relu("other", "f", "z")], outputs={"y": 4, "z": 4}),
], ids=["branch-is-graph-output", "branch-read-by-another-node", "branch-reads-another-input",
        "broadcast-shapes", "bias-add", "same-tensor-twice", "f-is-graph-output",
        "f-read-by-another-node"])
def test_not_a_skippable_block(model):
    graph, record = _analyze(model)
    assert graph.space.blocks == {} and record.stats["skippable_blocks"] == 0


# --- input resolutions ---------------------------------------------------------------------
def _classifier(size, pool="GlobalAveragePool", hw=None, flatten_first=False):
    h, w = hw or (size, size)
    c = _conv("c", "x", "a", "w", pads=[1] * 4)
    if flatten_first:  # flatten the spatial map (then the Gemm depends on H x W)
        nodes = [c, helper.make_node("Flatten", ["a"], ["f"], name="flat"),
                 helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
                 helper.make_node(pool, ["a"], ["z"], name="pool")]
        fc, outputs = (10, 8 * h * w), {"y": 2, "z": 4}
    else:
        nodes = [c, helper.make_node(pool, ["a"], ["p"], name="pool"),
                 helper.make_node("Flatten", ["p"], ["f"], name="flat"),
                 helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
        global_pool = pool.startswith("Global")
        fc, outputs = (10, 8 if global_pool else 8 * h * w), {"y": 2}
    return _model(nodes, {"w": (8, 3, 3, 3), "fc": fc}, inputs={"x": (1, 3, h, w)},
                  outputs=outputs)


@pytest.mark.parametrize(("size", "sizes"), [
    (224, [224, 192, 168, 144, 112]), (64, [64, 56, 48, 40, 32]), (32, [32, 24, 16]),
    (40, [40, 32, 24, 16]), (16, [16, 8])])
def test_resolutions_for_a_globally_pooled_classifier(size, sizes):
    graph, _ = _analyze(_classifier(size))
    assert graph.space.input_name == "x"
    assert graph.space.resolutions == sizes


@pytest.mark.parametrize("model", [
    _classifier(32, flatten_first=True),
    _classifier(32, pool="Relu"),
    _classifier(32, hw=(32, 24)),
    _classifier(8),
    _model([helper.make_node("Add", ["x", "x2"], ["s"], name="add"),
            helper.make_node("GlobalAveragePool", ["s"], ["y"], name="pool")], {},
           inputs={"x": (1, 3, 32, 32), "x2": (1, 3, 32, 32)}),
], ids=["flatten-before-pooling", "no-global-pooling", "not-square", "smaller-than-16",
        "two-inputs"])
def test_no_resolutions(model):
    graph, _ = _analyze(model)
    assert graph.space.resolutions == [] and graph.space.input_name is None


# --- precision, the pass, and whole models -------------------------------------------------
def test_precision_for_compute_kernels_only_and_pass_stats():
    graph, record = _analyze(_classifier(32))
    assert set(graph.space.options) == {"c", "fc"}  # not the pool or the flatten
    assert all(o["precision"] == list(PRECISIONS) for o in graph.space.options.values())
    assert graph.space.options["c"]["width"] == [1.0, 0.75, 0.5]
    assert "width" not in graph.space.options["fc"]
    assert graph.space.resolutions == [32, 24, 16]
    assert not record.changed
    # 3 precisions x 3 widths (c) x 3 precisions (fc) x 3 resolutions
    assert record.stats == {"kernels_with_choices": 2, "skippable_blocks": 0,
                            "design_space_log10": pytest.approx(4 * math.log10(3))}


def test_mobilenet_v2_space():
    graph, record = _analyze(zoo.mobilenet_v2(32, 0.25, 10, kernel_sizes=5))
    o = graph.space.options
    assert "width" in o["block4.expand.conv"]
    assert "width" not in o["stem.conv"]            # at width 0.25 block0 adds its input
    assert "width" in o["block16.project.conv"]     # feeds only last.conv (no residual)
    assert "width" not in o["block4.project.conv"]  # tied by block4.add
    assert "width" in o["last.conv"]               # through pool + flatten into head.fc
    assert "width" not in o["block4.dw.conv"] and "width" not in o["head.fc"]
    assert o["block4.dw.conv"]["kernel_size"] == [5, 3]
    assert "kernel_size" not in o["block4.expand.conv"]
    adds = sorted(n for n in graph.nx if graph.op(n) == "Add")
    assert sorted(graph.space.blocks) == adds and len(adds) == 11  # blocks 0, 2, 4, 5, ...
    assert len(graph.space.blocks["block4.add"]) == 9
    assert graph.space.resolutions == [32, 24, 16]
    assert record.stats["kernels_with_choices"] == sum(k.is_compute for k in graph.kernels)


def test_resnet_space():
    graph, _ = _analyze(zoo.resnet(32, 10, 0.25, 10))
    o = graph.space.options
    assert o["stem.conv"]["kernel_size"] == [7, 5, 3] and "width" not in o["stem.conv"]
    assert all("width" in o[f"layer{i}.0.conv1.conv"] for i in range(1, 5))
    assert not any("width" in o[f"layer{i}.0.conv2.conv"] for i in range(1, 5))
    assert not any("width" in o[k] for k in o if "downsample" in k)
    # only layer1.0 keeps its channels and stride; the others add a downsampled shortcut
    assert graph.space.blocks == {"layer1.0.add": graph.space.blocks["layer1.0.add"]}
    assert graph.space.blocks["layer1.0.add"][-1] == "layer1.0.add"
