"""File helpers shared by every stage: atomic writes, folder swaps, file digests, tool versions."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

__all__ = ["atomic_write", "replace_dir", "sha256_file", "tool_versions", "TOOLS",
           "DIGESTS", "sha256_once", "write_digests", "check_digests", "owned_temp_dir",
           "pid_alive", "remove_dead_temps", "publish_dir"]

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


# Self-verifying folders under $FLEETC_HOME (build cache entries, the sensitivity cache,
# predictor packages): a digest file, written last, records the size and sha256 of every file.

DIGESTS = "digests.json"
_DIGESTS_MAX_BYTES = 4 << 20


def sha256_once(path: str | os.PathLike, memo: dict | None = None) -> str:
    """sha256_file, remembered in `memo` under (path, size, mtime_ns, inode): with one memo per
    run, a run hashes each distinct file once however many devices read it."""
    if memo is None:
        return sha256_file(path)
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in memo:
        memo[key] = sha256_file(path)
    return memo[key]


def write_digests(folder: str | os.PathLike, names: Iterable[str] | None = None) -> None:
    """Record the size and sha256 of `names` (default: every file below `folder`) in
    `folder/digests.json`, written last and atomically: a folder whose files match it was
    written completely and is unchanged since (`check_digests`)."""
    folder = Path(folder)
    if names is None:
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
                 if p.is_file() and p != folder / DIGESTS]
    files = {n: {"size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
             for n in sorted(names)}
    atomic_write(folder / DIGESTS, json.dumps({"version": 1, "files": files}, indent=1) + "\n")


def check_digests(folder: str | os.PathLike, memo: dict | None = None) -> str | None:
    """What is wrong with `folder` against its digest file, or None: the digest file missing,
    unreadable or garbled, or a listed file missing, of another size or another sha256. Sizes
    are compared first (a truncated file costs no hashing)."""
    folder = Path(folder)
    listed = _read_digests(folder)
    if isinstance(listed, str):
        return listed
    for name, want in listed.items():
        try:
            size = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if not (folder / name).is_file():
            return f"{name} is not a file"
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} were written"
    for name, want in listed.items():
        try:
            digest = sha256_once(folder / name, memo)
        except OSError as err:
            return f"{name} is unreadable ({err.strerror})"
        if digest != want["sha256"]:
            return f"{name} differs from what was written (sha256)"
    return None


def _read_digests(folder: Path) -> dict | str:
    """The `files` table of folder/digests.json, or what is wrong with it."""
    try:
        with open(folder / DIGESTS, "rb") as f:
            raw = f.read(_DIGESTS_MAX_BYTES + 1)
    except FileNotFoundError:
        return f"{DIGESTS} is missing"
    except OSError as err:
        return f"{DIGESTS} is unreadable ({err.strerror})"
    try:
        doc = json.loads(raw) if len(raw) <= _DIGESTS_MAX_BYTES else None
    except (ValueError, RecursionError):
        doc = None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("version") == 1 else None
    if not isinstance(files, dict) or not all(_digest_row(n, r) for n, r in files.items()):
        return f"{DIGESTS} is garbled"
    return files


def _digest_row(name: str, row) -> bool:
    parts = PurePosixPath(name).parts
    return (isinstance(row, dict) and type(row.get("size")) is int and row["size"] >= 0
            and isinstance(row.get("sha256"), str) and len(row["sha256"]) == 64
            and bool(parts) and not name.startswith("/") and ".." not in parts)


# Temporary folders owned by a process: `<prefix><pid>-<random>@<host>`, removed on every way
# out of the `owned_temp_dir` block; a killed owner's are removed by a later `remove_dead_temps`.

def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


@contextlib.contextmanager
def owned_temp_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new folder `parent/<prefix><pid>-<random>@<host>` (parent made if needed), removed
    when the block ends however it ends (SIGKILL aside: see `remove_dead_temps`)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", suffix=f"@{_host()}",
                                 dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (os.kill(pid, 0); another user's process counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temps(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the folders `parent/<prefix><pid>-*` of owners that are no longer running; a
    live owner's are left alone, and so are those made on another host (`...@<host>`: a
    shared $FLEETC_HOME, Dask workers), whose pids mean nothing here."""
    parent = Path(parent)
    pattern = re.compile(re.escape(prefix) + r"([1-9][0-9]{0,9})-[^@]*(?:@(.*))?$")
    removed = []
    for path in sorted(parent.iterdir()) if parent.is_dir() else []:
        match = pattern.match(path.name)
        if match and match.group(2) in (None, _host()) and path.is_dir() \
                and not path.is_symlink() and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def publish_dir(tmp: str | os.PathLike, dest: str | os.PathLike,
                scratch: str | os.PathLike) -> None:
    """Put the finished folder `tmp` at `dest` by rename, replacing whatever is there: a reader
    finds the old folder, none, or the new one, never a mix. What was at `dest` is moved into
    `scratch` (the caller's `owned_temp_dir`, whose removal deletes it); when another writer
    puts its folder in between, that one is moved aside too and the rename retried. For
    shared entries under $FLEETC_HOME (a user's output folder: `replace_dir`)."""
    tmp, dest, scratch = Path(tmp), Path(dest), Path(scratch)
    for attempt in range(10):
        try:
            os.rename(tmp, dest)
            return
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
        with contextlib.suppress(FileNotFoundError):
            os.rename(dest, scratch / f".old-{attempt}")
    raise OSError(errno.EEXIST, "other writers keep replacing it", str(dest))
