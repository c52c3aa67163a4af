"""Rule: a bias add after an integer conv2d / matmul -> an int32 bias in the accumulator.

Pattern: add(Y, B) with Y the real value of an integer rule's accumulator (`Integer`, scale
sx * sw[c] per channel c) and B = dequantize(b, sb, 0) of an int32 constant with one value per
channel (reshaped to broadcast along Y's channel axis, as the frontend does for a Conv bias),
where sb[c] = sx * sw[c] (onnxruntime's QDQ quantizer writes the bias so).
Rule: Y + B = sx * sw[c] * (acc + offset[c] + b[c]): b joins the int32 offset; exact while
offset + b stays in int32.
Otherwise (another bias scale, a float bias, another add) nothing matches: the add stays a
float add in the kernel's epilogue, which is exact too, so this is no failure to report.
"""
from __future__ import annotations

import numpy as np

from passes.tvm_int8.common import Integer, bound, dequantized

__all__ = ["apply"]

_INT32 = np.iinfo(np.int32)


def apply(call, lookup, integers: dict) -> Integer | None:
    """`integers`: relax variable -> the Integer it is the real value of."""
    from tvm import relax

    if getattr(call.op, "name", "") != "relax.add":
        return None
    for y, b in (call.args, call.args[::-1]):
        value = integers.get(y) if isinstance(y, relax.Var) else None
        if value is None:
            continue
        bias = _bias(b, lookup, value)
        if bias is None:
            continue
        offset = value.offset.astype(np.int64) + bias
        if offset.min() < _INT32.min or offset.max() > _INT32.max:
            continue
        return Integer(value.acc, offset.astype(np.int32), value.scale, value.ndim, value.axis)
    return None


def _bias(expr, lookup, value: Integer) -> np.ndarray | None:
    """The int32 bias per channel B holds, when it broadcasts along `value`'s channel axis with
    `value`'s scales; else None."""
    import tvm
    from tvm import relax

    shape = [int(d) for d in expr.ty.shape]
    channels = value.scale.size
    want = [1] * value.ndim
    want[value.axis] = channels
    if len(shape) > value.ndim or [1] * (value.ndim - len(shape)) + shape != want:
        return None
    node = bound(expr, lookup)
    if isinstance(node, relax.Call) and getattr(node.op, "name", "") == "relax.reshape":
        node = node.args[0]
    b = dequantized(node, lookup, ("int32",))
    if b is None or isinstance(b, str) or not isinstance(b.data, tvm.ir.expr.Constant):
        return None
    data = b.data.value.numpy().reshape(-1)
    if data.size != channels or np.any(b.zero_point):
        return None
    scale = np.broadcast_to(b.scale.reshape(-1), (channels,))
    if not np.allclose(scale, value.scale, rtol=1e-6, atol=0):
        return None
    return data.astype(np.int64)
