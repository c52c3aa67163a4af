"""Rule: dense / matmul (2-D output, one reduction) with its epilogue (bias, activation).

out[i, j] = sum_k A[i, k] * B[k, j]: a register tile of `rows` rows of i x `cols` of j along
the vector (pick_tile), k outside it; every row reuses one vector load of B, every column one
broadcast of A. Parallel over the tiles.
"""
from __future__ import annotations

from passes.tvm_schedules.common import (
    block_loops_match,
    pick_tile,
    register_budget,
    split_roles,
    tile_reduction,
    vector_lanes,
)

__all__ = ["apply"]


def apply(sch, block, target) -> bool:
    if not block_loops_match(sch, block):
        return False
    spatial, reduce = split_roles(sch, block)
    if len(spatial) < 2 or len(reduce) != 1:
        return False
    *batch, i, j = spatial
    rows_total, cols_total = int(sch.get(i).extent), int(sch.get(j).extent)
    tile = pick_tile(rows_total, 1, cols_total, vector_lanes(target), register_budget(target))
    i_o, i_i = sch.split(i, [None, tile.rows])
    j_o, j_i = sch.split(j, [None, tile.cols])
    tile_reduction(sch, block, [*batch, i_o, j_o], reduce, [i_i, j_i])
    return True
