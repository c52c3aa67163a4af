"""Emission through Apache TVM: ONNX -> relax (from_onnx) -> tvm.compile -> exported module.

Artifacts (written atomically into the output folder):
- host target (the target's CPU architecture is this machine's): `model.so`, loaded back and run
  with the relax VirtualMachine on check inputs; its outputs are compared with onnxruntime's.
- cross target: `model.tar` (the object files, to be linked on or for the device; the ELF machine
  of every object is checked against the target's architecture), plus `model.so` when a cross
  compiler for that architecture is installed (detected with `shutil.which`, never required).

Int8: TVM 0.27's ONNX frontend imports QuantizeLinear/DequantizeLinear as simulated quantization
(quantize, then dequantize back to float) and has no QLinearConv/ConvInteger path. Right after
the import, `passes/tvm_int8.integer_compute` rewrites every int8 conv / matmul it can prove
equivalent into integer compute (8-bit x int8, int32 accumulation, int32 bias, float
requantization; docs/tvm.md). A kernel it cannot prove stays float and the build warns with the
reason; the result's `int8_in_float` is True when any quantized kernel runs in float (the
compile manifest/report repeat it). The check of a QDQ model compares by cosine similarity (at
least 0.99): rounding ties flip single quantized values by one step and the flip propagates.
An all-integer build is compared with onnxruntime's integer (fused QDQ) execution; a build
with float int8 kernels with onnxruntime running the QDQ graph unfused (optimizations off),
which computes the same simulated quantization (or must be at least as close as onnxruntime's
own integer execution is).

Schedules: TVM 0.27's CPU pipeline legalizes and fuses but schedules nothing, so the build
goes through `schedule_module`, the one place the IRModule is scheduled: after legalization
and fusion, records of a tuning database are applied first (`apply_tuning_records`; a function
they cover keeps its tuned schedule), then the default schedule rules of
`passes/tvm_schedules/` cover every other function (docs/tvm.md). BatchNormalization after a
Conv is folded into the Conv's weights first (`fold_batchnorm`, exact up to float rounding),
as onnxruntime does. The result lists per TVM function whether its schedule is "tuned",
"default" (the rule that scheduled it is in `rules`) or "none".

Errors: ops the frontend has no converter for raise UnsupportedOpError naming them before TVM is
called; a failing import or build raises EmitError naming the TVM pass it failed in (recorded by
a pass instrument) and TVM's message.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from toolchain.errors import BadInputError, FleetcError, UnsupportedOpError
from toolchain.target import Target

__all__ = [
    "emit_tvm", "EmitResult", "Artifact", "EmitError", "elf_arch", "target_arch",
    "find_cross_compiler", "tvm_target", "build_module", "schedule_module",
    "apply_tuning_records", "tuning_module",
]

logger = logging.getLogger(__name__)

_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}
_TRIPLE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
                "armv7": "arm", "arm": "arm", "riscv64": "riscv", "i686": "x86", "i386": "x86"}
_CROSS_CC = {"aarch64": ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc"),
             "arm": ("arm-linux-gnueabihf-g++", "arm-linux-gnueabihf-gcc")}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
QDQ_MIN_COSINE = 0.99   # TVM vs onnxruntime outputs of a QDQ model (see _check)


class EmitError(FleetcError):
    """The TVM import or build failed; the message names the pass (or op) and TVM's error.

    Exit code 2: the model or target given cannot be built (like any bad input)."""

    exit_code = 2


@dataclass(frozen=True)
class Artifact:
    path: str          # file name inside the output folder
    sha256: str
    arch: str          # ELF machine of the code it holds ("x86_64", "aarch64", ...)
    kind: str          # "shared-library" | "object-archive"


@dataclass(frozen=True)
class EmitResult:
    artifacts: tuple[Artifact, ...]
    target: str                      # the TVM target, as TVM prints it (JSON)
    arch: str                        # the target's CPU architecture
    cross: bool                      # True when it is not this machine's architecture
    checked: bool                    # the host module ran and matched onnxruntime
    max_abs_error: float | None      # max |TVM - onnxruntime| over outputs, when checked
    int8_in_float: bool              # QDQ ops present: int8 kernels run as float on this build
    warnings: tuple[str, ...] = field(default_factory=tuple)
    schedules: dict[str, str] = field(default_factory=dict)  # TVM function -> tuned|default|none
    rules: dict[str, str] = field(default_factory=dict)      # default-scheduled function -> rule


def tvm_target(spec: Target | str | dict):
    """A tvm.target.Target from a fleetc Target, a TVM tag, a TVM target dict or a
    tvm.target.Target (TVM 0.27 rejects option strings)."""
    import tvm

    if isinstance(spec, Target):
        return spec.tvm()
    if isinstance(spec, tvm.target.Target):
        return spec
    try:
        return tvm.target.Target(spec)
    except Exception as err:
        raise BadInputError(f"TVM rejects target {spec!r}: {_first_line(err)}") from err


def target_arch(target) -> str:
    """CPU architecture the target's (host) code is generated for, from its LLVM triple."""
    t = target if target.kind.name == "llvm" else (target.host or target)
    triple = str(t.attrs.get("mtriple", "")) if t.kind.name == "llvm" else ""
    if not triple:
        from tvm.target import codegen

        triple = str(codegen.llvm_get_system_triple())
    head = triple.split("-")[0]
    for prefix, arch in _TRIPLE_ARCH.items():
        if head.startswith(prefix):
            return arch
    return head


