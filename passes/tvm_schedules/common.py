"""Helpers shared by the default schedule rules (TensorIR, `tvm.s_tir` schedule primitives).

The rules see the fused PrimFuncs that relax's LegalizeOps + FuseOps + FuseTIR produce for a
CPU (NCHW convolutions, matmuls, pools, elementwise chains). Register tiles are sized from the
target's vector width (`vector_lanes`) and register count (`REGISTER_BUDGET`); the settings
are rules of thumb of CPU code generation, chosen without looking at any test model.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["supported", "Tile", "pick_cols", "pick_tile", "vector_lanes", "register_budget",
           "divisors", "split_roles", "inline_copies", "inline_epilogue", "fuse_epilogue",
           "tile_reduction", "schedule_injective", "is_reduction", "block_loops_match",
           "p_alive", "region_buffer", "deinterleave_pad", "vector_chunk"]

# Vector accumulators a register tile may hold: 32 vector registers on AVX-512 and aarch64
# (NEON), 16 on AVX2; a quarter is left for the operands.
REGISTER_BUDGET = {32: 24, 16: 12}


@dataclass(frozen=True)
class Tile:
    """A register tile: `rows` output channels x `ys` output rows x `cols` contiguous output
    elements (vectorized); the reduction loops run outside it."""
    rows: int
    ys: int
    cols: int


def pick_cols(width: int, lanes: int) -> int:
    """The divisor of `width` up to four vectors that fills its vectors best (largest on a
    tie): 16 of 80, 40 of 40 on 16 lanes."""
    fits = [d for d in divisors(width) if d <= 4 * lanes]
    return max(fits, key=lambda d: (d / (-(-d // lanes) * lanes), d))


def pick_tile(channels: int, height: int, width: int, lanes: int, budget: int) -> Tile:
    """`cols` from `pick_cols`; `rows` the largest divisor of `channels` whose accumulators
    fit the budget; `ys` more output rows while the budget is less than half used."""
    cols = pick_cols(width, lanes)
    vregs = -(-cols // lanes)
    rows = max(d for d in divisors(channels) if d * vregs <= budget)
    ys = 1
    if rows * vregs * 2 <= budget:
        ys = max(d for d in divisors(height) if rows * d * vregs <= budget)
    return Tile(rows, ys, cols)


def supported(target) -> bool:
    """An llvm target whose triple (if given) names an architecture LLVM knows: the rules
    schedule for it. (LLVM aborts the process on a triple it does not know, in the rules and
    in the vectorized code's lowering; such a build is left to fail in TVM as it would.)"""
    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", ""))
    return not triple or triple.split("-")[0] in _KNOWN_ARCHS


def vector_lanes(target, bits: int = 32) -> int:
    """Elements of `bits` per SIMD register of the target (LLVM's vector width)."""
    from tvm.target import codegen

    width = int(codegen.llvm_get_vector_width(target)) if supported(target) else 128
    return max(1, max(width, 128) // bits)


_KNOWN_ARCHS = {"x86_64", "i686", "i386", "aarch64", "arm64", "armv7", "armv7a", "arm",
                "riscv64", "riscv32"}


def register_budget(target) -> int:
    """Vector accumulators a register tile may use on `target`."""
    return REGISTER_BUDGET[32] if vector_lanes(target) >= 16 or _is_arm(target) \
        else REGISTER_BUDGET[16]


def _is_arm(target) -> bool:
    t = target.host if target.host is not None and target.kind.name != "llvm" else target
    return "aarch64" in str(t.attrs.get("mtriple", "")) or "arm_cpu" in list(target.keys)


def region_buffer(region):
    """The buffer a block's read/write region names."""
    src = getattr(region, "source", None)
    if src is None:
        return region.buffer
    return getattr(src, "buffer", src)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def is_reduction(sch, block) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


def block_loops_match(sch, block) -> bool:
    """True when the block's loops are its iteration variables, one to one, in order."""
    loops = sch.get_loops(block)
    ivs = sch.get(block).iter_vars
    return len(loops) == len(ivs) and all(
        int(sch.get(lp).extent) == int(iv.dom.extent) for lp, iv in zip(loops, ivs, strict=True))


def split_roles(sch, block) -> tuple[list, list]:
    """The block's loops split into spatial and reduction ones (block_loops_match holds)."""
    loops = sch.get_loops(block)
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    return ([lp for lp, k in zip(loops, kinds, strict=True) if k == 0],
            [lp for lp, k in zip(loops, kinds, strict=True) if k == 2])


def p_alive(sch, block) -> bool:
    """False once `block` was inlined away."""
    try:
        sch.get(block)
    except Exception:  # noqa: BLE001 - TVM raises on a removed block
        return False
    return True


def _is_copy(sch, block) -> bool:
    from tvm.tirx.stmt import BufferStore

    body = sch.get(block).body   # TVM 0.27 builds a BufferLoad as a TensorLoad
    return isinstance(body, BufferStore) and type(body.value).__name__ in (
        "BufferLoad", "TensorLoad")


def inline_copies(sch, block) -> None:
    """Inline the producers of `block` that only copy (a pad without padding)."""
    for p in sch.get_producers(block):
        if _is_copy(sch, p):
            try:
                sch.compute_inline(p)
            except Exception:  # noqa: BLE001 - a copy TVM cannot inline stays a loop nest
                pass


def inline_epilogue(sch, main) -> None:
    """Inline every elementwise block after `main` (the reduction) except the last one, so
    one block (bias, BN, activation, residual add, clip bounds...) reads `main`'s output."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    at = names.index(sch.get(main).name_hint)
    for b in blocks[at + 1:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - a block TVM cannot inline keeps its own loops
            pass


def fuse_epilogue(sch, block) -> None:
    """Inline the elementwise consumers of `block` (bias, BN, activations, residual add) into
    it, one after another, as long as TVM can (each must read `block`'s output at the same
    point it writes)."""
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001 - not an elementwise consumer: it stays
            return


def tile_reduction(sch, block, outer: list, reduce: list, inner: list,
                   vector_axis: int | None = None) -> None:
    """The register-tile schedule of a reduction `block` whose spatial loops are split into
    `outer` (parallel, fused), its reduction loops `reduce` and `inner` (the register tile:
    unrolled, the last one vectorized). Order: outer, reductions, inner. The accumulators
    live in a local buffer the size of the tile (registers after LLVM's scalar replacement);
    the write-back carries the fused epilogue. `vector_axis`: the output axis the last inner
    loop runs over when it is not the output's last one (the accumulators are then laid out
    with that axis last, and the write-back vectorized along it)."""
    inline_epilogue(sch, block)
    wb = sch.cache_write(block, 0, "local")
    fuse_epilogue(sch, wb)
    if vector_axis is not None:
        rank = len(sch.get(block).iter_vars) - len(reduce)
        order = [i for i in range(rank) if i != vector_axis] + [vector_axis]
        sch.transform_layout(block, ("write", 0), _permutation(rank, order))
    sch.reorder(*outer, *reduce, *inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    sch.reverse_compute_at(wb, fused)
    _unroll_vectorize(sch, inner)
    if reduce:
        init = sch.decompose_reduction(block, reduce[0])
        _unroll_vectorize(sch, sch.get_loops(init)[1:], unroll=False)
    wl = sch.get_loops(wb)[1:]
    if vector_axis is not None and len(wl) == len(sch.get(wb).iter_vars):
        wl = [lp for i, lp in enumerate(wl) if i != vector_axis] + [wl[vector_axis]]
        sch.reorder(*wl)
    _unroll_vectorize(sch, wl, unroll=False)


def deinterleave_pad(sch, pad, lanes: int) -> bool:
    """Lay the padded input of a stride-2 window out as even columns, then odd ones
    ([..., w] -> [..., w % 2, w // 2]): the window's loads at 2x + rx become contiguous runs
    (rx % 2, x + rx // 2) instead of gathers. The padding copy reads the input once, scheduled
    parallel over rows, vectorized along the half row. False (nothing done) when the padded
    width is odd."""
    buf = region_buffer(sch.get(pad).writes[0])
    width = int(buf.shape[-1])
    if width % 2 or len(buf.shape) != 4:
        return False
    from tvm.tirx import IndexMap, Var

    idx = [Var(f"i{k}", "int64") for k in range(4)]
    sch.transform_layout(pad, ("write", 0), IndexMap(
        idx, [idx[0], idx[1], idx[2], idx[3] % 2, idx[3] // 2], None))
    n, c, h, w = sch.get_loops(pad)
    half, parity = sch.split(w, [None, 2])
    sch.reorder(parity, half)
    sch.parallel(sch.fuse(n, c, h))
    sch.vectorize(half)
    del lanes
    return True


def _permutation(rank: int, order: list[int]):
    from tvm.tirx import IndexMap, Var

    idx = [Var(f"i{k}", "int64") for k in range(rank)]
    return IndexMap(idx, [idx[k] for k in order], None)


def _unroll_vectorize(sch, loops: list, unroll: bool = True) -> None:
    """Vectorize the innermost of `loops`, unroll the others (loops of one register tile;
    `unroll=False` leaves that to LLVM, which unrolls short constant loops itself). The
    vectorized loop is a power of two long (`vector_chunk`), the rest of it unrolled."""
    if not loops:
        return
    last = loops[-1]
    extent = int(sch.get(last).extent)
    chunk = vector_chunk(extent)
    if chunk != extent:
        outer, last = sch.split(last, [None, chunk])
        loops = [*loops[:-1], outer, last]
    if unroll:
        for lp in loops[:-1]:
            sch.unroll(lp)
    sch.vectorize(last)


def vector_chunk(extent: int) -> int:
    """The length of one vector operation over a loop of `extent`: its largest power-of-two
    divisor when that is at least 4, else the whole loop. LLVM legalizes a vector whose length
    is not a power of two badly: a 48-wide fp32 tile ran 4.5x slower per flop than a 64-wide one
    (3x3 conv 64->64 at 48x48 vs 64x64, AVX-512), and such widths are what resolutions like
    192 give."""
    chunk = extent & -extent
    return chunk if 4 <= chunk < extent else extent


def schedule_injective(sch, block, lanes: int) -> None:
    """Parallel over the outer loops, vectorized innermost (a multiple of `lanes` when the
    innermost extent allows)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops)
    total = int(sch.get(fused).extent)
    vec = next((v for v in (4 * lanes, 2 * lanes, lanes) if total % v == 0), None)
    if vec is None:
        sch.parallel(fused)
        return
    o, i = sch.split(fused, [None, vec])
    sch.parallel(o)
    sch.vectorize(i)
