"""Measure models on a target and append the results to a resumable CSV."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolchain.errors import BadInputError
from toolchain.measure.records import RowWriter, measured_designs
from toolchain.measure.timing import Timing, TimingConfig
from toolchain.target import Target

__all__ = ["measure_model", "profile", "ProfileResult", "backend_name"]

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ProfileResult:
    measured: int
    already: int
    failed: tuple[str, ...]


def profile(target: Target, designs: Sequence[tuple[str, Callable[[], onnx.ModelProto]]],
            out: str | Path, config: TimingConfig | None = None, tracker: str | None = None,
            progress: Callable[[str], None] | None = None) -> ProfileResult:
    """Measure every design not yet in `out`; one appended row each (resumable).

    A design that fails (bad model, device error) is reported and skipped; an unreachable
    device stops the run (the rows so far are kept).
    """
    from toolchain.measure.rpc import DeviceUnreachableError

    done = measured_designs(out)
    todo = [(n, b) for n, b in designs if n not in done]
    failed = []
    with RowWriter(out) as writer:
        for i, (name, build) in enumerate(todo, start=1):
            start = time.perf_counter()
            try:
                timing = measure_model(target, build(), config, tracker)
            except DeviceUnreachableError:
                raise
            except BadInputError as err:
                failed.append(name)
                logger.warning("%s: %s", name, err)
                continue
            writer.write(_row(target, name, timing))
            if progress:
                progress(f"[{len(done) + i}/{len(done) + len(todo)}] {name}: "
                         f"{timing.median_ms:.4g} ms (+/-{timing.spread_pct:.1f}%) "
                         f"in {time.perf_counter() - start:.1f} s")
    return ProfileResult(len(todo) - len(failed), len(done), tuple(failed))


def _row(target: Target, name: str, t: Timing) -> dict:
    return {"design": name, "latency_ms": t.median_ms, "energy_mj": target.energy_mj(t.median_ms),
            "spread_pct": round(t.spread_pct, 2), "min_ms": t.min_ms, "repeats": t.repeats,
            "number": t.number, "outliers": t.outliers, "clock": t.clock, "target": target.name,
            "backend": backend_name(target), "threads": target.measure.threads,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
