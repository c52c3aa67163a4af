"""Start-up check of the pinned TVM / TVM-FFI pair (`python -m toolchain.env`)."""
from __future__ import annotations

import importlib.metadata as md

from toolchain.errors import FleetcError

__all__ = ["check_tvm", "TVM_VERSION", "TVM_FFI_VERSION"]

TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def check_tvm() -> None:
    """Raise FleetcError naming the installed and the required versions when the pair is wrong.

    Newer apache-tvm-ffi builds segfault inside TVM 0.27's JSON serialization (MetaSchedule's
    database, tvm.ir.save_json), so a mismatch must be caught before TVM is used.
    """
    tvm, ffi = _version("apache-tvm"), _version("apache-tvm-ffi")
    if tvm != TVM_VERSION or ffi != TVM_FFI_VERSION:
        raise FleetcError(
            f"wrong TVM installation: apache-tvm {tvm or 'missing'} with apache-tvm-ffi "
            f"{ffi or 'missing'}; fleetc needs apache-tvm=={TVM_VERSION} with "
            f"apache-tvm-ffi=={TVM_FFI_VERSION} (newer ffi builds crash in TVM's JSON "
            f"serialization): pip install 'apache-tvm=={TVM_VERSION}' "
            f"'apache-tvm-ffi=={TVM_FFI_VERSION}'"
        )


if __name__ == "__main__":
    check_tvm()
    print(f"ok: apache-tvm {TVM_VERSION} with apache-tvm-ffi {TVM_FFI_VERSION}")
