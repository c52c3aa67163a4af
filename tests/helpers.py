"""Test helpers shared across test modules (plain functions, no fixtures magic)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(LIGHT_DIR.glob("light_*.onnx"))


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy whose weights are seeded random values of sensible scale (the onnx light models
    ship all-constant weights, which make every output uniform). ConstantOfShape weights are
    replaced by random initializers of their shape.

    Each weight is drawn once and written once (no zero-filled placeholder, no copy back to
    numpy): light_vgg19's 143 M weights are the slow part of its round-trip test."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = max(model.ir_version, 4)  # IR 3 would want new weights listed as inputs
    g = model.graph
    var_inputs = {n.input[4] for n in g.node if n.op_type == "BatchNormalization"}
    inits = {i.name: i for i in g.initializer}
    for node in list(g.node):
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = numpy_helper.to_array(inits[node.input[0]]).astype(int).tolist()
            g.initializer.add(name=node.output[0], dims=shape, data_type=TensorProto.FLOAT)
            g.node.remove(node)
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        shape = tuple(init.dims)
        if init.name in var_inputs:
            new = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) >= 2 else 200
            new = rng.standard_normal(shape, dtype=np.float32)
            new *= np.float32(np.sqrt(2.0 / max(fan_in, 1)))
        name = init.name
        init.Clear()
        init.name, init.data_type = name, TensorProto.FLOAT
        init.dims.extend(shape)
        init.raw_data = new.astype("<f4", copy=False).tobytes()
    return model


def run_ort(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` (a proto or its serialized bytes) in onnxruntime: 1 thread, no graph
    optimizations."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, shapes: dict | None = None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        if shapes and vi.name in shapes:
            dims = list(shapes[vi.name])
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds
