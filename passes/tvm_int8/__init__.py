"""Integer compute for the ONNX frontend's simulated quantization, one rule per file.

TVM 0.27 imports a QDQ model as float: every int8 kernel is conv2d / matmul of `dequantize`d
tensors. `integer_compute(mod)` rewrites each such kernel whose quantization it can prove
equivalent into integer compute: the kernel accumulates 8-bit activations x int8 weights in
int32 (`conv2d.py`, `matmul.py`), an int32 bias joins the accumulator (`bias.py`), and the
result leaves as float32(acc + offset) * scale - the value the float graph computed - so the
`quantize` after it requantizes with the next layer's scale and zero point (a float scale,
rounding half to even, saturating cast to 8 bits) and fuses into the kernel's epilogue; so do
a ReLU / ReLU6 (clip) between them, and onnxruntime's quantizer usually folds those into the
`quantize`'s saturation already.

A kernel with a dequantized operand that no rule can prove equivalent stays float and is
listed with the rule's reason; the build warns with that list (never silently). Pre-condition:
the module as `from_onnx` imports it (NCHW / OIHW, constants inline). Post-condition: the
module's outputs equal the float graph's up to float rounding of the accumulator's scale (the
integer sums are exact).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from passes.tvm_int8 import bias, conv2d, matmul, packed_conv
from passes.tvm_int8.common import Integer, finish

__all__ = ["integer_compute", "IntegerReport", "RULES"]

logger = logging.getLogger(__name__)

RULES = (("conv2d", conv2d.apply), ("matmul", matmul.apply))


@dataclass(frozen=True)
class IntegerReport:
    integer: int              # kernels now in integer compute
    left: tuple[str, ...]     # "<function>/<variable> <rule>: <reason>" per kernel left float

    @property
    def runs_in_float(self) -> bool:
        """Some quantized kernel of the module still runs in float."""
        return bool(self.left)


def integer_compute(mod, target=None):
    """(`mod` with every provable int8 kernel in integer compute, IntegerReport). With a
    `target` that has an int8 dot product (passes/tvm_schedules/dot_products.py), dense convs
    are packed for it (packed_conv.py)."""
    from tvm import relax

    from passes.tvm_schedules.dot_products import dot_products

    dots = dot_products(target)
    left: list[str] = []
    count = [0]

    @relax.expr_functor.mutator
    class _Integer(relax.PyExprMutator):
        def __init__(self, mod, name) -> None:
            super().__init__(mod)
            self.name = name
            self.integers: dict = {}   # variable -> the Integer it holds the real value of

        def visit_var_binding_(self, binding) -> None:
            value = self.visit_expr(binding.value)
            found = self._rewrite(value, binding.var) if isinstance(value, relax.Call) else None
            if not isinstance(found, Integer):
                super().visit_var_binding_(binding)
                return
            emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) \
                else self.builder_.emit_output
            new = emit(finish(found), binding.var.name)
            self.integers[new] = found
            self.set_var_remap(binding.var, new)

        def _packed(self, *conv):
            return packed_conv.emit(self.builder_, dots, *conv)

        def _rewrite(self, call, var):
            lookup = self.lookup_binding
            fused = bias.apply(call, lookup, self.integers)
            if fused is not None:
                return fused
            for op, rule in RULES:
                found = rule(call, lookup, self._packed) if op == "conv2d" and dots else \
                    rule(call, lookup)
                if isinstance(found, str):
                    left.append(f"{self.name}/{var.name} {op}: {found}")
                    return None
                if found is not None:
                    count[0] += 1
                    return found
            return None

    mutator = None
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mutator = _Integer(mod if mutator is None else mutator.builder_.get(), gv.name_hint)
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    if not count[0]:
        return mod, IntegerReport(0, tuple(left))
    out = mutator.builder_.get()
    # the float kernels replaced (and dequantizes only they used) are now unused bindings
    return relax.transform.DeadCodeElimination()(out), IntegerReport(count[0], tuple(left))
