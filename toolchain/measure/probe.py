"""The probe set: small, fixed ONNX models that span the design space of the kernel predictor.

Measuring them on a device gives the training data of its kernel-level latency predictor and its
fingerprint. The set is fixed and deterministic (seeded weights): a probe's name identifies its
model, so a CSV `design,latency_ms` of probe names is enough to fit a predictor.

Families (each in fp32, and in int8 - QDQ through onnxruntime's `quantize_static` - and fp16
when the target has those precisions):

- `conv`: one Conv (+ Relu): stems, 3x3 / 1x1 / 5x5 / 7x7 / 11x11, strides 1, 2, 4, widths
  8..512, resolutions 7..224; `dw`: depthwise 3x3 / 5x5 / 7x7; `gconv`: grouped 1x1;
- `chain`: the same shape-preserving Conv three times (separates a kernel's own cost from the
  fixed costs of a model: session call, layout conversion at the model's edges);
- `gemm`: one fully connected layer (classifier heads up to 4096x1000); `mlp`: three of them in
  a row, VGG / AlexNet-style classifiers whose weights come from DRAM (with 2 threads such a
  chain runs slower than its gemms timed alone: big gemms are only measured this way);
- `pool`, `gap`, and single element-wise / data-movement ops: Add, Mul, Relu, Clip,
  BatchNormalization, Concat, LRN, Softmax, Reshape, Transpose, Dropout;
- `block`: MobileNetV2 inverted residuals, ResNet basic and bottleneck blocks, DenseNet and
  Inception style concatenations, SqueezeNet fire modules and a classifier head - kernels in
  their usual context; `mixed` variants quantize only some of their convolutions (the even
  ones, in graph order);
- `net`: whole small MobileNetV2 / ResNet networks (other sizes than the benchmark's variants),
  some with more weights than the last-level cache holds; in the full set only, also networks
  at 176-240 px (large early activations: the layout changes around int8 layers there) and
  stems followed by a 1x1 conv (`stemconv`: stem contexts at more sizes).

In the full set only, the networks and the stems also come as `mixodd` (the odd convolutions
int8): a float stem before int8 layers, whose max-pool onnxruntime then runs on uint8 in NCHW,
and float convolutions between int8 ones, whose weights onnxruntime quantizes itself - two
slow paths the `mixed` variants never take (`toolchain.predict.units`). The networks also come
as `mixsparse` (every fourth convolution int8, from the third): single int8 layers between
float ones, as random plans with a few int8 layers make them - each such island costs
onnxruntime a layout change and a conversion on both sides (with 2 threads, ten of them in a
MobileNetV2 at 160 px added 307-413 us, where fits on the other probes predicted 90-137 us),
and the alternating `mixed` / `mixodd` patterns never make one.

`probe_set(precisions, subset)` lists the designs; `build_probe(name)` builds one model.
"""
from __future__ import annotations

import functools
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolchain.errors import BadInputError

__all__ = ["Probe", "probe_set", "build_probe", "write_probes", "probe_names", "OPSET"]

logger = logging.getLogger(__name__)

OPSET = 17


@dataclass(frozen=True)
class Probe:
    """One probe design: `name` = f"{family}-{params}-{precision}"."""

    name: str
    family: str
    precision: str
    params: tuple


