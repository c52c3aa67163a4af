"""Many devices: the fleet file (spec), per-device pricing (few-shot and fingerprint
predictors), and the run (cache, workers, fleet.json).

    from toolchain.fleet import load_fleet, run_fleet
    result = run_fleet(load_fleet("fleet.toml"), "build/fleet", jobs=2)
"""
from __future__ import annotations

__all__ = ["load_fleet", "run_fleet"]


def __getattr__(name: str):
    # Resolved on first use (PEP 562): importing the fleet file parser does not import compile.
    if name == "load_fleet":
        from toolchain.fleet.spec import load_fleet

        return load_fleet
    if name == "run_fleet":
        from toolchain.fleet.run import run_fleet

        return run_fleet
    raise AttributeError(f"module 'toolchain.fleet' has no attribute {name!r}")
