"""Rule: matmul of a dequantized 8-bit activation and a dequantized int8 constant -> integer
matmul accumulating in int32 (ONNX Gemm / MatMul as the frontend imports them).

Pattern: matmul(dequantize(x, sx, zx), B) with B = dequantize(W, sw, 0, axis=1) (W of shape
K x N) or B = permute_dims(dequantize(W, sw, 0, axis=0), [1, 0]) (W of shape N x K, a Gemm
with transB); x any 8-bit activation with one scale and zero point.
Rule: (sx * (x - zx)) @ (W' * sw) = sx * sw[n] * (x @ W' - zx * sum_k W'[k, n]) with
W' = W as K x N; exact in int32 while K is at most ACC_LIMIT.
Checks (the reason is returned, the matmul stays float): as conv2d.py, for the N axis.
"""
from __future__ import annotations

import numpy as np

from passes.tvm_int8.common import ACC_LIMIT, Integer, bound, dequantized, float_weight

__all__ = ["apply"]


def apply(call, lookup) -> Integer | str | None:
    import tvm
    from tvm import relax

    if getattr(call.op, "name", "") != "relax.matmul":
        return None
    x = dequantized(call.args[0], lookup)
    w, transposed = _weight(call.args[1], lookup)
    if w is None and (x is None or float_weight(call.args[1], lookup)):
        return None     # a float kernel (it may read an int8 layer's dequantized output)
    if isinstance(x, str) or isinstance(w, str) or x is None or w is None:
        return (x if isinstance(x, str) else w if isinstance(w, str)
                else "only one operand is dequantized (or the weight is permuted otherwise)")
    weight = w.data.value.numpy() if isinstance(w.data, tvm.ir.expr.Constant) else None
    reason = _check(x, w, weight, transposed)
    if reason:
        return reason
    weight = np.ascontiguousarray(weight.T if transposed else weight)   # K x N
    if weight.shape[0] > ACC_LIMIT:
        return f"reduction of {weight.shape[0]} products may overflow int32"
    zx = int(x.zero_point.reshape(-1)[0])
    acc = relax.op.matmul(x.data, relax.const(weight, "int8"), out_dtype="int32")
    offset = -zx * weight.astype(np.int64).sum(axis=0)
    columns = weight.shape[1]
    scale = np.broadcast_to(x.scale.reshape(-1)[0] * w.scale.reshape(-1), (columns,))
    ndim = len(call.ty.shape)
    return Integer(acc, offset.astype(np.int32), scale.astype(np.float32), ndim, ndim - 1)


def _weight(expr, lookup):
    """(dequantized weight or reason or None, whether it is N x K behind a permute_dims)."""
    from tvm import relax

    value = bound(expr, lookup)
    if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.permute_dims":
        axes = value.attrs.axes
        if axes is not None and [int(v) for v in axes] != [1, 0]:
            return None, True
        return dequantized(value.args[0], lookup), True
    return dequantized(expr, lookup), False


def _check(x, w, weight, transposed) -> str | None:
    if weight is None or weight.ndim != 2:
        return "the weight is not a 2-D constant"
    if w.dtype != "int8":
        return f"{w.dtype} weight (int8 only)"
    if np.any(w.zero_point):
        return "weight zero point is not 0"
    out_axis = 0 if transposed else 1
    if w.scale.size > 1 and (w.axis != out_axis or w.scale.size != weight.shape[out_axis]):
        return f"weight scales along axis {w.axis} (one per output column only)"
    if x.scale.size != 1 or x.zero_point.size != 1:
        return "per-channel activation scales (one per tensor only)"
    return None
