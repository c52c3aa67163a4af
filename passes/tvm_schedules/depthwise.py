"""Rule: NCHW depthwise conv2d (one input channel per output channel) with its epilogue.

Matches the conv block of conv2d.py whose weight has one input channel per group and as many
output channels as the input has. No input is shared between channels, so the register tile
is `ys` output rows x `cols` pixels of one channel along the vector (the input row is
contiguous along x at stride 1); the kernel window (ry, rx) runs outside it. The padding copy
is a separate loop nest (its conditions out of the window loop), for stride 2 laid out even
columns then odd ones (`deinterleave_pad`: contiguous window loads); the epilogue runs on the
tile; parallel over the tiles.
"""
from __future__ import annotations

from passes.tvm_schedules.common import (
    deinterleave_pad,
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
    if shapes is None or not is_depthwise(sch, block, shapes):
        return False
    stride2 = int(shapes[0].shape[3]) >= 2 * int(shapes[2].shape[3])
    pads = list(sch.get_producers(block))
    for p in pads:
        # the padding stays a loop nest (parallel over rows, a row along the vector): no
        # conditions in the window loop (inlined, they made it 2x slower); for stride 2 its
        # output is deinterleaved (contiguous window loads)
        if stride2 and deinterleave_pad(sch, p, vector_lanes(target)):
            continue
        *rows, last = sch.get_loops(p)
        sch.parallel(sch.fuse(*rows))
        sch.vectorize(last)
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
