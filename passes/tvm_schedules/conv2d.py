"""Rule: NCHW conv2d (dense kxk, 1x1, grouped) with its fused elementwise epilogue.

Matches a reduction block with spatial loops (n, f, y, x) and reduction loops (rc, ry, rx)
writing a 4-D output from a 4-D input and a 4-D weight whose reduction channel extent is above
one or whose output channel count differs from the input's (depthwise is depthwise.py).
Schedule: the padding copy is inlined when it pads nothing; a register tile of `rows` output
channels x `cols` contiguous output pixels (the row of x, or the whole H*W plane of a 1x1
stride-1 conv, fused) holds the accumulators; the reductions run outside it; every output
channel of a tile reuses one vector load of the input, every input pixel one broadcast weight.
The epilogue runs on the tile as it leaves the registers; parallel over the tiles.
"""
from __future__ import annotations

from passes.tvm_schedules.common import (
    block_loops_match,
    deinterleave_pad,
    divisors,
    inline_copies,
    p_alive,
    pick_tile,
    region_buffer,
    register_budget,
    schedule_injective,
    tile_reduction,
    vector_lanes,
)

__all__ = ["apply", "channel_vector", "conv_shape", "is_depthwise", "sweep"]


def conv_shape(sch, block):
    """(data, weight, output) buffers of an NCHW conv block, or None when it is not one."""
    blk = sch.get(block)
    if len(blk.iter_vars) != 7 or [int(iv.iter_type) for iv in blk.iter_vars] != [0] * 4 + [2] * 3:
        return None
    if len(blk.reads) != 2 or len(blk.writes) != 1 or not block_loops_match(sch, block):
        return None
    data, weight = (region_buffer(r) for r in blk.reads)
    out = region_buffer(blk.writes[0])
    if len(data.shape) != 4 or len(weight.shape) != 4 or len(out.shape) != 4:
        return None
    return data, weight, out


def apply(sch, block, target) -> bool:
    shapes = conv_shape(sch, block)
    if shapes is None or is_depthwise(sch, block, shapes):
        return False
    pads = list(sch.get_producers(block))
    inline_copies(sch, block)
    data, weight, out = conv_shape(sch, block) or shapes
    n, f, y, x, *reduce = sch.get_loops(block)
    lanes = vector_lanes(target)
    budget = register_budget(target)
    channels, height, width = (int(d) for d in out.shape[1:])
    reduction = 1
    for lp in reduce:
        reduction *= int(sch.get(lp).extent)
    cols = pixel_vector(width, reduction, lanes)
    if cols:
        # pixels along the vector: every output channel of the tile reuses one vector load of
        # the input, every pixel one broadcast weight
        tile = pick_tile(channels, 1, cols, lanes, budget)
        f_o, f_i = sch.split(f, [None, tile.rows])
        x_o, x_i = sch.split(x, [None, tile.cols])
        tile_reduction(sch, block, sweep(data, weight, n, f_o, y, x_o), reduce, [f_i, x_i])
    else:
        # output channels along the vector (laid out last in the accumulators), a block of
        # pixels broadcast into it: any plane size fills whole vectors
        fv = channel_vector(channels, lanes)
        vregs = -(-fv // lanes)
        xs = max(d for d in divisors(width) if d * vregs <= budget)
        ys = max(d for d in divisors(height) if d * xs * vregs <= budget)
        f_o, f_v = sch.split(f, [None, fv])
        y_o, y_i = sch.split(y, [None, ys])
        x_o, x_i = sch.split(x, [None, xs])
        tile_reduction(sch, block, sweep(data, weight, n, f_o, y_o, x_o), reduce,
                       [y_i, x_i, f_v], vector_axis=1)
    stride2 = int(data.shape[3]) >= 2 * width
    for p in pads:
        if p_alive(sch, p) and not (cols and stride2 and deinterleave_pad(sch, p, lanes)):
            schedule_injective(sch, p, lanes)
    return True


def sweep(data, weight, n, f_o, y_o, x_o) -> list:
    """The order of the outer (parallel) tile loops: rows outermost when the input is larger
    than the weight (each row's inputs stay in cache while every output channel tile uses
    them: a 3x3 conv 64->64 at 224x224 ran 2.3x faster than with channel tiles outermost,
    which read the whole input again per tile), else channel tiles outermost (each one's slice
    of the weight stays in cache; 512->512 at 28x28)."""
    size = 1
    for d in data.shape:
        size *= int(d)
    wsize = 1
    for d in weight.shape:
        wsize *= int(d)
    return [n, y_o, f_o, x_o] if size > wsize else [n, f_o, y_o, x_o]


def pixel_vector(width: int, reduction: int, lanes: int) -> int | None:
    """Pixels per register tile when pixels go along the vector, or None for the channel path:
    the output width's largest divisor up to four vectors that is a multiple of the vector;
    with a short reduction (< 8 vectors of inputs per output, e.g. 24 channels of a 1x1 conv,
    where the channel path's scattered stores cost as much as the sums), half a vector
    when that divides the width."""
    whole = [d for d in divisors(width) if d % lanes == 0 and d <= 4 * lanes]
    if whole:
        return max(whole)
    half = lanes // 2
    if reduction < 8 * lanes and half >= 4 and width % half == 0:
        return half
    return None


def channel_vector(channels: int, lanes: int) -> int:
    """Output channels per vector on the channel path: 2, 1, 1/2 or 1/4 of a vector when that
    divides the channel count, else its largest divisor up to two vectors (10 classes: 10)."""
    for v in (8, 4, 2, 1):
        if v * lanes // 4 >= 1 and channels % (v * lanes // 4) == 0:
            return v * lanes // 4
    return max(d for d in divisors(channels) if d <= 2 * lanes)


def is_depthwise(sch, block, shapes) -> bool:
    """One input channel per output channel (the block's channel reduction has extent 1, the
    OIHW weight one input channel), as many outputs as inputs (depthwise.py)."""
    data, weight, out = shapes
    reduce = [iv for iv in sch.get(block).iter_vars if int(iv.iter_type) == 2]
    return int(reduce[0].dom.extent) == 1 and int(weight.shape[1]) == 1 and \
        int(out.shape[1]) > 1 and int(data.shape[1]) == int(out.shape[1]) == int(weight.shape[0])
