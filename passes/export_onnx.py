"""IR -> ONNX. The exported model passes onnx.checker and computes what the IR describes.

Nodes are written in the IR's deterministic topological order; weights as initializers; graph
inputs/outputs with their shapes; intermediate shapes as value_info when `with_shapes` is set.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.ir import Graph, TensorInfo

__all__ = ["export_onnx", "to_value_info", "attribute_proto"]

logger = logging.getLogger(__name__)


def _elem_type(dtype: str) -> int:
    if dtype == "unknown":
        return onnx.TensorProto.UNDEFINED
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def to_value_info(name: str, info: TensorInfo | None) -> onnx.ValueInfoProto:
    if info is None:
        return helper.make_empty_tensor_value_info(name)
    shape = None if info.shape is None else [d if d is not None else None for d in info.shape]
    return helper.make_tensor_value_info(name, _elem_type(info.dtype), shape)


def attribute_proto(name: str, value, attr_type: int | None = None) -> onnx.AttributeProto:
    """One IR attribute value as an AttributeProto (inverse of import's conversion)."""
    if isinstance(value, onnx.AttributeProto):
        out = onnx.AttributeProto()
        out.CopyFrom(value)
        out.name = name
        return out
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, str):
        value = value.encode()
    elif isinstance(value, list) and value and isinstance(value[0], str):
        value = [v.encode() for v in value]
    return helper.make_attribute(name, value, attr_type=attr_type or None)


def export_onnx(graph: Graph, with_shapes: bool = False,
                weights: bool = True) -> onnx.ModelProto:
    """The IR as a ModelProto. `weights=False` writes large weights as typed graph inputs
    instead (for shape inference, which needs their shapes, not their bytes)."""
    nodes = []
    for name in graph.topo():
        d = graph.node(name)
        types = d.get("attr_types", {})
        node = helper.make_node(d["op_type"], d["inputs"], d["outputs"], name=name,
                                domain=d["domain"] or None)
        node.attribute.extend(attribute_proto(k, v, types.get(k)) for k, v in d["attrs"].items())
        nodes.append(node)
    small = {k: v for k, v in graph.initializers.items() if weights or np.size(v) <= 4096}
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in small.items()]
    inputs = [to_value_info(t, graph.tensors.get(t)) for t in graph.inputs]
    inputs += [helper.make_tensor_value_info(k, _elem_type(v.dtype.name), v.shape)
               for k, v in graph.initializers.items() if k not in small]
    outputs = [to_value_info(t, graph.tensors.get(t)) for t in graph.outputs]
    value_info = []
    if with_shapes:
        io = set(graph.inputs) | set(graph.outputs) | set(graph.initializers)
        value_info = [to_value_info(t, i) for t, i in graph.tensors.items()
                      if t not in io and i.shape is not None and graph.producer(t)]
    g = helper.make_graph(nodes, graph.name, inputs, outputs, inits, value_info=value_info)
    opsets = [helper.make_opsetid(dom, ver) for dom, ver in sorted(graph.opset.items())]
    model = helper.make_model(g, opset_imports=opsets, producer_name="fleetc")
    # IR < 4 wants every initializer listed as a graph input; 4 lifts that and changes nothing else
    model.ir_version = max(graph.ir_version, 4)
    return model
