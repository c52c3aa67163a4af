"""Block skipping: a residual block `y = x + f(x)` becomes the identity `y = x`.

Rule: the block is named by its Add node (as `discover_space.skippable_blocks` names it); the
Add's readers (and graph outputs) read `x` instead, and the Add and the nodes of `f` - which
read nothing but `x`, weights and each other - are removed with the weights only they used.
Pre-condition: the block is skippable (equal shapes, `f` private to the block), else
BadInputError naming it and the skippable blocks. Post-condition: shapes of every remaining
tensor unchanged; facts "kernels"/"costs"/"space" are stale.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from passes.discover_space import skippable_blocks
from toolchain.errors import BadInputError
from toolchain.ir import Graph
from toolchain.pipeline import Pass, PassContext, PassResult

__all__ = ["SkipBlocksPass", "skip_block"]

logger = logging.getLogger(__name__)


def skip_block(graph: Graph, name: str) -> int:
    """Bypass one block; returns the number of nodes removed."""
    blocks = skippable_blocks(graph)
    if name not in blocks:
        raise BadInputError(f"block {name!r} is not a skippable residual block of this model "
                            f"(skippable: {sorted(blocks)})")
    nodes = set(blocks[name])
    add = graph.node(name)
    identity = next(t for t in add["inputs"] if graph.producer(t) not in nodes)
    out = add["outputs"][0]
    if out in graph.outputs and identity in graph.outputs:
        raise BadInputError(f"block {name!r}: skipping it would make one tensor two outputs")
    graph.replace_uses(out, identity)
    for n in nodes:
        for t in graph.node(n)["outputs"]:
            graph.tensors.pop(t, None)
        graph.remove_node(n)
    graph.remove_unused()
    return len(nodes)


@dataclass
class SkipBlocksPass(Pass):
    """Replace residual blocks named in the plan by their identity path."""

    name = "skip_blocks"
    requires = frozenset({"shapes"})
    invalidates = frozenset({"kernels", "costs", "space"})
    blocks: tuple[str, ...] = ()  # names of the blocks' Add nodes

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = sum(skip_block(graph, b) for b in self.blocks)
        return PassResult(changed=bool(self.blocks),
                          stats={"blocks_removed": len(self.blocks), "nodes_removed": removed})
