"""Rule: the int8 packing function (passes/tvm_int8/packed_conv.py `pack_int8`, with whatever
elementwise producer fused into it, e.g. the input's quantize).

Matches an injective function whose last block writes a 5-D 8-bit buffer [n, c / 4, y, x, 4].
Schedule: producers inlined; parallel over (n, c / 4, y); x split into runs of `lanes` 8-bit
elements... of 16 pixels (vectorized: contiguous loads along x of each of the four input
channels), the four channels unrolled inside. The injective rule would vectorize the flat
index instead, computing divisions and remainders of 64 int64 lanes per vector (measured 3-10x
slower on MobileNetV2's packs).
"""
from __future__ import annotations

from passes.tvm_schedules.common import region_buffer

__all__ = ["apply"]

PIXELS = 16   # pixels per vector run: 16 x 4 bytes, one 64-byte store


def apply(sch, blocks, target) -> bool:
    del target
    last = blocks[-1]
    out = region_buffer(sch.get(last).writes[0])
    if len(out.shape) != 5 or int(out.shape[-1]) != 4 or str(out.dtype) not in ("uint8", "int8"):
        return False
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - a block that cannot be inlined keeps its loops
            pass
    n, cb, y, x, ci = sch.get_loops(last)
    sch.parallel(sch.fuse(n, cb, y))
    width = int(sch.get(x).extent)
    if width >= PIXELS:
        x_o, x_i = sch.split(x, [None, PIXELS])
        sch.reorder(x_o, ci, x_i)
        sch.unroll(ci)
        sch.vectorize(x_i)
    else:
        sch.reorder(ci, x)
        sch.unroll(ci)
        sch.vectorize(x)
    return True
