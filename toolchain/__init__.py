"""fleetc's Python API: the operations of the CLI as functions.

    import toolchain
    report = toolchain.inspect("model.onnx")      # the dict `fleetc inspect --json` prints

Heavier entry points (compile, rewrite, fleet) live in their modules: `toolchain.compile.driver`,
`toolchain.compile.rewrite`, `toolchain.fleet.run`.
"""
from __future__ import annotations

__all__ = ["inspect"]


def __getattr__(name: str):
    # Resolved on first use: passes import toolchain's modules, so the package itself must not
    # import them eagerly.
    if name == "inspect":
        from toolchain.compile.inspection import inspect

        return inspect
    raise AttributeError(f"module 'toolchain' has no attribute {name!r}")
