"""The 4-way int8 dot-product instructions the packed integer conv is tensorized with.

A dot product adds, to each of `lanes` int32 accumulators C[i], the sum over 4 k of
A[k] * B[i, k]: A four consecutive input channels of one pixel (broadcast to every lane),
B[i, k] the weights of `lanes` output channels x the same four input channels (contiguous),
C the accumulators of a register tile (a local buffer).

| target feature | instruction | lanes | A | B |
|---|---|---|---|---|
| x86 `avx512vnni` | `vpdpbusd` (zmm; ymm for 8 lanes) | 16 (8) | uint8 | int8 |
| aarch64 `dotprod` (rpi5, Cortex-A76) | `sdot` (v.4s) | 4 | int8 | int8 |

`vpdpbusd` multiplies unsigned by signed bytes: uint8 activations x int8 weights as
onnxruntime's QDQ stores them, no shift. `sdot` needs both signed (`usdot` needs i8mm, which a
Cortex-A76 lacks), so the activations are shifted to int8 (x - 128) when packed and
128 * sum(W) is added back to the int32 offset (passes/tvm_int8/packed_conv.py). Other targets
(rpi4: NEON without dotprod, x86 without VNNI) get no dot product: their integer convs keep the
NCHW conv rule, which LLVM vectorizes with widening multiply-adds. (LLVM 22 declares
`vpdpbusd.512`'s operands as <64 x i8>, so the byte vectors are passed as such.)
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DotProduct", "dot_product", "dot_products"]


@dataclass(frozen=True)
class DotProduct:
    intrinsic: str   # TensorIntrin name (registered by `dot_product`)
    lanes: int       # int32 accumulators per instruction = output channels per weight block
    dtype: str       # the activations' type the instruction takes ("uint8" | "int8")


def dot_products(target) -> tuple[DotProduct, ...]:
    """The dot products of `target`, widest first (registered): x86 VNNI has 16 lanes (zmm)
    and 8 (ymm, for output channel counts that are a multiple of 8 but not of 16)."""
    dot = dot_product(target)
    if dot is None or dot.lanes != 16:
        return () if dot is None else (dot,)
    return dot, _register(DotProduct("fleetc_vnni_8x4", 8, "uint8"))


def dot_product(target) -> DotProduct | None:
    """The widest dot product of `target` (registering its tensor intrinsic once), or
    None."""
    from tvm.target import codegen

    if target is None or target.kind.name != "llvm":
        return None
    attrs = target.host.attrs if target.host is not None else target.attrs
    if bool(attrs.get("feature.is_aarch64", False)):
        if bool(attrs.get("feature.has_dotprod", False)):
            return _register(DotProduct("fleetc_sdot_4x4", 4, "int8"))
        return None
    triple = str(attrs.get("mtriple", ""))
    if triple and not triple.startswith("x86_64"):
        return None
    if codegen.target_has_features("avx512vnni", target):
        return _register(DotProduct("fleetc_vnni_16x4", 16, "uint8"))
    return None


_REGISTERED: set[str] = set()
_LLVM = {"fleetc_vnni_16x4": "llvm.x86.avx512.vpdpbusd.512",
         "fleetc_vnni_8x4": "llvm.x86.avx512.vpdpbusd.256",
         "fleetc_sdot_4x4": "llvm.aarch64.neon.sdot.v4i32.v16i8"}


def _register(dot: DotProduct) -> DotProduct:
    if dot.intrinsic not in _REGISTERED:
        from tvm.s_tir import TensorIntrin

        desc, impl = _functions(dot)
        TensorIntrin.register(dot.intrinsic, desc, impl, override=True)
        _REGISTERED.add(dot.intrinsic)
    return dot


def _functions(dot: DotProduct):
    from tvm.script import tirx as T  # noqa: N812 - the TVMScript spelling

    lanes, a_type, llvm = dot.lanes, dot.dtype, _LLVM[dot.intrinsic]
    acc, a4, ab, bb = f"int32x{lanes}", f"{a_type}x4", f"{a_type}x{4 * lanes}", \
        f"int8x{4 * lanes}"
    # LLVM's operand types: vpdpbusd takes <64 x i8> / <32 x i8> for both byte vectors
    a_arg = f"int8x{4 * lanes}" if "vnni" in dot.intrinsic else ab

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_type, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_type, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            word = T.reinterpret(A.vload([0], a4), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), C.vload([0], dtype=acc),
                T.reinterpret(T.broadcast(word, lanes), dtype=a_arg),
                B.vload([0, 0], dtype=bb), dtype=acc)

    return desc, impl
