"""Rule: the packed integer conv (passes/tvm_int8/packed_conv.py) tensorized with the target's
int8 dot product (dot_products.py: x86 `vpdpbusd`, aarch64 `sdot`).

Matches a reduction block out[n, o, y, x] += A[n, cb, y', x', ci] * B[o / lanes, cb, ky, kx,
o % lanes, ci] (8-bit A, int8 B, int32 out; innermost reduction of 4 = the instruction's k).
Schedule: output channels split into blocks of `lanes` (one vector of int32 accumulators); a
register tile of `rows` channel blocks x `ys` rows x `cols` pixels of accumulators (within the
register budget), the reductions (cb, ky, kx) outside it, each (lanes x 4) step one dot-product
instruction. The accumulator tile is laid out pixel-major (the lanes contiguous) and written
back, with the fused epilogue (offset, scale, requantization), into the NCHW output. Parallel
over the tiles. Rows per tile: two vectors of 16 channels on x86 (operands: 2 weight vectors +
1 broadcast per pixel), four of 4 on aarch64; rules of thumb of the register file, not tuned on
any model.
"""
from __future__ import annotations

from passes.tvm_schedules.common import (
    block_loops_match,
    divisors,
    fuse_epilogue,
    inline_epilogue,
    region_buffer,
    register_budget,
)
from passes.tvm_schedules.dot_products import dot_products

__all__ = ["apply"]


def apply(sch, block, target) -> bool:
    dot = next((d for d in dot_products(target) if _matches(sch, block, d)), None)
    if dot is None:
        return False
    n, o, y, x, cb, ky, kx, ci = sch.get_loops(block)
    budget = register_budget(target)
    blocks = int(sch.get(o).extent) // dot.lanes
    height, width = int(sch.get(y).extent), int(sch.get(x).extent)
    rows = max(d for d in divisors(blocks) if d <= max(1, 32 // dot.lanes) and d <= 4)
    cols = _pixels(width, budget // rows)
    ys = max(d for d in divisors(height) if rows * d * cols <= budget)
    o_b, o_l = sch.split(o, [None, dot.lanes])
    ob_o, ob_i = sch.split(o_b, [None, rows])
    y_o, y_i = sch.split(y, [None, ys])
    x_o, x_i = sch.split(x, [None, cols])
    inline_epilogue(sch, block)
    wb = sch.cache_write(block, 0, "local")
    fuse_epilogue(sch, wb)
    sch.transform_layout(block, ("write", 0), _channels_last())
    sch.reorder(n, ob_o, y_o, x_o, cb, ky, kx, ob_i, y_i, x_i, o_l, ci)
    fused = sch.fuse(n, ob_o, y_o, x_o)
    sch.parallel(fused)
    sch.reverse_compute_at(wb, fused)
    init = sch.decompose_reduction(block, cb)
    for lp in (ob_i, y_i, x_i):
        sch.unroll(lp)
    sch.tensorize(o_l, dot.intrinsic)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(wb)[-1])
    return True


def _pixels(width: int, most: int) -> int:
    """Pixels per tile: the largest power-of-two divisor of the width up to `most` (the
    write-back is vectorized along them: LLVM splits other lengths badly), else the largest
    divisor up to `most`."""
    fits = [d for d in divisors(width) if d <= most]
    return max([d for d in fits if d & (d - 1) == 0 and d >= 4] or fits)


def _matches(sch, block, dot) -> bool:
    blk = sch.get(block)
    if [int(iv.iter_type) for iv in blk.iter_vars] != [0] * 4 + [2] * 4:
        return False
    if len(blk.reads) != 2 or len(blk.writes) != 1 or not block_loops_match(sch, block):
        return False
    a, b = (region_buffer(r) for r in blk.reads)
    out = region_buffer(blk.writes[0])
    return (len(a.shape) == 5 and int(a.shape[-1]) == 4 and str(a.dtype) == dot.dtype
            and len(b.shape) == 6 and str(b.dtype) == "int8"
            and int(b.shape[-2]) == dot.lanes and int(b.shape[-1]) == 4
            and str(out.dtype) == "int32" and int(out.shape[1]) % dot.lanes == 0)


def _channels_last():
    from tvm.tirx import IndexMap, Var

    n, o, y, x = (Var(k, "int64") for k in "noyx")
    return IndexMap([n, o, y, x], [n, y, x, o], None)
