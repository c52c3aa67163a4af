"""Rule: a dense integer conv2d on a target with a 4-way int8 dot product -> packed conv.

Pre-condition: the conv2d rule proved the conv (8-bit activations x int8 constant weights,
int32 accumulation); it is dense (one group), not dilated, and its output channels are a
multiple of one of the dot products' lanes (passes/tvm_schedules/dot_products.py: 16 or 8
for x86 VNNI, 4 for aarch64 sdot).
Rule: two TE functions replace the relax conv2d.
- `pack_int8`: the input as [n, c / 4, y, x, c % 4] (four input channels of a pixel
  contiguous: the instruction's A operand), padded (with the conv's padding value; channels up
  to a multiple of 4 with anything: their weights are 0) and shifted by `shift` into the
  instruction's activation type (uint8 -> int8 for sdot: x - 128);
- `conv2d_packed`: out[n, o, y, x] = sum over (c / 4, ky, kx, c % 4) of packed * Wp with the
  constant weight laid out once, at build time, as [o / lanes, c / 4, ky, kx, o % lanes, c % 4]
  (lanes output channels x 4 input channels contiguous: the instruction's B operand).
Since every window has all its taps, sum((x + shift) * W) = sum(x * W) + shift * sum(W[o]):
the caller's int32 offset gets -shift * sum(W[o]). Post-condition: the same int32 values as
the conv2d it replaces (exact), NCHW output, so the conv's epilogue fuses as before; the schedule
rule `passes/tvm_schedules/packed_conv.py` tensorizes it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["emit", "pack_weight"]

SHIFT = {("uint8", "int8"): -128, ("int8", "uint8"): 128}




def pack_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """OIHW int8 -> [O / lanes, C4, KH, KW, lanes, 4], input channels padded with zeros."""
    out_c, in_c, kh, kw = weight.shape
    c4 = -(-in_c // 4)
    padded = np.zeros((out_c, c4 * 4, kh, kw), np.int8)
    padded[:, :in_c] = weight
    blocks = padded.reshape(out_c // lanes, lanes, c4, 4, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def emit(builder, dots, data, weight: np.ndarray, padding, pad_value: int, strides, dilation):
    """Emit the packed conv of `data` (an 8-bit NCHW relax expression) with the OIHW int8
    `weight` for the widest of `dots` whose lanes divide the output channels; returns (int32
    NCHW relax expression, int32 offset to add per output channel), or None when the conv does
    not fit (dilated, or output channels of no lane count)."""
    from tvm import relax

    dot = next((d for d in dots if weight.shape[0] % d.lanes == 0), None)
    if dot is None or any(int(d) != 1 for d in dilation):
        return None
    dtype = str(data.ty.dtype)
    shift = SHIFT.get((dtype, dot.dtype), 0)
    c4 = -(-weight.shape[1] // 4)
    packed = builder.emit_te(_pack, data, c4, [int(p) for p in padding], pad_value + shift,
                             shift, dot.dtype, primfunc_name_hint="pack_int8")
    wp = relax.const(pack_weight(weight, dot.lanes), "int8")
    acc = builder.emit_te(_conv, packed, wp, weight.shape[0], [int(s) for s in strides],
                          dot.lanes, primfunc_name_hint="conv2d_packed")
    offset = -shift * weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1)
    return acc, offset


def _pack(data, c4: int, padding, pad_value: int, shift: int, dtype: str):
    import tvm
    from tvm import te, tirx

    n_, c_, h_, w_ = (int(d) for d in data.shape)
    top, left, bottom, right = padding

    def value(n, cb, y, x, ci):
        c, yy, xx = cb * 4 + ci, y - top, x - left
        inside = tirx.all(c < c_, yy >= 0, yy < h_, xx >= 0, xx < w_)
        read = data[n, tirx.min(c, c_ - 1), tirx.max(tirx.min(yy, h_ - 1), 0),
                    tirx.max(tirx.min(xx, w_ - 1), 0)]
        shifted = (read.astype("int32") + shift).astype(dtype) if shift else read.astype(dtype)
        return tirx.if_then_else(inside, shifted, tvm.tirx.const(pad_value, dtype))

    return te.compute((n_, c4, h_ + top + bottom, w_ + left + right, 4), value,
                      name="pack_int8")


def _conv(packed, wp, out_channels: int, strides, lanes: int):
    from tvm import te

    n_, c4, hp, wp_ = (int(d) for d in packed.shape[:4])
    kh_, kw_ = int(wp.shape[2]), int(wp.shape[3])
    sy, sx = strides
    oh, ow = (hp - kh_) // sy + 1, (wp_ - kw_) // sx + 1
    cb = te.reduce_axis((0, c4), "cb")
    ky = te.reduce_axis((0, kh_), "ky")
    kx = te.reduce_axis((0, kw_), "kx")
    ci = te.reduce_axis((0, 4), "ci")
    return te.compute(
        (n_, out_channels, oh, ow),
        lambda n, o, y, x: te.sum(
            packed[n, cb, y * sy + ky, x * sx + kx, ci].astype("int32")
            * wp[o // lanes, cb, ky, kx, o % lanes, ci].astype("int32"), axis=[cb, ky, kx, ci]),
        name="conv2d_packed")
