"""File helpers shared by every stage: atomic writes, folder swaps, file digests, tool versions."""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "replace_dir", "sha256_file", "tool_versions", "TOOLS"]

TOOLS = ("fleetc", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "numpy")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(tmp: Path, outdir: Path) -> None:
    """Put the finished folder `tmp` in place; an existing `outdir` is replaced only at the end."""
    if outdir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old.", dir=outdir.parent))
        os.replace(outdir, old / "x")
        os.replace(tmp, outdir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, outdir)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """Installed versions of fleetc and the tools its outputs depend on ("missing" if absent)."""
    out = {}
    for dist in TOOLS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "missing"
    return out
