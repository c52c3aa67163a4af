"""Default schedules for llvm targets: one rule per file, applied to every PrimFunc of a built
relax module that no tuning record covers (what dlight does for GPUs).

`default_schedule(mod, target)` runs after legalization and fusion. For each PrimFunc without
the `tir.is_scheduled` attribute (a function scheduled from a tuning database has it), the
function's one reduction block (or, with none, its elementwise blocks) is offered to the rules
in order; the first that applies schedules it, and the function is marked scheduled. A
function no rule fits is left as TVM legalized it ("none"). A rule that fails on a function
(TVM rejects a primitive) leaves that function unchanged, so the build never fails because of
a schedule.
"""
from __future__ import annotations

import logging

from passes.tvm_schedules import conv2d, depthwise, injective, matmul, pack, packed_conv, pool
from passes.tvm_schedules.common import is_reduction, supported

__all__ = ["default_schedule", "RULES", "SCHEDULED_ATTR"]

logger = logging.getLogger(__name__)

RULES = (("packed_conv", packed_conv.apply), ("conv2d", conv2d.apply),
         ("depthwise", depthwise.apply), ("matmul", matmul.apply), ("pool", pool.apply))
SCHEDULED_ATTR = "tir.is_scheduled"


def default_schedule(mod, target) -> tuple[object, dict[str, str]]:
    """`mod` with every unscheduled PrimFunc scheduled by the first rule that fits; also
    function name -> rule name ("injective" for elementwise ones, "none" when no rule fits).
    Functions already scheduled (a tuning record applied) are left as they are."""
    from tvm import tirx as tir

    out = mod
    applied: dict[str, str] = {}
    if not supported(target):
        return out, applied
    for gv, func in mod.functions_items():
        if not isinstance(func, tir.PrimFunc) or (func.attrs is not None and
                                                   SCHEDULED_ATTR in func.attrs):
            continue
        new, rule = schedule_function(func, target)
        applied[gv.name_hint] = rule
        if new is not None:
            out[gv] = new
    return out, applied


def schedule_function(func, target):
    """(scheduled function or None, rule name)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - no root block: nothing to schedule
        return None, "none"
    reductions = [b for b in blocks if is_reduction(sch, b)]
    try:
        if not reductions:
            if pack.apply(sch, blocks, target):
                return _done(sch), "pack"
            injective.apply(sch, blocks, target)
            return _done(sch), "injective"
        if len(reductions) == 1:
            for name, rule in RULES:
                if rule(sch, reductions[0], target):
                    return _done(sch), name
    except Exception as err:  # noqa: BLE001 - a rule TVM rejects: the function stays as is
        logger.debug("default schedule failed: %s", str(err).strip().splitlines()[-1:])
    return None, "none"


def _done(sch):
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
