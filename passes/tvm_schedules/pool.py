"""Rule: pooling and other plain reductions (max / average pool, global average pool, mean)
with their epilogue.

Matches any reduction block whose loops are its iteration variables. The last spatial loop
(contiguous in the output) is split into `cols` (pick_cols) and vectorized, the reductions
run outside it, the other spatial loops are fused and parallel. A padding producer is
inlined (pooling windows are small).
"""
from __future__ import annotations

from passes.tvm_schedules.common import (
    block_loops_match,
    pick_cols,
    split_roles,
    tile_reduction,
    vector_lanes,
)

__all__ = ["apply"]


def apply(sch, block, target) -> bool:
    if not block_loops_match(sch, block):
        return False
    for p in sch.get_producers(block):
        try:
            sch.compute_inline(p)
        except Exception:  # noqa: BLE001 - a producer that cannot be inlined stays
            pass
    spatial, reduce = split_roles(sch, block)
    if not spatial:
        return False
    last = spatial[-1]
    extent = int(sch.get(last).extent)
    cols = extent if extent <= 8 * vector_lanes(target) else pick_cols(extent, vector_lanes(target))
    col_o, col_i = sch.split(last, [None, cols])
    tile_reduction(sch, block, [*spatial[:-1], col_o], reduce, [col_i])
    return True
