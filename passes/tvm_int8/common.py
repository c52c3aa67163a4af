"""Shared pieces of the integer rules: reading a `dequantize` of the ONNX frontend's simulated
quantization, and turning an int32 accumulator back into the float value the float graph had.

A quantized tensor here is `dequantize(q, scale, zero_point, axis)` with `q` an 8-bit tensor
(an activation: any expression; a weight: a constant), `scale` and `zero_point` constants.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dequantized", "Integer", "dequantized", "float_weight", "constant", "bound", "finish",
           "ACC_LIMIT"]

# |sum of products| of one output stays below 2**31: a reduction of n products of an 8-bit
# activation (|x - zp| <= 255) and an int8 weight (|w| <= 128) is exact in int32 while n is
# at most this (2**31 / (255 * 128)).
ACC_LIMIT = 65793


@dataclass(frozen=True)
class Dequantized:
    data: object            # the 8-bit relax expression (a Var or a Constant)
    dtype: str              # "uint8" | "int8"
    scale: np.ndarray       # float32, scalar or one per channel along `axis`
    zero_point: np.ndarray  # same shape as scale
    axis: int


def constant(expr) -> np.ndarray | None:
    """The value of a relax constant, else None."""
    import tvm

    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


@dataclass(frozen=True)
class Integer:
    """What a rule computes: the real value float32(acc + offset) * scale, broadcast along
    `axis` of the `ndim`-d int32 accumulator `acc` (one offset and scale per channel)."""
    acc: object             # relax expression, int32
    offset: np.ndarray      # int32, one per channel
    scale: np.ndarray       # float32, one per channel
    ndim: int
    axis: int


def dequantized(expr, lookup, dtypes=("uint8", "int8")) -> Dequantized | str | None:
    """`expr` read as a dequantized integer tensor of `dtypes` (following variable bindings
    with `lookup`); a reason when it is a dequantize the rules cannot use; None when it is no
    dequantize."""
    from tvm import relax

    call = bound(expr, lookup)
    if not (isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.dequantize"):
        return None
    data, scale, zero = call.args
    dtype = str(data.ty.dtype)
    scale_v, zero_v = constant(scale), constant(zero)
    if dtype not in dtypes:
        return f"dequantize of {dtype} ({' or '.join(dtypes)} only)"
    if scale_v is None or zero_v is None:
        return "scale or zero point is not a constant"
    if str(call.attrs.out_dtype) != "float32":
        return f"dequantize to {call.attrs.out_dtype} (float32 only)"
    return Dequantized(_bound_constant(data, lookup), dtype, scale_v.astype(np.float32),
                       zero_v.astype(np.int64), int(call.attrs.axis))


def finish(value: Integer):
    """The relax expression of `value`'s real value: int32 add of the offset (when not all 0),
    cast, multiply by the per-channel scale (fused into the kernel's epilogue by TVM)."""
    from tvm import relax

    shape = [1] * value.ndim
    shape[value.axis] = value.scale.size
    acc = value.acc
    if np.any(value.offset):
        acc = relax.op.add(acc, relax.const(value.offset.astype(np.int32).reshape(shape),
                                            "int32"))
    return relax.op.multiply(relax.op.astype(acc, "float32"),
                             relax.const(value.scale.astype(np.float32).reshape(shape),
                                         "float32"))


def float_weight(expr, lookup) -> bool:
    """`expr` is a float constant (directly or transposed): the kernel reading it is a float
    kernel (the plan kept it fp32), whatever precision its activation arrives in."""
    import tvm
    from tvm import relax

    value = bound(expr, lookup)
    if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.permute_dims":
        value = bound(value.args[0], lookup)
    return isinstance(value, tvm.ir.expr.Constant) and str(value.value.dtype).startswith("float")


def bound(expr, lookup):
    """The expression a variable is bound to (through chains of variables), else `expr`."""
    from tvm import relax

    while isinstance(expr, relax.Var):
        value = lookup(expr)
        if value is None:
            return expr
        expr = value
    return expr


def _bound_constant(expr, lookup):
    """A variable bound to a constant is that constant (weights must be constants)."""
    import tvm

    value = bound(expr, lookup)
    return value if isinstance(value, tvm.ir.expr.Constant) else expr