def host_arch() -> str:
    return _TRIPLE_ARCH.get(platform.machine().lower(), platform.machine().lower())


def elf_arch(data: bytes) -> str:
    """Architecture named by an ELF header's e_machine ("not-elf" when it is not ELF)."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return "not-elf"
    endian = "<" if data[5] == 1 else ">"
    machine = struct.unpack(endian + "H", data[18:20])[0]
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine}")


def find_cross_compiler(arch: str, preferred: str | None = None) -> str | None:
    """Path of a C/C++ cross compiler for `arch` if one is installed (PATH lookup)."""
    for name in ((preferred,) if preferred else ()) + _CROSS_CC.get(arch, ()):
        path = shutil.which(name)
        if path:
            return path
    return None


def emit_tvm(model: onnx.ModelProto | str | Path, target: Target | str | dict,
             outdir: str | Path, *,
             cross_compiler: str | None = None,
             inputs: dict[str, np.ndarray] | None = None,
             rtol: float = 1e-3, atol: float = 1e-4) -> EmitResult:
    """Build `model` for `target` and write the artifacts into `outdir` (see the module doc).

    `inputs` feed the host check (default: seeded random data of the model's input shapes, the
    batch taken as 1 where symbolic). The check fails with EmitError when
    max|TVM - ORT| > atol + rtol * max|ORT| for an output (QDQ models: when the cosine similarity
    of an output is below QDQ_MIN_COSINE and below that of onnxruntime's own integer execution,
    see `_check`)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    tgt = tvm_target(target)
    arch = target_arch(tgt)
    cross = arch != host_arch()
    shapes = _input_shapes(proto)
    qdq = any(n.op_type in _QDQ for n in proto.graph.node)
    warnings: list[str] = []
    int8: list = []
    executable, schedules, rules = build_module(proto, tgt, shapes, int8=int8)
    in_float = qdq and (int8[0].runs_in_float or not int8[0].integer)
    if in_float:
        warnings.append(_float_int8_warning(int8[0]))
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    artifacts: list[Artifact] = []
    checked, err = False, None
    if not cross:
        artifacts.append(_export(executable, out / "model.so", "shared-library"))
        if tgt.kind.name == "llvm":
            feeds = inputs if inputs is not None else _random_inputs(proto, shapes)
            err = _check(out / "model.so", proto, feeds, rtol, atol, qdq, in_float)
            checked = True
        else:
            warnings.append(f"{tgt.kind.name} module not run here: no such device on this host")
    else:
        artifacts.append(_export(executable, out / "model.tar", "object-archive"))
        cc = find_cross_compiler(arch, cross_compiler)
        if cc:
            artifacts.append(_export(executable, out / "model.so", "shared-library", cc))
        else:
            warnings.append(f"no {arch} cross compiler installed "
                            f"({cross_compiler or ' or '.join(_CROSS_CC.get(arch, ('none',)))}): "
                            "model.tar holds the object files to link on the device")
    for a in artifacts:
        if a.arch != arch:
            raise EmitError(f"TVM produced {a.arch} code in {a.path} for an {arch} target")
    return EmitResult(tuple(artifacts), str(tgt), arch, cross, checked, err, in_float,
                      tuple(warnings), schedules, rules)


