"""Time ONNX models in onnxruntime on this machine (CPU execution provider)."""
from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from toolchain.errors import BadInputError
from toolchain.measure.timing import Timing, TimingConfig, pick_cpus, pinned, time_callable

__all__ = ["ort_session", "random_feed", "time_ort", "resolved_threads"]

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def resolved_threads(threads: int) -> int:
    """0 means one thread per available core."""
    return threads if threads > 0 else len(os.sched_getaffinity(0))


def ort_session(model: onnx.ModelProto | bytes | str, threads: int = 1):
    """An InferenceSession with all graph optimizations and a fixed intra-op thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = resolved_threads(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise BadInputError(f"onnxruntime cannot load the model: {str(err).splitlines()[0]}") \
            from err


def random_feed(session, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every session input; symbolic dimensions become 1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise BadInputError(f"input {arg.name}: unsupported type {arg.type}")
        if np.issubdtype(dtype, np.floating):
            feed[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[arg.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feed


def time_ort(model: onnx.ModelProto | bytes | str, threads: int = 1,
             config: TimingConfig | None = None, pin: bool = True) -> Timing:
    """Median latency of one inference in onnxruntime, the calling thread pinned when asked.

    With one thread onnxruntime computes on the calling thread: timed with the thread's CPU
    clock (immune to other processes sharing the core); with more, by the wall clock."""
    n = resolved_threads(threads)
    with pinned(pick_cpus(n) if pin else None):
        # The session is made inside the pinned region so its worker threads inherit the mask.
        session = ort_session(model, n)
        feed = random_feed(session)
        names = [o.name for o in session.get_outputs()]
        return time_callable(lambda: session.run(names, feed), config or TimingConfig(),
                             clock="thread" if n == 1 else "wall")
