"""The graph IR: an ONNX graph held as a networkx.MultiDiGraph.

Nodes are operators keyed by a unique, deterministic name; node data holds `op_type`,
`domain`, `attrs` (ONNX attribute names; tensor attributes as numpy arrays, subgraph
attributes kept as `onnx.AttributeProto`), `inputs`/`outputs` (tensor names, "" for an omitted
optional input), `meta` (annotations of passes, namespaced "<pass>.<key>") and `order` (the
position used to break ties in the topological order, so exports are deterministic).
Edges go from a tensor's producer to each consumer, keyed by the tensor name, and carry
`tensor`, `shape` and `dtype`. Weights live in `initializers`; every value has a `TensorInfo`.
"""
from __future__ import annotations

import copy as _copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from toolchain.errors import FleetcError

if TYPE_CHECKING:
    from toolchain.space import Kernel, Space

__all__ = ["Graph", "TensorInfo", "IRError"]

logger = logging.getLogger(__name__)


class IRError(FleetcError):
    """The IR broke an invariant (a bug in a pass, exit 1)."""


@dataclass(frozen=True)
class TensorInfo:
    """Static facts of a value: shape (None if unknown, dims may be str if symbolic), dtype."""

    shape: tuple | None
    dtype: str

    @property
    def known(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.known else 0

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize if self.dtype != "unknown" else 0


class Graph:
    """One ONNX graph: operators, tensors, weights, graph inputs/outputs and opset."""

    def __init__(self) -> None:
        self.nx = nx.MultiDiGraph()
        self.initializers: dict[str, np.ndarray] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.opset: dict[str, int] = {"": 17}
        self.ir_version: int = 8
        self.name: str = "graph"
        self.meta: dict = {}                 # node-independent annotations of passes
        self.notes: list[str] = []           # import_onnx: what it assumed (e.g. batch 1)
        self.source: str | None = None       # import_onnx: where the model came from
        self.kernels: list[Kernel] | None = None   # group_kernels (None: not analyzed)
        self.space: Space | None = None             # discover_space (None: not analyzed)
        self._producer: dict[str, str] = {}
        self._next_order = 0

    # --- queries -------------------------------------------------------------------------
    def node(self, name: str) -> dict:
        return self.nx.nodes[name]

    def op(self, name: str) -> str:
        return self.nx.nodes[name]["op_type"]

    def __contains__(self, name: str) -> bool:
        return name in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def topo(self) -> list[str]:
        """Node names in topological order; ties broken by import/insertion order."""
        order = nx.get_node_attributes(self.nx, "order")
        return list(nx.lexicographical_topological_sort(self.nx, key=lambda n: order[n]))

    def producer(self, tensor: str) -> str | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[str]:
        """Nodes reading `tensor`, in insertion order, each once."""
        src = self._producer.get(tensor)
        if src is not None:
            users = {v for _, v, k in self.nx.out_edges(src, keys=True) if k == tensor}
        else:
            users = {n for n, d in self.nx.nodes(data=True) if tensor in d["inputs"]}
        return sorted(users, key=lambda n: self.nx.nodes[n]["order"])

    def shape(self, tensor: str) -> tuple | None:
        info = self.tensors.get(tensor)
        return info.shape if info else None

    def dtype(self, tensor: str) -> str:
        info = self.tensors.get(tensor)
        return info.dtype if info else "unknown"

    def is_weight(self, tensor: str) -> bool:
        return tensor in self.initializers

    def fresh_name(self, prefix: str) -> str:
        """A name used by no node and no tensor."""
        used = lambda s: s in self.nx or s in self.tensors or s in self._producer  # noqa: E731
        if not used(prefix):
            return prefix
        i = 1
        while used(f"{prefix}_{i}"):
            i += 1
        return f"{prefix}_{i}"

    # --- edits ---------------------------------------------------------------------------
    def add_node(self, name: str, op_type: str, inputs: list[str], outputs: list[str],
                 attrs: dict | None = None, domain: str = "", meta: dict | None = None,
                 order: float | None = None) -> str:
        if name in self.nx:
            raise IRError(f"node name {name!r} is already used")
        for t in outputs:
            if t and t in self._producer:
                raise IRError(f"tensor {t!r} already has a producer ({self._producer[t]})")
        if order is None:
            order = self._next_order
        self._next_order = max(self._next_order, int(order)) + 1
        self.nx.add_node(name, op_type=op_type, domain=domain, attrs=dict(attrs or {}),
                         inputs=list(inputs), outputs=list(outputs), meta=dict(meta or {}),
                         order=order)
        for t in outputs:
            if t:
                self._producer[t] = name
                for user in self.consumers(t):
                    self._link(name, user, t)
        for t in inputs:
            src = self._producer.get(t)
            if t and src is not None and src != name:
                self._link(src, name, t)
        return name

    def remove_node(self, name: str) -> None:
        for t in self.nx.nodes[name]["outputs"]:
            if self._producer.get(t) == name:
                del self._producer[t]
        self.nx.remove_node(name)

    def set_input(self, node: str, index: int, tensor: str) -> None:
        """Make input `index` of `node` read `tensor` (edges updated)."""
        data = self.nx.nodes[node]
        old = data["inputs"][index]
        data["inputs"][index] = tensor
        if old not in data["inputs"]:
            src = self._producer.get(old)
            if src is not None and self.nx.has_edge(src, node, key=old):
                self.nx.remove_edge(src, node, key=old)
        src = self._producer.get(tensor)
        if tensor and src is not None:
            self._link(src, node, tensor)

    def replace_uses(self, old: str, new: str) -> None:
        """Every reader of `old` (and the graph outputs) reads `new` instead."""
        for user in self.consumers(old):
            ins = self.nx.nodes[user]["inputs"]
            for i, t in enumerate(ins):
                if t == old:
                    self.set_input(user, i, new)
        self.outputs = [new if t == old else t for t in self.outputs]

    def remove_unused(self) -> int:
        """Drop nodes whose outputs nobody reads and unused initializers; returns nodes removed."""
        removed = 0
        changed = True
        while changed:
            changed = False
            for n in self.topo()[::-1]:
                outs = [t for t in self.nx.nodes[n]["outputs"] if t]
                if any(t in self.outputs or self.consumers(t) for t in outs):
                    continue
                self.remove_node(n)
                for t in outs:
                    self.tensors.pop(t, None)
                removed += 1
                changed = True
        read = {t for _, d in self.nx.nodes(data=True) for t in d["inputs"]} | set(self.outputs)
        for w in [w for w in self.initializers if w not in read]:
            del self.initializers[w]
            self.tensors.pop(w, None)
        return removed

    def _link(self, src: str, dst: str, tensor: str) -> None:
        if not self.nx.has_edge(src, dst, key=tensor):
            info = self.tensors.get(tensor)
            self.nx.add_edge(src, dst, key=tensor, tensor=tensor,
                             shape=info.shape if info else None,
                             dtype=info.dtype if info else "unknown")

    def refresh_edges(self) -> None:
        """Copy tensor shapes/dtypes onto edges after shape inference."""
        for _, _, key, data in self.nx.edges(keys=True, data=True):
            info = self.tensors.get(key)
            data["shape"] = info.shape if info else None
            data["dtype"] = info.dtype if info else "unknown"

    # --- whole-graph ---------------------------------------------------------------------
    def copy(self) -> Graph:
        return _copy.deepcopy(self)

    def assign(self, new: Graph) -> None:
        """Make this graph (the caller's object) hold `new`'s contents: a pass that rebuilds the
        graph through another tool (onnxruntime's quantizer, the fp16 converter) edits in place.
        What `new` does not carry (import notes, source, meta) is kept; analysis results go."""
        self.nx, self.initializers, self.tensors = new.nx, new.initializers, new.tensors
        self.inputs, self.outputs, self.opset = new.inputs, new.outputs, new.opset
        self.ir_version, self.name = new.ir_version, new.name
        self.meta = {**self.meta, **new.meta}
        self.kernels, self.space = new.kernels, new.space
        self._producer, self._next_order = new._producer, new._next_order

    def validate(self) -> None:
        """Raise IRError if an invariant is broken: names, producers, edges, acyclicity."""
        if not nx.is_directed_acyclic_graph(self.nx):
            raise IRError("the graph has a cycle")
        available = set(self.inputs) | set(self.initializers) | {""}
        for n in self.topo():
            d = self.nx.nodes[n]
            for t in d["inputs"]:
                if t not in available:
                    raise IRError(f"node {n!r} reads {t!r}, which nothing produces before it")
                src = self._producer.get(t)
                if src is not None and not self.nx.has_edge(src, n, key=t):
                    raise IRError(f"edge {src} -> {n} for tensor {t!r} is missing")
            for t in d["outputs"]:
                if t and self._producer.get(t) != n:
                    raise IRError(f"tensor {t!r} of node {n!r} has a different producer")
                available.add(t)
        for t in self.outputs:
            if t not in available:
                raise IRError(f"graph output {t!r} is not produced")
