"""Rule: NCHW depthwise conv2d (one input channel per output channel) with its epilogue.

Matches the conv block of conv2d.py whose weight has one input channel per group and as many
output channels as the input has. No input is shared between channels, so the register tile
is `ys` output rows x `cols` pixels of one channel along the vector (the input row is
contiguous along x at stride 1); the kernel window (ry, rx) runs outside it. The padding copy
stays a separate vectorized loop nest; the epilogue runs on the tile; parallel over the tiles.
"""
from __future__ import annotations

from passes.tvm_schedules.common import (
    divisors,
    pick_cols,
    register_budget,
    tile_reduction,
    vector_lanes,
)
from passes.tvm_schedules.conv2d import conv_shape, is_depthwise

__all__ = ["apply"]


def apply(sch, block, target) -> bool:
    shapes = conv_shape(sch, block)
    if shapes is None or not is_depthwise(shapes):
        return False
    for p in sch.get_producers(block):
        sch.compute_inline(p)
    n, f, y, x, *reduce = sch.get_loops(block)
    lanes = vector_lanes(target)
    height, width = (int(d) for d in shapes[2].shape[2:])
    cols = width if width <= 8 * lanes else pick_cols(width, lanes)
    vregs = -(-cols // lanes)
    ys = max(d for d in divisors(height) if d * vregs <= min(8, register_budget(target)))
    y_o, y_i = sch.split(y, [None, ys])
    x_o, x_i = sch.split(x, [None, cols])
    tile_reduction(sch, block, [n, f, y_o, x_o], reduce, [y_i, x_i])
    return True
