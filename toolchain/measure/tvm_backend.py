"""Compile ONNX models with TVM (relax) and time them on this machine's CPU."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from toolchain.errors import BadInputError, FleetcError
from toolchain.measure.timing import (
    Timing,
    TimingConfig,
    pick_cpus,
    pinned,
    summarize,
    time_callable,
)

__all__ = ["compile_relax", "input_arrays", "time_vm", "time_tvm_local", "set_tvm_threads"]

logger = logging.getLogger(__name__)

_NP = {1: np.float32, 10: np.float16, 7: np.int64, 6: np.int32, 2: np.uint8, 3: np.int8}


def input_arrays(model: onnx.ModelProto, seed: int = 0) -> list[np.ndarray]:
    """Seeded arrays for the model's graph inputs (initializers excluded), in order."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
        dtype = _NP.get(t.elem_type, np.float32)
        arr = rng.standard_normal(shape) if np.issubdtype(dtype, np.floating) \
            else rng.integers(0, 2, shape)
        out.append(np.asarray(arr, dtype=dtype))
    return out


def compile_relax(model: onnx.ModelProto, target):
    """The relax executable of `model` for `target` (a tvm Target), built exactly as fleetc
    ships it (`passes.emit_tvm.build_module`: default schedules, tuning records applied)."""
    from passes.emit_tvm import build_module

    try:
        return build_module(model, target)[0]
    except FleetcError as err:
        raise BadInputError(f"TVM cannot compile the model: {err}") from err


def set_tvm_threads(threads: int) -> None:
    """Size TVM's CPU thread pool (0 = one per core) for the calling process."""
    import tvm

    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    n = threads if threads > 0 else len(os.sched_getaffinity(0))
    if config is not None:
        config(1, n)  # 1 = big cores; n threads
    else:
        os.environ["TVM_NUM_THREADS"] = str(n)


def time_vm(executable, dev, arrays: list[np.ndarray], config: TimingConfig) -> Timing:
    """Time `main` of a relax VM on `dev` (local or remote) with TVM's time_evaluator."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, dev)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    once = vm.time_evaluator("main", dev, number=1, repeat=max(1, config.warmup))(*args)
    once_ms = max(1e-3, float(np.min(once.results)) * 1e3)
    number = max(1, int(np.ceil(config.min_sample_ms / once_ms)))
    repeats = max(3, min(config.repeats, int(config.max_seconds * 1e3 / (once_ms * number))))
    result = vm.time_evaluator("main", dev, number=number, repeat=repeats)(*args)
    return summarize([r * 1e3 for r in result.results], number, config.outlier_mads)


def time_tvm_local(model: onnx.ModelProto, target, threads: int = 1,
                   config: TimingConfig | None = None) -> Timing:
    """Build `model.so` for `target` (a tvm Target for this CPU) exactly as compile ships it
    (`compile_relax`), load it back and time it here in the relax VM, pinned."""
    import tvm

    with tempfile.TemporaryDirectory(prefix="fleetc-tvm-") as tmp:
        # the module as compile ships it: model.so exported, then loaded back
        compile_relax(model, target).export_library(str(Path(tmp) / "model.so"))
        executable = tvm.runtime.load_module(str(Path(tmp) / "model.so"))
    set_tvm_threads(threads)
    config = config or TimingConfig()
    with pinned(pick_cpus(threads)):
        if threads != 1:
            return time_vm(executable, tvm.cpu(), input_arrays(model), config)
        # One TVM thread computes on the calling thread: time it with the thread's CPU clock
        # (on the shared machine wall time was 4-6x the thread time for the same conv).
        from tvm import relax

        vm = relax.VirtualMachine(executable, tvm.cpu())
        args = [tvm.runtime.tensor(a, tvm.cpu()) for a in input_arrays(model)]
        return time_callable(lambda: vm["main"](*args), config, clock="thread")
