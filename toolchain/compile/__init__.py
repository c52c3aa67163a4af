"""One device: prepare (import, analysis, calibration, sensitivity), cost tables, choose a plan,
rewrite it, emit the TVM build and write the output folder with its report.

    from toolchain.compile import prepare, compile_model
    result = compile_model("model.onnx", target, latency_ms=1.5, outdir="build/host")

Modules: driver (the entry points), tables (per-decision cost tables), pricing (predicted
latency of a plan), rewrite (apply a plan), inspection (`fleetc inspect`), output and report
(the output folder).
"""
from __future__ import annotations

__all__ = ["prepare", "compile_model", "Prepared", "CompileResult"]


def __getattr__(name: str):
    # Resolved on first use (PEP 562): importing a compile module does not import the driver.
    if name in __all__:
        from toolchain.compile import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'toolchain.compile' has no attribute {name!r}")
