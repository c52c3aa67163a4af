"""Time one model on a target with the target's measurement back end (onnxruntime, TVM on the
host, or TVM RPC)."""
from __future__ import annotations

import onnx

from toolchain.measure.timing import Timing, TimingConfig
from toolchain.target import Target

__all__ = ["measure_model", "backend_name"]


def backend_name(target: Target) -> str:
    return {"local-ort": "onnxruntime", "local-tvm": "tvm", "rpc": "tvm-rpc"}[target.measure.kind]


def measure_model(target: Target, model: onnx.ModelProto, config: TimingConfig | None = None,
                  tracker: str | None = None) -> Timing:
    """Time one model on a target with its measurement back end."""
    kind = target.measure.kind
    if kind == "local-ort":
        from toolchain.measure.ort_backend import time_ort

        return time_ort(model, target.measure.threads, config)
    if kind == "local-tvm":
        from toolchain.measure.tvm_backend import time_tvm_local

        return time_tvm_local(model, target.tvm(), target.measure.threads, config)
    from toolchain.measure.rpc import DEFAULT_TRACKER, time_rpc

    address = tracker or target.measure.tracker or _env_tracker() or DEFAULT_TRACKER
    return time_rpc(model, target.tvm(), target.measure.rpc_key, address,
                    target.measure.timeout_s, config, target.cross_compiler)


def _env_tracker() -> str | None:
    import os

    return os.environ.get("FLEETC_TRACKER")