def _float_int8_warning(report) -> str:
    if not report.left:
        return ("int8 kernels run as float on this TVM build: no conv / matmul of the QDQ "
                "model was in integer form")
    shown = "; ".join(report.left[:5]) + ("; ..." if len(report.left) > 5 else "")
    return (f"{len(report.left)} int8 kernel(s) run as float on this TVM build (no proven "
            f"integer form): {shown}")


def build_module(proto: onnx.ModelProto, tgt, shapes: dict[str, list[int]] | None = None,
                 records: bool = True, int8: list | None = None):
    """(relax executable, function -> "tuned" | "default" | "none", function -> rule) of
    `proto` for the tvm Target `tgt`: import, schedule (`schedule_module`), compile. The one
    build every TVM artifact and every TVM timing of fleetc goes through. `records=False`:
    default schedules only (no tuning records; for comparisons). `int8`: a list that gets the
    int8 rewrite's IntegerReport (kernels made integer, kernels left float and why)."""
    shapes = _input_shapes(proto) if shapes is None else shapes
    return _build(_prepared(proto, shapes, int8, tgt), tgt, records)


def _prepared(proto: onnx.ModelProto, shapes: dict[str, list[int]], int8: list | None = None,
              tgt=None):
    """The relax module a build starts from: BatchNormalizations folded into their Convs,
    imported, int8 kernels in integer compute (passes/tvm_int8; packed for `tgt`'s int8 dot
    product), constant layout changes folded."""
    from passes.tvm_int8 import integer_compute

    mod, report = integer_compute(_import(_fold_batchnorms(proto), shapes), tgt)
    if int8 is not None:
        int8.append(report)
    return _fold_layout_constants(mod)


def apply_tuning_records(mod, tgt):
    """`mod` with the records of the tuning database for `tgt` applied to the functions they
    cover (marked `tir.is_scheduled`); the hook the tuning database plugs into. Without a
    database: `mod` unchanged."""
    from passes.tvm_schedules import SCHEDULED_ATTR
    from toolchain.tunedb import apply_database

    return apply_database(mod, tgt, mark=SCHEDULED_ATTR)[0]


def tuning_module(proto: onnx.ModelProto, tgt):
    """The module `apply_tuning_records` sees when `proto` is built (imported as `build_module`
    imports, legalized and fused as `schedule_module` does): tuning extracts its workloads here."""
    return _legalize(_prepared(proto, _input_shapes(proto), tgt=tgt), tgt)


