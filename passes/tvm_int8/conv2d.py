"""Rule: conv2d of dequantized 8-bit tensors -> integer conv2d accumulating in int32.

Pattern: conv2d(dequantize(x, sx, zx), dequantize(W, sw, 0, axis=0)), NCHW data, OIHW weight;
x any 8-bit activation with one scale and zero point, W an int8 constant with zero points 0 and
one scale per output channel (or one). Dense, grouped and depthwise alike.
Rule: conv(sx * (x - zx), sw * W) = sx * sw[o] * (conv(x, W) - zx * sum(W[o])), where the
padding of the float conv (real 0) is the value zx in x: x is padded with zx explicitly first
(when zx and the padding are non-zero), so every output reads the same window. conv(x, W) is
exact in int32 while the reduction (input channels per group x kernel height x width) is at
most ACC_LIMIT. The int32 offset -zx * sum(W[o]) is kept apart (`Integer.offset`) so the bias
rule can add an int32 bias to it.
Checks (the reason is returned, the conv stays float): layouts, an integer weight that is not a
constant, non-zero weight zero points, per-channel weight scales on an axis other than the
output channels, per-channel activation scales, a reduction too long for int32.
"""
from __future__ import annotations

import numpy as np

from passes.tvm_int8.common import ACC_LIMIT, Integer, dequantized, float_weight

__all__ = ["apply"]


def apply(call, lookup, packed=None) -> Integer | str | None:
    """`packed`: when given (the target has an int8 dot product), a dense conv that fits it is
    emitted through `packed(data, weight, padding, pad value, strides) -> (int32 expression,
    offset)` (packed_conv.py) instead of a relax conv2d."""
    import tvm
    from tvm import relax

    if getattr(call.op, "name", "") != "relax.nn.conv2d":
        return None
    x, w = (dequantized(a, lookup) for a in call.args)
    if w is None and (x is None or float_weight(call.args[1], lookup)):
        return None     # a float kernel (it may read an int8 layer's dequantized output)
    if isinstance(x, str) or isinstance(w, str) or x is None or w is None:
        return (x if isinstance(x, str) else w if isinstance(w, str)
                else "only one operand is dequantized")
    a = call.attrs
    layouts = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        return f"layouts {layouts} (NCHW / OIHW only)"
    weight = w.data.value.numpy() if isinstance(w.data, tvm.ir.expr.Constant) else None
    reason = _check(x, w, weight)
    if reason:
        return reason
    channels = weight.shape[0]
    reduction = int(np.prod(weight.shape[1:]))
    if reduction > ACC_LIMIT:
        return f"reduction of {reduction} products may overflow int32"
    zx = int(x.zero_point.reshape(-1)[0])
    offset = -zx * weight.reshape(channels, -1).astype(np.int64).sum(axis=1)
    scale = np.broadcast_to(x.scale.reshape(-1)[0] * w.scale.reshape(-1), (channels,))
    if packed is not None and int(a.groups) == 1:
        done = packed(x.data, weight, a.padding, zx, a.strides, a.dilation)
        if done is not None:
            acc, shift_offset = done
            return Integer(acc, (offset + shift_offset).astype(np.int32),
                           scale.astype(np.float32), 4, 1)
    data, padding = x.data, [int(p) for p in a.padding]
    if zx and any(padding):
        top, left, bottom, right = padding
        data = relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx))
        padding = [0, 0, 0, 0]
    acc = relax.op.nn.conv2d(data, relax.const(weight, "int8"), a.strides, padding, a.dilation,
                             int(a.groups), "NCHW", "OIHW", "NCHW", "int32")
    return Integer(acc, offset.astype(np.int32), scale.astype(np.float32), 4, 1)


def _check(x, w, weight) -> str | None:
    if weight is None:
        return "the weight is not a constant"
    if w.dtype != "int8":
        return f"{w.dtype} weight (int8 only)"
    if np.any(w.zero_point):
        return "weight zero point is not 0"
    if w.scale.size > 1 and (w.axis != 0 or w.scale.size != weight.shape[0]):
        return f"weight scales along axis {w.axis} (one per output channel only)"
    if x.scale.size != 1 or x.zero_point.size != 1:
        return "per-channel activation scales (one per tensor only)"
    return None
