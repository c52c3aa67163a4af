"""Test and demo models built with `onnx.helper`: MobileNetV2-style and ResNet-style networks.

Weights are seeded random values (He initialisation). BatchNormalization statistics are then set
from data (a seeded random batch run through onnxruntime, one BN at a time in topological order),
so every BN standardises its input: activations neither explode nor vanish with depth, and the
outputs depend on the input. BatchNormalization nodes are kept separate from the convolutions,
as exporters write them, so kernel grouping and folding have something to do.

Every node has a unique, readable name (`block3.expand.conv`, `layer2.0.downsample.bn`, ...).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["mobilenet_v2", "resnet", "OPSET", "MBV2_STAGES"]

logger = logging.getLogger(__name__)

OPSET = 17

# MobileNetV2 stages: (expansion t, output channels c, repeats n, first stride s).
MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# ResNet depth -> (block type, blocks per stage).
_RESNET_LAYERS = {
    10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
    26: ("bottleneck", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)),
}


def _divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never below 90% of the value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass
class _Builder:
    """Accumulates nodes and initializers; tracks the current tensor's channels and size."""

    seed: int
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    bn_nodes: list = field(default_factory=list)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def weight(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, name: str, inputs: list[str], **attrs) -> str:
        out = f"{name}.out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, name: str, x: str, cin: int, cout: int, k: int, stride: int = 1,
             group: int = 1, bias: bool = False, gain: float = 2.0) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0.0, np.sqrt(gain / fan_in), (cout, cin // group, k, k))
        inputs = [x, self.weight(f"{name}.weight", w)]
        if bias:
            inputs.append(self.weight(f"{name}.bias", self.rng.normal(0.0, 0.01, cout)))
        return self.node("Conv", name, inputs, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2] * 4, group=group, dilations=[1, 1])

    def bn(self, name: str, x: str, c: int, gamma: float = 1.0) -> str:
        scale = gamma * self.rng.uniform(0.8, 1.2, c)
        bias = self.rng.normal(0.0, 0.1, c)
        # Placeholder statistics; _standardise replaces them with measured ones.
        inputs = [x, self.weight(f"{name}.scale", scale), self.weight(f"{name}.bias", bias),
                  self.weight(f"{name}.mean", np.zeros(c)), self.weight(f"{name}.var", np.ones(c))]
        self.bn_nodes.append(name)
        return self.node("BatchNormalization", name, inputs, epsilon=1e-5)

    def act(self, name: str, x: str, kind: str) -> str:
        if kind == "relu6":
            lo = self.weight(f"{name}.min", np.array(0.0))
            hi = self.weight(f"{name}.max", np.array(6.0))
            return self.node("Clip", name, [x, lo, hi])
        if kind == "hswish":
            return self.node("HardSwish", name, [x])
        return self.node("Relu", name, [x])

    def conv_bn(self, name: str, x: str, cin: int, cout: int, k: int, stride: int = 1,
                group: int = 1, act: str | None = "relu6", gamma: float = 1.0) -> str:
        y = self.bn(f"{name}.bn", self.conv(f"{name}.conv", x, cin, cout, k, stride, group),
                    cout, gamma)
        return self.act(f"{name}.act", y, act) if act else y

    def squeeze_excite(self, name: str, x: str, c: int, hard: bool) -> str:
        mid = _divisible(c / 4)
        s = self.node("GlobalAveragePool", f"{name}.pool", [x])
        s = self.node("Relu", f"{name}.relu",
                      [self.conv(f"{name}.reduce", s, c, mid, 1, bias=True)])
        s = self.conv(f"{name}.expand", s, mid, c, 1, bias=True, gain=1.0)
        gate = (self.node("HardSigmoid", f"{name}.gate", [s], alpha=1.0 / 6, beta=0.5) if hard
                else self.node("Sigmoid", f"{name}.gate", [s]))
        return self.node("Mul", f"{name}.scale", [x, gate])

    def head(self, x: str, c: int, num_classes: int) -> str:
        x = self.node("GlobalAveragePool", "head.pool", [x])
        x = self.node("Flatten", "head.flatten", [x], axis=1)
        w = self.weight("head.fc.weight", self.rng.normal(0.0, np.sqrt(1.0 / c), (num_classes, c)))
        b = self.weight("head.fc.bias", np.zeros(num_classes))
        return self.node("Gemm", "head.fc", [x, w, b], transB=1)

    def model(self, name: str, x: str, y: str, shape: tuple[int, ...],
              num_classes: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, (shape[0], num_classes))],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="fleetc.zoo")
        model.ir_version = 8
        _standardise(model, self.bn_nodes, self.seed)
        onnx.checker.check_model(model, full_check=True)
        return model