def _legalize(mod, tgt):
    """Legalize and fuse (TVM's CPU passes, without its build-time constant folding, which
    compiles every folded call and took 27 s on a MobileNetV2)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with tgt:
        passes = [p for p in cpu.library_dispatch_passes(tgt) + cpu.legalize_passes(tgt)
                  if p.info.name != "FoldConstant"]
        return tvm.transform.Sequential(passes)(mod)


def schedule_module(mod, tgt, records: bool = True):
    """The one place the IRModule is scheduled: legalize and fuse (TVM's CPU passes, without
    its build-time constant folding, which compiles every folded call and took 27 s on a
    MobileNetV2), then tuning records, then default schedules for every function left.
    Returns (module, function -> "tuned" | "default" | "none", function -> rule)."""
    from tvm import tirx

    from passes.tvm_schedules import SCHEDULED_ATTR, default_schedule

    mod = _legalize(mod, tgt)
    if records:
        mod = apply_tuning_records(mod, tgt)
    tuned = {gv.name_hint for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and f.attrs is not None and SCHEDULED_ATTR in f.attrs}
    mod, rules = default_schedule(mod, tgt)
    kinds = {name: "tuned" for name in tuned}
    kinds.update({name: "none" if rule == "none" else "default" for name, rule in rules.items()})
    return mod, kinds, {k: v for k, v in rules.items() if v != "none"}


def _fold_layout_constants(mod):
    """`mod` with every permute_dims / reshape of a constant (a Gemm's transposed weight, a
    bias reshaped to broadcast) replaced by the constant it computes, in numpy: otherwise they
    run at every inference (TVM's FoldConstant, left out for its build time, would fold them).
    Dense convs get their constant weight as IHWO (output channels contiguous)."""
    import tvm
    from tvm import relax

    folds = {"relax.permute_dims": lambda a, call: np.transpose(
        a, None if call.attrs.axes is None else [int(x) for x in call.attrs.axes]),
        "relax.reshape": lambda a, call: a.reshape([int(d) for d in call.args[1].values])}

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            op = getattr(call.op, "name", "")
            if op == "relax.nn.conv2d":
                call = self._constant_weight(call)
            if op == "relax.nn.conv2d" and _dense_oihw(call):
                # output channels last in the weight: the conv rule's loads along them are
                # contiguous (a gather of 16 cache lines per step otherwise)
                a = call.attrs
                weight = np.ascontiguousarray(call.args[1].value.numpy().transpose(1, 2, 3, 0))
                return relax.op.nn.conv2d(call.args[0], relax.const(weight), a.strides,
                                          a.padding, a.dilation, a.groups, a.data_layout,
                                          "IHWO", a.out_layout, a.out_dtype)
            if op in folds and isinstance(call.args[0], tvm.ir.expr.Constant):
                try:
                    value = folds[op](call.args[0].value.numpy(), call)
                except Exception:  # noqa: BLE001 - a form not handled here stays a call
                    return call
                return relax.const(np.ascontiguousarray(value), str(value.dtype))
            return call

        def _constant_weight(self, call):
            """A conv whose weight is a constant filled by broadcast_to (ONNX ConstantOfShape,
            as in the onnx package's light models) gets the filled constant: otherwise the
            fill runs at every inference and the conv reads an OIHW weight (6x slower per
            flop, VGG-19's 3x3 convs)."""
            w = call.args[1]
            bound = self.lookup_binding(w) if isinstance(w, relax.Var) else None
            if not (isinstance(bound, relax.Call) and
                    getattr(bound.op, "name", "") == "relax.broadcast_to" and
                    isinstance(bound.args[0], tvm.ir.expr.Constant)):
                return call
            shape = [int(d) for d in bound.args[1].values]
            value = np.ascontiguousarray(np.broadcast_to(bound.args[0].value.numpy(), shape))
            return relax.Call(call.op, [call.args[0], relax.const(value)], call.attrs)

    out = tvm.IRModule(mod.functions, attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = _Fold(mod).visit_expr(func)
    return out


def _dense_oihw(call) -> bool:
    """A conv2d of one group with a constant OIHW weight and NCHW data."""
    import tvm

    a = call.attrs
    return (isinstance(call.args[1], tvm.ir.expr.Constant) and int(a.groups) == 1 and
            str(a.kernel_layout) == "OIHW" and str(a.data_layout) == "NCHW" and
            str(a.out_layout) == "NCHW")


def _fold_batchnorms(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with every BatchNormalization that alone follows a Conv folded into it (the
    model as given when the project's importer rejects it: TVM then builds it unfolded)."""
    if not any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        return proto
    from passes.export_onnx import export_onnx
    from passes.fold_batchnorm import fold_batchnorm
    from passes.import_onnx import import_onnx

    try:
        graph = import_onnx(proto)
    except FleetcError:
        return proto
    folded = False
    for n in list(graph.topo()):
        # a fold removes the BatchNormalization (and what became unused) from the list ahead
        if n in graph.nx and graph.op(n) == "Conv":
            folded = fold_batchnorm(graph, n) or folded
    return export_onnx(graph) if folded else proto


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    # TVM errors end with the check that failed; Python ones start with it.
    msg = lines[-1] if lines and ("Error" in lines[-1] or "failed" in lines[-1]) else (
        lines[0] if lines else type(err).__name__)
    return msg[:300]


def _input_shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    inits = {i.name for i in proto.graph.initializer}
    shapes = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    return shapes


def _random_inputs(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in proto.graph.input:
        if vi.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(shapes[vi.name]).astype(dtype)
    return feeds


def _import(proto: onnx.ModelProto, shapes: dict[str, list[int]]):
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    missing = sorted({n.op_type for n in proto.graph.node if n.op_type not in known})
    if missing:
        raise UnsupportedOpError(f"TVM's ONNX frontend has no converter for op(s) "
                                 f"{', '.join(missing)}")
    try:
        return from_onnx(proto, shape_dict=shapes, keep_params_in_input=False)
    except Exception as err:
        raise EmitError(f"TVM ONNX import failed: {_first_line(err)}") from err


def _build(mod, tgt, records: bool = True):
    import tvm
    from tvm.ir.instrument import pass_instrument

    @pass_instrument
    class _LastPass:
        """Remembers the pass running when the build fails, to name it in the error."""

        def __init__(self) -> None:
            self.last = "before any pass"

        def run_before_pass(self, mod, info) -> None:
            self.last = info.name

    from tvm.relax.backend.cpu_generic import pipeline as cpu

    seen = _LastPass()
    try:
        with tvm.transform.PassContext(opt_level=3, instruments=[seen]):
            if tgt.kind.name != "llvm":   # GPU targets: TVM's own pipeline, no CPU rules
                return tvm.compile(mod, target=tgt), {}, {}
            mod, kinds, rules = schedule_module(mod, tgt, records)
            rest = tvm.transform.Sequential(cpu.dataflow_lower_passes(tgt) +
                                            cpu.finalize_passes(tgt))
            with tgt:
                return tvm.compile(mod, target=tgt, relax_pipeline=rest), kinds, rules
    except Exception as err:
        raise EmitError(f"TVM build for {tgt.kind.name} failed in pass {seen.last}: "
                        f"{_first_line(err)}") from err


def _export(executable, path: Path, kind: str, cc: str | None = None) -> Artifact:
    """Export next to `path` under a temporary name, check it, then rename into place."""
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        if cc:
            from tvm.support import cc as tvm_cc

            executable.export_library(tmp, fcompile=tvm_cc.cross_compiler(cc))
        else:
            executable.export_library(tmp)
        data = Path(tmp).read_bytes()
        arch = _archive_arch(data, path) if kind == "object-archive" else elf_arch(data)
        os.replace(tmp, path)
    except FleetcError:
        raise
    except Exception as err:
        raise EmitError(f"exporting {path.name} failed: {_first_line(err)}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Artifact(path.name, hashlib.sha256(data).hexdigest(), arch, kind)


def _archive_arch(data: bytes, path: Path) -> str:
    """The one architecture of every object file in a tar; mixed or none is an error."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        archs = {m.name: elf_arch(tar.extractfile(m).read()) for m in tar.getmembers()
                 if m.isfile() and m.name.endswith(".o")}
    kinds = set(archs.values())
    if len(kinds) != 1:
        raise EmitError(f"{path.name}: object files of architectures {archs} (expected one)")
    return kinds.pop()


def _ort_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], optimized: bool) -> list:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else float(np.allclose(a, b))


def _check(so: Path, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float,
           atol: float, qdq: bool, in_float: bool = True) -> float:
    """Run the exported module and onnxruntime on the same inputs; return the max abs error."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), dev)
    names = [vi.name for vi in proto.graph.input if vi.name in feeds]
    got = vm["main"](*(tvm.runtime.tensor(feeds[n], dev) for n in names))
    got = [got] if hasattr(got, "numpy") else list(got)
    # Unfused QDQ (optimizations off): onnxruntime then computes the same simulated
    # quantization TVM does. Rounding ties (TVM and onnxruntime round x / scale slightly
    # differently) still flip single quantized values by one step and the flip propagates, so
    # QDQ outputs are compared by direction (cosine similarity) instead of element-wise.
    # An all-integer build (in_float False) is compared with onnxruntime's integer execution.
    want = _ort_run(proto, feeds, optimized=qdq and not in_float)
    fused = _ort_run(proto, feeds, optimized=True) if qdq else want
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g = g.numpy()
        if g.shape != w.shape:
            raise EmitError(f"TVM output {i} has shape {g.shape}, onnxruntime {w.shape}")
        if not w.size:
            continue
        err = float(np.max(np.abs(g.astype(np.float64) - w)))
        worst = max(worst, err)
        if qdq:
            cos = _cosine(g, w)
            # Also accepted: as close as onnxruntime's own integer (fused) execution is.
            floor = min(QDQ_MIN_COSINE, _cosine(fused[i], w))
            if not cos >= floor:
                raise EmitError(f"TVM output {i} of the QDQ model differs from onnxruntime: "
                                f"cosine similarity {cos:.4f} < {floor:.4f}")
            continue
        limit = atol + rtol * float(np.max(np.abs(w)))
        if not err <= limit:
            raise EmitError(f"TVM output {i} differs from onnxruntime by {err:.3g} "
                            f"(tolerance {limit:.3g})")
    return worst
