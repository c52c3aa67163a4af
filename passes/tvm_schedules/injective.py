"""Rule: elementwise / injective functions (no reduction): transposes, adds, activations, pads.

Every block but the outputs is inlined into its consumers; each remaining block's loops are
fused, split by a multiple of the vector width when the extent allows, the outer part parallel
and the inner part vectorized.
"""
from __future__ import annotations

from passes.tvm_schedules.common import p_alive, schedule_injective, vector_lanes

__all__ = ["apply"]


def apply(sch, blocks, target) -> bool:
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - a block that cannot be inlined keeps its loops
            pass
    lanes = vector_lanes(target)
    for b in blocks:
        if p_alive(sch, b):
            schedule_injective(sch, b, lanes)
    return True