def _standardise(model: onnx.ModelProto, bn_nodes: list[str], seed: int) -> None:
    """Set each BN's running mean/var to the statistics of its input on a random batch.

    BNs are visited in graph order; mean and var are fed as inputs of one onnxruntime session
    so the model is compiled once, and each run fixes one BN given the ones before it.
    """
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    by_name = {n.name: n for n in g.node}
    stat_names = {t for b in bn_nodes for t in by_name[b].input[3:5]}
    kept = [t for t in g.initializer if t.name not in stat_names]
    del g.initializer[:]
    g.initializer.extend(kept)
    for value in (g.input[0], g.output[0]):  # the probe batch is larger than the model's
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    for b in bn_nodes:
        node = by_name[b]
        for t in node.input[3:5]:
            g.input.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
        g.output.append(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    inp = model.graph.input[0]
    # Enough samples per channel in the last, smallest feature maps (1x1 at resolution 32);
    # fewer give poor statistics there and larger activations.
    batch = 2 if inp.type.tensor_type.shape.dim[2].dim_value >= 64 else 32
    shape = [batch] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    feeds = {inp.name: np.random.default_rng(seed + 1).normal(size=shape).astype(np.float32)}
    for b in bn_nodes:
        node = by_name[b]
        c = _dim0(model, node.input[1])
        feeds[node.input[3]] = np.zeros(c, np.float32)
        feeds[node.input[4]] = np.ones(c, np.float32)
    inits = {t.name: t for t in model.graph.initializer}
    for b in bn_nodes:
        node = by_name[b]
        (x,) = sess.run([node.input[0]], feeds)
        axes = (0,) + tuple(range(2, x.ndim))
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        # A floor: a channel that barely varies on this batch must not be blown up.
        var = np.maximum(var, 0.05 * var.mean()) + 1e-3
        feeds[node.input[3]], feeds[node.input[4]] = mean.astype(np.float32), var.astype(np.float32)
        inits[node.input[3]].CopyFrom(numpy_helper.from_array(feeds[node.input[3]], node.input[3]))
        inits[node.input[4]].CopyFrom(numpy_helper.from_array(feeds[node.input[4]], node.input[4]))


def _dim0(model: onnx.ModelProto, name: str) -> int:
    return next(t.dims[0] for t in model.graph.initializer if t.name == name)


def _per_block(value: int | Sequence[int], stages: Sequence[tuple[int, int, int, int]]) -> list:
    """Expand an int, a per-stage or a per-block sequence into one value per block."""
    blocks = sum(n for _, _, n, _ in stages)
    if isinstance(value, int):
        return [value] * blocks
    value = list(value)
    if len(value) == blocks:
        return value
    if len(value) == len(stages):
        return [v for v, (_, _, n, _) in zip(value, stages, strict=True) for _ in range(n)]
    raise ValueError(f"kernel_sizes needs 1, {len(stages)} (per stage) or {blocks} (per block) "
                     f"values, got {len(value)}")


def _cached(build: Callable[..., onnx.ModelProto]) -> Callable[..., onnx.ModelProto]:
    """Build each configuration once per process; every call gets its own copy to modify."""
    cached = functools.lru_cache(maxsize=32)(lambda *a, **k: build(*a, **k).SerializeToString())

    @functools.wraps(build)
    def wrapper(*args, **kwargs) -> onnx.ModelProto:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return onnx.load_from_string(cached(*args, **kwargs))

    return wrapper


@_cached
def mobilenet_v2(resolution: int = 224, width: float = 1.0, num_classes: int = 1000,
                 seed: int = 0, se: bool = False, hard_swish: bool = False,
                 kernel_sizes: int | Sequence[int] = 3, in_channels: int = 3,
                 batch: int = 1, last_channels: int | None = None) -> onnx.ModelProto:
    """A MobileNetV2-style classifier (inverted residual blocks named `block{i}`).

    Each block: 1x1 expand conv (absent when the expansion is 1) + BN + act, kxk depthwise conv
    + BN + act, optional squeeze-excite, 1x1 project conv + BN, and an Add with the block input
    when stride is 1 and channels match. Activations are ReLU6 (Clip); with `hard_swish`, the
    stem, the last conv and blocks from the fourth stage on use HardSwish (as MobileNetV3 does).
    `se` adds squeeze-excite (HardSigmoid gate with hard_swish, else Sigmoid) to every block.
    `kernel_sizes`: one depthwise kernel size, or one per stage (7), or one per block (17).
    """
    b = _Builder(seed)
    late_act = "hswish" if hard_swish else "relu6"
    ks = _per_block(kernel_sizes, MBV2_STAGES)
    cin = _divisible(32 * width)
    x = b.conv_bn("stem", "input", in_channels, cin, 3, stride=2, act=late_act)
    index = 0
    for stage, (t, c, n, s) in enumerate(MBV2_STAGES):
        cout = _divisible(c * width)
        act = late_act if stage >= 3 else "relu6"
        for i in range(n):
            x = _inverted_residual(b, f"block{index}", x, cin, cout, s if i == 0 else 1, t,
                                   ks[index], act, se)
            cin, index = cout, index + 1
    last = last_channels or _divisible(1280 * max(1.0, width))
    x = b.conv_bn("last", x, cin, last, 1, act=late_act)
    y = b.head(x, last, num_classes)
    shape = (batch, in_channels, resolution, resolution)
    return b.model("mobilenet_v2", "input", y, shape, num_classes)


def _inverted_residual(b: _Builder, name: str, x: str, cin: int, cout: int, stride: int,
                       expand: int, k: int, act: str, se: bool) -> str:
    mid = cin * expand
    y = b.conv_bn(f"{name}.expand", x, cin, mid, 1, act=act) if expand != 1 else x
    y = b.conv_bn(f"{name}.dw", y, mid, mid, k, stride=stride, group=mid, act=act)
    if se:
        y = b.squeeze_excite(f"{name}.se", y, mid, hard=act == "hswish")
    residual = stride == 1 and cin == cout
    # A smaller gamma on the residual branch keeps the sum's variance from growing with depth.
    y = b.conv_bn(f"{name}.project", y, mid, cout, 1, act=None, gamma=0.5 if residual else 1.0)
    return b.node("Add", f"{name}.add", [x, y]) if residual else y


@_cached
def resnet(resolution: int = 224, depth: int = 18, width: float = 1.0, num_classes: int = 1000,
           seed: int = 0, in_channels: int = 3, batch: int = 1) -> onnx.ModelProto:
    """A ResNet-style classifier: 7x7/2 stem + 3x3/2 max-pool, four stages `layer1..4`.

    `depth` 10, 18, 34 use basic blocks (two 3x3 convs), 26 and 50 bottleneck blocks (1x1, 3x3,
    1x1 with 4x expansion). The first block of a stage whose stride or channels change has a
    downsample path (1x1 conv with stride + BN) on the shortcut; every block ends in Add + Relu.
    """
    if depth not in _RESNET_LAYERS:
        raise ValueError(f"resnet depth must be one of {sorted(_RESNET_LAYERS)}, got {depth}")
    kind, layers = _RESNET_LAYERS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    b = _Builder(seed)
    cin = _divisible(64 * width)
    x = b.conv_bn("stem", "input", in_channels, cin, 7, stride=2, act="relu")
    x = b.node("MaxPool", "stem.pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    for stage, repeats in enumerate(layers):
        planes = _divisible(64 * 2**stage * width)
        for i in range(repeats):
            stride = 2 if stage > 0 and i == 0 else 1
            x = _resnet_block(b, f"layer{stage + 1}.{i}", x, cin, planes, stride, kind)
            cin = planes * expansion
    y = b.head(x, cin, num_classes)
    shape = (batch, in_channels, resolution, resolution)
    return b.model(f"resnet{depth}", "input", y, shape, num_classes)


def _resnet_block(b: _Builder, name: str, x: str, cin: int, planes: int, stride: int,
                  kind: str) -> str:
    if kind == "basic":
        cout = planes
        y = b.conv_bn(f"{name}.conv1", x, cin, planes, 3, stride=stride, act="relu")
        y = b.conv_bn(f"{name}.conv2", y, planes, cout, 3, act=None, gamma=0.5)
    else:
        cout = planes * 4
        y = b.conv_bn(f"{name}.conv1", x, cin, planes, 1, act="relu")
        y = b.conv_bn(f"{name}.conv2", y, planes, planes, 3, stride=stride, act="relu")
        y = b.conv_bn(f"{name}.conv3", y, planes, cout, 1, act=None, gamma=0.5)
    if stride != 1 or cin != cout:
        x = b.conv_bn(f"{name}.downsample", x, cin, cout, 1, stride=stride, act=None)
    return b.act(f"{name}.relu", b.node("Add", f"{name}.add", [x, y]), "relu")