class _Net:
    """A tiny graph builder with seeded weights (names are stable, so models are deterministic)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def _name(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}{self.count}"

    def weight(self, array: np.ndarray, dtype=np.float32) -> str:
        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        name = self._name(op)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, s: int = 1, g: int = 1,
             act: str | None = "Relu") -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / (cin // g * k * k)), (cout, cin // g, k, k))
        b = self.rng.normal(0, 0.01, cout)
        y = self.op("Conv", [x, self.weight(w), self.weight(b)], kernel_shape=[k, k],
                    strides=[s, s], pads=[k // 2] * 4, group=g)
        return self.act(y, act)

    def act(self, x: str, act: str | None) -> str:
        if act == "Clip":
            return self.op("Clip", [x, self.weight(np.array(0.0)), self.weight(np.array(6.0))])
        return self.op(act, [x]) if act else x

    def bn(self, x: str, c: int) -> str:
        return self.op("BatchNormalization", [x, self.weight(self.rng.uniform(0.8, 1.2, c)),
                                              self.weight(self.rng.normal(0, 0.1, c)),
                                              self.weight(np.zeros(c)), self.weight(np.ones(c))],
                       epsilon=1e-5)

    def shuffle(self, x: str, c: int, hw: int, groups: int) -> str:
        """ShuffleNet's channel shuffle: reshape to (groups, c / groups), transpose, reshape."""
        y = self.op("Reshape", [x, self.weight(np.array([1, groups, c // groups, hw, hw]),
                                               np.int64)])
        y = self.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
        return self.op("Reshape", [y, self.weight(np.array([1, c, hw, hw]), np.int64)])

    def gemm(self, x: str, k: int, n: int, act: str | None = None) -> str:
        w = self.rng.normal(0, np.sqrt(1.0 / k), (n, k))
        return self.act(self.op("Gemm", [x, self.weight(w), self.weight(np.zeros(n))],
                                transB=1), act)

    def model(self, inputs: dict[str, tuple], y: str) -> onnx.ModelProto:
        vis = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "probe", vis, [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="fleetc.probe")
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model)


# ----------------------------------------------------------------------------- families

def _conv(p, net):  # (cin, cout, k, stride, hw, group, act)
    cin, cout, k, s, hw, g, act = p
    return {"x": (1, cin, hw, hw)}, net.conv("x", cin, cout, k, s, g, act)


def _chain(p, net):  # (c, k, hw, group): three shape-preserving convs
    c, k, hw, g = p
    y = "x"
    for _ in range(3):
        y = net.conv(y, c, c, k, 1, g)
    return {"x": (1, c, hw, hw)}, y


def _gemm(p, net):  # (k, n, act)
    k, n, act = p
    return {"x": (1, k)}, net.gemm("x", k, n, act)


def _mlp(p, net):  # (k, hidden, classes): a VGG / AlexNet-style classifier, three gemms
    k, hidden, n = p
    y = net.gemm(net.gemm("x", k, hidden, "Relu"), hidden, hidden, "Relu")
    return {"x": (1, k)}, net.gemm(y, hidden, n)


def _pool(p, net):  # (op, c, hw, k, stride)
    op, c, hw, k, s = p
    if op == "GlobalAveragePool":
        return {"x": (1, c, hw, hw)}, net.op(op, ["x"])
    return {"x": (1, c, hw, hw)}, net.op(op, ["x"], kernel_shape=[k, k], strides=[s, s],
                                         pads=[k // 2] * 4 if s == 1 else [0] * 4)


def _elementwise(p, net):  # (op, c, hw), Shuffle: (op, c, hw, groups)
    op, c, hw = p[:3]
    shape = (1, c, hw, hw)
    if op == "Add":
        return {"x": shape, "z": shape}, net.op("Add", ["x", "z"])
    if op == "Mul":
        scale = net.weight(net.rng.uniform(0.5, 1.5, (1, c, 1, 1)))
        return {"x": shape}, net.op("Mul", ["x", scale])
    if op == "BatchNormalization":
        return {"x": shape}, net.bn("x", c)
    if op == "Concat":
        return {"x": shape, "z": shape}, net.op("Concat", ["x", "z"], axis=1)
    if op == "LRN":
        return {"x": shape}, net.op("LRN", ["x"], size=5, alpha=1e-4, beta=0.75, bias=1.0)
    if op == "Transpose":  # the channel shuffle of ShuffleNet: reshape, transpose, reshape
        return {"x": shape}, net.shuffle("x", c, hw, 2)
    if op == "Shuffle":   # (channels, hw, groups)
        return {"x": shape}, net.shuffle("x", c, hw, p[3])
    if op in ("Softmax", "Reshape", "Dropout"):
        x = net.op("Flatten", ["x"], axis=1)
        return {"x": shape}, net.op(op, [x]) if op != "Reshape" else x
    return {"x": shape}, net.act("x", op)


def _block(p, net):
    kind = p[0]
    return _BLOCKS[kind](p[1:], net)


def _mbv2(p, net):  # (cin, cout, t, stride, hw, k): two blocks, the second with a residual
    cin, cout, t, s, hw, k = p
    y = "x"
    for i, (ci, st) in enumerate(((cin, s), (cout, 1))):
        mid = ci * t
        h = net.conv(y, ci, mid, 1, 1, 1, "Clip") if t != 1 else y
        h = net.conv(h, mid, mid, k, st, mid, "Clip")
        h = net.conv(h, mid, cout, 1, 1, 1, None)
        y = net.op("Add", [y, h]) if i == 1 else h
    return {"x": (1, cin, hw, hw)}, y


def _basic(p, net):  # (cin, cout, stride, hw): ResNet basic block with BN kept separate
    cin, cout, s, hw = p
    h = net.act(net.bn(net.conv("x", cin, cout, 3, s, 1, None), cout), "Relu")
    h = net.bn(net.conv(h, cout, cout, 3, 1, 1, None), cout)
    short = "x" if s == 1 and cin == cout else net.bn(net.conv("x", cin, cout, 1, s, 1, None),
                                                      cout)
    return {"x": (1, cin, hw, hw)}, net.act(net.op("Add", [short, h]), "Relu")


def _bottleneck(p, net):  # (cin, mid, stride, hw)
    cin, mid, s, hw = p
    cout = mid * 4
    h = net.conv("x", cin, mid, 1, 1)
    h = net.conv(h, mid, mid, 3, s)
    h = net.conv(h, mid, cout, 1, 1, 1, None)
    short = "x" if s == 1 and cin == cout else net.conv("x", cin, cout, 1, s, 1, None)
    return {"x": (1, cin, hw, hw)}, net.act(net.op("Add", [short, h]), "Relu")


def _dense(p, net):  # (cin, growth, hw, layers): BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, concat
    cin, growth, hw, layers = p
    y, c = "x", cin
    for _ in range(layers):
        h = net.conv(net.act(net.bn(y, c), "Relu"), c, 4 * growth, 1, 1, 1, None)
        h = net.conv(net.act(net.bn(h, 4 * growth), "Relu"), 4 * growth, growth, 3, 1, 1, None)
        y, c = net.op("Concat", [y, h], axis=1), c + growth
    return {"x": (1, cin, hw, hw)}, y


def _inception(p, net):  # (cin, c1, c3, c5, cp, hw)
    cin, c1, c3, c5, cp, hw = p
    b1 = net.conv("x", cin, c1, 1)
    b3 = net.conv(net.conv("x", cin, c3 // 2, 1), c3 // 2, c3, 3)
    b5 = net.conv(net.conv("x", cin, c5 // 2, 1), c5 // 2, c5, 5)
    bp = net.conv(net.op("MaxPool", ["x"], kernel_shape=[3, 3], strides=[1, 1],
                         pads=[1, 1, 1, 1]), cin, cp, 1)
    return {"x": (1, cin, hw, hw)}, net.op("Concat", [b1, b3, b5, bp], axis=1)


def _fire(p, net):  # (cin, squeeze, expand, hw)
    cin, sq, ex, hw = p
    s = net.conv("x", cin, sq, 1)
    return {"x": (1, cin, hw, hw)}, net.op("Concat", [net.conv(s, sq, ex, 1),
                                                      net.conv(s, sq, ex, 3)], axis=1)


def _head(p, net):  # (c, hw, classes, flatten op)
    c, hw, n, pool = p
    y = net.op(pool, ["x"], kernel_shape=[hw, hw]) if pool == "AveragePool" \
        else net.op(pool, ["x"])
    y = net.op("Flatten", [y], axis=1)
    return {"x": (1, c, hw, hw)}, net.op("Softmax", [net.gemm(y, c, n)])


def _convhead(p, net):  # (cin, cout, hw, classes): last 1x1 conv + pool + classifier
    cin, cout, hw, n = p
    y = net.op("GlobalAveragePool", [net.conv("x", cin, cout, 1, 1, 1, "Clip")])
    return {"x": (1, cin, hw, hw)}, net.gemm(net.op("Flatten", [y], axis=1), cout, n)


def _shuffle_unit(p, net):  # (cin, cout, stride, hw, groups)
    cin, cout, s, hw, g = p
    branch = cout - cin if s == 2 else cout   # stride 2: the pooled shortcut is concatenated
    mid = branch // 4 // g * g
    h = net.conv("x", cin, mid, 1, 1, g)
    h = net.conv(net.shuffle(h, mid, hw, g), mid, mid, 3, s, mid, None)
    h = net.conv(h, mid, branch, 1, 1, g, None)
    if s == 1:
        return {"x": (1, cin, hw, hw)}, net.act(net.op("Add", ["x", h]), "Relu")
    short = net.op("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return {"x": (1, cin, hw, hw)}, net.act(net.op("Concat", [short, h], axis=1), "Relu")


def _zoo_net(p) -> onnx.ModelProto:
    """(kind, resolution, width, k or depth): a whole small network from toolchain.measure.zoo."""
    from toolchain.measure.zoo import mobilenet_v2, resnet

    kind, res, width, extra = p
    if kind == "mbv2":
        return mobilenet_v2(res, width, kernel_sizes=extra, num_classes=100, seed=7)
    return resnet(res, extra, width, num_classes=100, seed=7)


def _stem(p, net):  # (cout, k, hw): stem conv + max pool, as in ResNet / GoogLeNet
    cout, k, hw = p
    y = net.conv("x", 3, cout, k, 2)
    return {"x": (1, 3, hw, hw)}, net.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2],
                                         pads=[1, 1, 1, 1])


def _stemconv(p, net):  # (cout, k, hw): a stem with a 1x1 conv after its pool, as in a ResNet.
    # Between two int8 convolutions the units price the max-pool as float (MaxPool/fp32;
    # onnxruntime runs NhwcMaxPool on uint8, see `units._runtime_int8`); after a float stem
    # and before an int8 conv (`mixodd`) it runs on uint8 in NCHW.
    cout, k, hw = p
    inputs, y = _stem((cout, k, hw), net)
    return inputs, net.conv(y, cout, cout, 1, 1)


_BLOCKS = {"mbv2": _mbv2, "basic": _basic, "bottleneck": _bottleneck, "dense": _dense,
           "convhead": _convhead, "inception": _inception, "fire": _fire, "head": _head,
           "stem": _stem, "stemconv": _stemconv, "shuffle": _shuffle_unit}
_FAMILIES: dict[str, Callable] = {"conv": _conv, "chain": _chain, "gemm": _gemm, "mlp": _mlp,
                                  "pool": _pool, "op": _elementwise, "block": _block}


def _grid() -> list[tuple[str, tuple]]:
    """The fixed list of (family, params) - float designs; precisions are added on top."""
    out: list[tuple[str, tuple]] = []
    convs = [  # stems and plain convolutions: (cin, cout, k, stride, hw)
        (3, 16, 3, 2, 224), (3, 32, 3, 2, 160), (3, 64, 7, 2, 224), (3, 96, 11, 4, 224),
        (3, 24, 3, 2, 96), (16, 16, 3, 1, 112), (32, 32, 3, 1, 56), (64, 64, 3, 1, 56),
        (64, 128, 3, 2, 56), (128, 128, 3, 1, 28), (128, 256, 3, 2, 28), (256, 256, 3, 1, 14),
        (256, 512, 3, 2, 14), (512, 512, 3, 1, 7), (64, 192, 3, 1, 56), (96, 256, 5, 1, 27),
        (256, 384, 3, 1, 13), (384, 256, 3, 1, 13), (32, 64, 5, 1, 28), (24, 48, 7, 2, 56),
        (48, 48, 5, 1, 28), (8, 8, 3, 1, 64), (512, 512, 3, 1, 14), (64, 64, 3, 1, 224),
        (128, 128, 3, 1, 112), (256, 256, 3, 1, 56), (16, 24, 3, 2, 112),
    ]
    out += [("conv", (ci, co, k, s, hw, 1, "Relu")) for ci, co, k, s, hw in convs]
    pointwise = [(16, 96, 112), (96, 24, 56), (24, 144, 56), (144, 32, 28), (32, 192, 28),
                 (192, 64, 14), (64, 384, 14), (384, 96, 14), (96, 576, 14), (576, 160, 7),
                 (160, 960, 7), (960, 320, 7), (320, 1280, 7), (64, 256, 56), (256, 64, 56),
                 (512, 128, 28), (1024, 256, 14), (2048, 512, 7), (512, 2048, 7),
                 (128, 512, 28), (64, 16, 55), (480, 192, 14), (256, 256, 28), (8, 32, 32)]
    out += [("conv", (ci, co, 1, 1, hw, 1, "Relu")) for ci, co, hw in pointwise]
    out += [("conv", (ci, co, 1, 1, hw, 1, None)) for ci, co, hw in pointwise[1:12:3]]
    out += [("conv", (ci, co, 1, 2, hw, 1, None)) for ci, co, hw in
            ((64, 256, 56), (256, 512, 56), (512, 1024, 28), (1024, 2048, 14))]
    depthwise = [(32, 3, 1, 112), (96, 3, 2, 112), (144, 3, 1, 56), (144, 3, 2, 56),
                 (192, 3, 1, 28), (192, 3, 2, 28), (384, 3, 1, 14), (576, 3, 1, 14),
                 (576, 3, 2, 14), (960, 3, 1, 7), (32, 5, 1, 56), (144, 5, 2, 56),
                 (240, 5, 1, 14), (480, 7, 1, 14), (72, 7, 2, 56), (16, 3, 1, 80),
                 (48, 3, 2, 80), (256, 3, 1, 28), (120, 5, 1, 28), (960, 5, 1, 7)]
    out += [("conv", (c, c, k, s, hw, c, "Clip")) for c, k, s, hw in depthwise]
    out += [("conv", (c, c, 3, 1, hw, c, "Relu")) for c, hw in ((64, 56), (128, 28))]
    groups = [(240, 240, 1, 1, 28, 3), (480, 480, 1, 1, 14, 3), (240, 240, 3, 2, 28, 240),
              (128, 128, 3, 1, 28, 4), (256, 256, 3, 1, 14, 32)]
    out += [("conv", (ci, co, k, s, hw, g, "Relu")) for ci, co, k, s, hw, g in groups]
    out += [("chain", p) for p in ((32, 3, 56, 1), (64, 1, 28, 1), (128, 3, 14, 1),
                                   (256, 1, 14, 1), (96, 3, 56, 96), (384, 3, 14, 384),
                                   (16, 3, 112, 1), (512, 3, 7, 1), (144, 5, 28, 144),
                                   (960, 3, 7, 960), (128, 1, 56, 1), (64, 3, 28, 1))]
    # Gemms whose weights come from DRAM are measured in a row (`mlp`), never alone: with 2
    # threads a big gemm timed alone in a loop sometimes runs 1.5x faster than usual (fast
    # phases of the host's memory bandwidth) and, even in its usual phase, faster than inside a
    # network (session 8). The two `mlp` entries hold the places of the 9216x4096 and
    # 4096x4096 gemms of earlier versions, so the quick and fingerprint subsets keep their size.
    gemms = [("gemm", p) for p in ((1280, 1000, None), (512, 1000, None), (2048, 1000, None),
                                   (1024, 1000, None), (4096, 1000, None), (256, 10, None),
                                   (128, 64, "Relu"), (960, 1280, None))]
    out += gemms[:4] + [("mlp", m) for m in _MLPS[:2]] + gemms[4:]
    out += [("pool", p) for p in (("MaxPool", 64, 112, 3, 2), ("MaxPool", 96, 55, 3, 2),
                                  ("MaxPool", 256, 27, 3, 2), ("MaxPool", 64, 224, 2, 2),
                                  ("MaxPool", 512, 14, 2, 2), ("MaxPool", 192, 28, 3, 1),
                                  ("MaxPool", 832, 14, 3, 1), ("AveragePool", 256, 28, 2, 2),
                                  ("AveragePool", 1024, 7, 7, 7), ("AveragePool", 128, 28, 3, 1),
                                  ("GlobalAveragePool", 1280, 7, 1, 1),
                                  ("GlobalAveragePool", 2048, 7, 1, 1),
                                  ("GlobalAveragePool", 512, 14, 1, 1),
                                  ("GlobalAveragePool", 64, 56, 1, 1))]
    for op in ("Add", "Relu", "Clip", "BatchNormalization", "Mul", "Concat"):
        out += [("op", (op, c, hw)) for c, hw in ((32, 112), (128, 56), (256, 14), (1024, 7))]
    out += [("op", (op, c, hw)) for op in ("LRN", "Transpose", "Sigmoid", "HardSwish")
            for c, hw in ((64, 56), (256, 14))]
    out += [("op", (op, c, 1)) for op in ("Softmax", "Reshape", "Dropout")
            for c in (1000, 4096)]
    blocks = [("mbv2", 16, 24, 6, 2, 112, 3), ("mbv2", 24, 32, 6, 2, 56, 3),
              ("mbv2", 32, 64, 6, 2, 28, 3), ("mbv2", 64, 96, 6, 1, 14, 3),
              ("mbv2", 96, 160, 6, 2, 14, 3), ("mbv2", 160, 320, 6, 1, 7, 3),
              ("mbv2", 32, 16, 1, 1, 80, 3), ("mbv2", 24, 40, 3, 2, 40, 5),
              ("mbv2", 40, 80, 4, 2, 20, 7), ("mbv2", 24, 24, 6, 1, 40, 3),
              ("basic", 64, 64, 1, 56), ("basic", 64, 128, 2, 56), ("basic", 128, 256, 2, 28),
              ("basic", 256, 512, 2, 14), ("basic", 32, 32, 1, 40), ("basic", 512, 512, 1, 7),
              ("bottleneck", 64, 64, 1, 56), ("bottleneck", 256, 128, 2, 56),
              ("bottleneck", 512, 256, 2, 28), ("bottleneck", 1024, 512, 2, 14),
              ("dense", 64, 32, 56, 3), ("dense", 256, 32, 14, 3),
              ("inception", 192, 64, 128, 32, 32, 28), ("inception", 480, 192, 208, 48, 64, 14),
              ("fire", 96, 16, 64, 55), ("fire", 256, 48, 192, 13),
              ("head", 1280, 7, 1000, "GlobalAveragePool"), ("head", 512, 7, 1000, "AveragePool"),
              ("stem", 64, 7, 224), ("stem", 32, 3, 160)]
    blocks += [("convhead", 320, 1280, 7, 1000), ("convhead", 96, 576, 4, 100),
               ("convhead", 512, 1024, 3, 10)]
    out += [("block", b) for b in blocks + list(_STEMS)]
    # Whole small networks (kernels in a real model's context: caches, layout, residuals);
    # other sizes than the benchmark's zoo variants.
    out += [("net", n) for n in (("mbv2", 112, 0.35, 3), ("mbv2", 144, 0.6, 5),
                                 ("mbv2", 64, 1.0, 3), ("mbv2", 80, 0.6, 3),
                                 ("resnet", 112, 0.25, 10), ("resnet", 80, 0.35, 18),
                                 ("resnet", 64, 0.6, 26), ("resnet", 128, 0.35, 10),
                                 *_COLD_NETS, *_HIRES_NETS)]
    out += [("conv", c) for c in _GROUPED] + [("op", p) for p in _FULL_ONLY_OPS]
    out += [("block", b) for b in _SHUFFLE_BLOCKS]
    out += [("mlp", m) for m in _MLPS[2:]]
    return out


# Networks whose weights exceed the last-level cache (read from DRAM at every inference). Full
# set only: the quick and fingerprint subsets are kept as they were before these were added.
_COLD_NETS = (("resnet", 64, 1.0, 18), ("resnet", 80, 0.9, 26), ("resnet", 112, 1.25, 10),
              ("mbv2", 112, 1.25, 3), ("mbv2", 144, 1.0, 3), ("mbv2", 96, 1.4, 5))
# Networks at the input sizes of deployed models (176-240 px; the nets above stop at 144):
# their early layers run at 88-120 px, where an int8 convolution between float ones costs
# onnxruntime layout changes (NCHWc -> NCHW -> NHWC and back) on large activations. Full set
# only, as _COLD_NETS.
_HIRES_NETS = (("mbv2", 176, 0.5, 3), ("mbv2", 208, 0.75, 3), ("mbv2", 240, 0.35, 5),
               ("resnet", 176, 0.5, 10), ("resnet", 208, 0.35, 18))
# Stems (7x7/2 conv + 3x3/2 max-pool + 1x1 conv) at more sizes (see `_stemconv`). Full set
# only, as _COLD_NETS; their `mixodd` variants (float stem, int8 1x1) put the max-pool on
# onnxruntime's uint8 NCHW path.
_STEMS = (("stemconv", 64, 7, 160), ("stemconv", 48, 7, 192), ("stemconv", 32, 7, 128),
          ("stemconv", 96, 7, 96), ("stemconv", 24, 3, 224), ("stemconv", 64, 7, 112))

# Grouped (not depthwise) convolutions, ShuffleNet's and AlexNet's / ResNeXt's kind: onnxruntime
# runs them per group in plain NCHW (its blocked layout takes only dense and depthwise convs).
# (cin, cout, k, stride, hw, group, act); channels per group 8-160, some not a multiple of 16.
# Full set only, as _COLD_NETS (session 6).
_GROUPED = ((96, 96, 1, 1, 28, 4, "Relu"), (192, 192, 1, 1, 14, 4, "Relu"),
            (384, 384, 1, 1, 7, 4, "Relu"), (128, 256, 1, 1, 28, 8, "Relu"),
            (256, 256, 1, 1, 28, 2, "Relu"), (64, 64, 1, 1, 56, 4, "Relu"),
            (480, 480, 1, 1, 14, 8, None), (200, 200, 1, 1, 28, 4, None),
            (120, 240, 1, 1, 28, 3, "Relu"), (288, 288, 1, 1, 14, 3, None),
            (64, 192, 5, 1, 28, 2, "Relu"), (256, 256, 3, 1, 14, 2, "Relu"),
            (320, 320, 3, 1, 14, 2, "Relu"), (128, 128, 3, 2, 56, 32, "Relu"),
            (64, 64, 3, 1, 56, 8, "Relu"), (512, 512, 3, 1, 7, 32, "Relu"),
            (192, 384, 3, 1, 13, 2, "Relu"), (96, 96, 3, 1, 28, 3, "Relu"))
# Single ops, full set only: channel shuffles (reshape, transpose, reshape) with 2-8 groups,
# (Shuffle, channels, hw, groups); local response normalization at more sizes (AlexNet /
# GoogLeNet: a costly op, two probes before session 6).
_FULL_ONLY_OPS = tuple(("Shuffle", *p) for p in (
    (96, 28, 4), (240, 28, 3), (384, 14, 8), (64, 56, 2), (512, 7, 4), (192, 56, 4),
    (160, 28, 2), (576, 7, 3))) + (("LRN", 96, 55), ("LRN", 192, 28), ("LRN", 128, 27),
                                   ("LRN", 32, 112), ("LRN", 480, 7))
# ShuffleNet units: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a residual add (stride
# 1) or an average-pooled shortcut concatenated (stride 2). (cin, cout, stride, hw, groups)
_SHUFFLE_BLOCKS = (("shuffle", 96, 96, 1, 28, 4), ("shuffle", 192, 192, 1, 14, 8),
                   ("shuffle", 120, 240, 2, 56, 3), ("shuffle", 128, 128, 1, 56, 2),
                   ("shuffle", 240, 480, 2, 28, 4), ("shuffle", 480, 480, 1, 7, 4))
# Classifiers of three gemms whose weights (100-160 MB in fp32) are read from DRAM (see the
# gemms in `_grid`); the third is in the full set only, as _COLD_NETS.
_MLPS = ((4608, 4096, 1000), (12544, 2048, 1000), (2048, 4096, 512))

# Families measured in int8: everything with arithmetic worth quantizing (the pure data-movement
# ops are run in int8 inside blocks).
_INT8 = ("conv", "chain", "gemm", "mlp", "pool", "block", "net")


def probe_set(precisions: tuple[str, ...] = ("fp32", "int8"), subset: str = "full") -> list[Probe]:
    """The fixed probe designs for these precisions; `subset="quick"` keeps about one in six
    (for tests and smoke runs), `"fingerprint"` a dozen reference designs."""
    probes = []
    for family, params in _grid():
        for precision in precisions:
            if precision == "int8" and family not in _INT8:
                continue
            probes.append(Probe(_name(family, params, precision), family, precision, params))
            if precision == "int8" and (family == "net" or family == "block" and
                                        zlib.crc32(str(params).encode()) % 2):
                probes.append(Probe(_name(family, params, "mixed"), family, "mixed", params))
            if precision == "int8" and (family == "net" or params in _STEMS):
                probes.append(Probe(_name(family, params, "mixodd"), family, "mixodd", params))
            if precision == "int8" and family == "net":
                probes.append(Probe(_name(family, params, "mixsparse"), family, "mixsparse",
                                    params))
    if subset != "full":
        full_only = (_COLD_NETS + _HIRES_NETS + _STEMS + _GROUPED + _FULL_ONLY_OPS
                     + _SHUFFLE_BLOCKS + _MLPS[2:])
        probes = [p for p in probes if p.params not in full_only
                  and p.precision not in ("mixodd", "mixsparse")]
    if subset == "quick":
        # One in six, plus the first design of every op kind so no kind is left unfitted, and
        # the whole networks in fp32 (context for every kernel kind at once).
        first = {}
        for p in probes:
            if p.family in ("op", "pool"):
                first.setdefault((p.params[0], p.precision), p.name)
        keep = set(first.values()) | {p.name for p in probes
                                      if p.family == "net" and p.precision == "fp32"}
        return [p for i, p in enumerate(probes) if i % 6 == 0 or p.name in keep]
    if subset == "fingerprint":
        return [p for i, p in enumerate(probes) if i % 24 == 0]
    if subset != "full":
        raise BadInputError(f"unknown probe subset {subset!r} (full, quick, fingerprint)")
    return probes


def probe_names(precisions: tuple[str, ...] = ("fp32", "fp16", "int8")) -> dict[str, Probe]:
    return {p.name: p for p in probe_set(precisions)}


def _name(family: str, params: tuple, precision: str) -> str:
    parts = [str(v).lower() if not isinstance(v, str) else v.lower() for v in params]
    return "-".join([family, *parts, precision]).replace("none", "id")


_CACHE_MAX_BYTES = 32 << 20
# Mixed precisions: which convolutions (in graph order) are int8.
_MIXES = {"mixed": slice(0, None, 2), "mixodd": slice(1, None, 2), "mixsparse": slice(2, None, 4)}
PROBE_VERSION = 3   # bump when a family's models change: cached models are keyed by it


@functools.lru_cache(maxsize=8)
def build_probe(name: str) -> onnx.ModelProto:
    """The model of a probe design (deterministic). Unknown names raise BadInputError.

    Built models are cached under $FLEETC_HOME/cache/probes (quantization takes a while)."""
    probe = probe_names().get(name)
    if probe is None:
        raise BadInputError(f"{name!r} is not a probe design of `fleetc probe`")
    path = _cache_path(name)
    if path.is_file():
        try:
            return onnx.load(str(path))
        except Exception:  # a damaged cache entry: rebuild it
            logger.warning("rebuilding damaged cached probe %s", path)
    model = _build(probe)
    data = model.SerializeToString()
    # Only quantized probes are worth caching (quantize_static is the slow part); big ones
    # are rebuilt rather than kept on disk.
    if (probe.precision == "int8" or probe.precision in _MIXES) and len(data) < _CACHE_MAX_BYTES:
        from toolchain.files import atomic_write

        atomic_write(path, data)
    return model


def _cache_path(name: str) -> Path:
    return probe_cache_dir() / f"{name}.onnx"


def probe_cache_dir() -> Path:
    """Cached probe models and their units under $FLEETC_HOME (read at each call), keyed by
    everything that shapes them (`_probe_key`)."""
    from toolchain.home import cache_dir

    return cache_dir() / "probes" / _probe_key()


@functools.lru_cache(maxsize=1)
def _probe_key() -> str:
    """The probe version, onnxruntime's version and the source of the int8 passes
    (fold_batchnorm, quantize)."""
    import hashlib

    import onnxruntime

    import passes.fold_batchnorm
    import passes.quantize

    source = b"".join(Path(m.__file__).read_bytes()
                      for m in (passes.fold_batchnorm, passes.quantize))
    key = hashlib.sha256(source).hexdigest()[:10]
    return f"v{PROBE_VERSION}-ort{onnxruntime.__version__}-q{key}"


def _build(probe: Probe) -> onnx.ModelProto:
    name = probe.name
    if probe.family == "net":
        model = _zoo_net(probe.params)
    else:
        net = _Net(seed=sum(map(ord, name)) % 10007)
        inputs, y = _FAMILIES[probe.family](probe.params, net)
        model = net.model(inputs, y)
    if probe.precision == "int8":
        return quantize_qdq(model)
    if probe.precision in _MIXES:
        convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
        return quantize_qdq(model, nodes=convs[_MIXES[probe.precision]])
    if probe.precision == "fp16":
        return whole_model_fp16(model)
    return model


def quantize_qdq(model: onnx.ModelProto, nodes: list[str] | None = None,
                 seed: int = 0) -> onnx.ModelProto:
    """int8 QDQ exactly as the rewrite makes it (`passes.quantize`: BN folded, per-channel
    symmetric int8 weights, uint8 activations, followers quantized), with seeded random
    calibration data; `nodes` limits it to those compute kernels (default: all)."""
    from passes import analyze
    from passes.export_onnx import export_onnx
    from passes.fold_batchnorm import FoldBatchnormPass
    from passes.import_onnx import import_onnx
    from passes.quantize import QuantizePass
    from toolchain.calib import synthetic_calib
    from toolchain.pipeline import PassContext, Pipeline

    graph = import_onnx(model)
    analyze(graph)
    kernels = [k.name for k in graph.kernels if k.is_compute]
    if nodes is not None:
        kernels = [k for k in kernels if k in nodes]
    calib = synthetic_calib(graph, n=4, seed=seed, warn=False)
    int8 = tuple(kernels)
    Pipeline([FoldBatchnormPass(kernels=int8), QuantizePass(kernels=int8)]).run(
        graph, PassContext(calib=calib, facts={"shapes"}))
    return export_onnx(graph)


def whole_model_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The whole model in float16: weights, inputs and outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16), init.name))
    for vi in list(out.graph.input) + list(out.graph.output) + list(out.graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    return out


def write_probes(probes: list[Probe], folder: str | os.PathLike) -> list[Path]:
    """Write each probe as `<name>.onnx` plus `probes.txt` (one name a line)."""
    from toolchain.files import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in probes:
        path = folder / f"{p.name}.onnx"
        atomic_write(path, build_probe(p.name).SerializeToString())
        paths.append(path)
    atomic_write(folder / "probes.txt", "".join(f"{p.name}\n" for p in probes))
    return paths
