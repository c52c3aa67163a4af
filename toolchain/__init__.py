"""fleetc's Python API: the operations of the CLI as functions.

    import toolchain
    report = toolchain.inspect("model.onnx")      # the dict `fleetc inspect --json` prints

Heavier entry points (compile, rewrite, fleet) live in their modules: `toolchain.compile`,
`toolchain.rewrite`, `toolchain.fleet`.
"""
from __future__ import annotations

from toolchain.inspection import inspect

__all__ = ["inspect"]
