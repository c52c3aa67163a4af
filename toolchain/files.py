"""File helpers shared by every stage: atomic writes, folder swaps, file digests, tool versions."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata as md
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from toolchain.errors import BadInputError

__all__ = ["atomic_write", "sha256_file", "tool_versions", "TOOLS",
           "DIGESTS", "sha256_once", "write_digests", "check_digests", "owned_temp_dir",
           "pid_alive", "remove_dead_temps", "publish_dir"]

TOOLS = ("fleetc", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "numpy")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file through a temporary file in the same folder and a rename; its mode is what
    open() would give a new file (0666 & ~umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
            return f"{name} has changed (sha256)"
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
    """Whether process `pid` runs (os.kill(pid, 0); another user's process counts). A zombie
    (exited, not yet reaped by its parent) is dead: its temp folders are leftovers."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:   # Linux: the state letter follows the parenthesized command name
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 1:].split()[:1] == ["Z"]


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
    shared entries under $FLEETC_HOME and for a user's output folder."""
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


# Input files read at the edge (plans, fleet files, targets, calibration data, models): regular
# files only; JSON and TOML of bounded size, nesting and numbers, so a hostile file is a one-line
# BadInputError naming it, never a hang, a memory blow-up or a RecursionError.

MAX_TEXT_BYTES = 16 << 20     # a plan, fleet file or target file is a few kB
MAX_DEPTH = 32                # the deepest fleetc schema nests 4 levels
_MAX_NUMBER_CHARS = 64        # int64 has 19 digits; a float's shortest repr at most 24
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def safe_name(value) -> bool:
    """Whether `value` can name a file or folder fleetc writes (a device's output folder, a
    target file, a predictor package): 1-64 letters, digits, '.', '_' or '-', the first a letter
    or digit, and nothing more (fullmatch: `$` would let a trailing newline through)."""
    return isinstance(value, str) and _SAFE_NAME.fullmatch(value) is not None


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` if it is a regular file (symlinks followed); else BadInputError saying what it
    is: missing, a folder, or a device, FIFO or socket (never read: /dev/zero never ends)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such {what}") from None
    except (OSError, ValueError) as err:
        raise BadInputError(f"{path}: cannot open the {what} "
                            f"({getattr(err, 'strerror', None) or err})") from None
    if stat.S_ISDIR(mode):
        raise BadInputError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        raise BadInputError(f"{path}: is a special file (device, FIFO or socket), not a {what}")
    return path


def read_text(path: str | os.PathLike, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes (BadInputError otherwise)."""
    path = regular_file(path, what)
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as err:
        raise BadInputError(f"{path}: cannot read the {what} ({err.strerror})") from None
    if len(raw) > limit:
        raise BadInputError(f"{path}: larger than {limit >> 20} MB; a {what} is a small text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def load_json(path: str | os.PathLike, what: str):
    """The JSON document in `path`, checked by `check_tree`; numbers of at most 64 characters
    (no NaN / Infinity). Every problem is a BadInputError naming the file."""
    text = read_text(path, what)

    def number(kind):
        def parse(s: str):
            if len(s) > _MAX_NUMBER_CHARS:
                raise BadInputError(f"{path}: a number of {len(s)} characters (at most "
                                    f"{_MAX_NUMBER_CHARS})")
            return kind(s)
        return parse

    def constant(s: str):
        raise BadInputError(f"{path}: {s} is not a JSON number (finite numbers only)")

    try:
        doc = json.loads(text, parse_int=number(int), parse_float=number(float),
                         parse_constant=constant)
    except RecursionError:
        raise BadInputError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: not valid JSON ({err})") from None
    check_tree(doc, str(path))
    return doc


def load_toml(path: str | os.PathLike, what: str) -> dict:
    """The TOML table in `path`, checked by `check_tree`. Every problem is a BadInputError
    naming the file."""
    text = read_text(path, what)
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise BadInputError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    except tomllib.TOMLDecodeError as err:
        raise BadInputError(f"{path}: malformed TOML: {err}") from None
    except ValueError:  # int() refuses integers of more than 4300 digits
        raise BadInputError(f"{path}: an integer of more than 4300 digits") from None
    check_tree(doc, str(path))
    return doc


def check_tree(doc, label: str) -> None:
    """A parsed document's bounds: nesting at most MAX_DEPTH, integers within int64, floats
    finite. The error names the key (`device[0].latency_ms`) and the value."""
    stack = [(doc, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        where = f"{label}: {key or 'document'}"
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise BadInputError(f"{label}: nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, f"{key}[{k}]" if isinstance(k, int) else
                          f"{key}.{k}" if key else str(k), depth + 1) for k, v in items)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
            raise BadInputError(f"{where}: integer out of range (64 bits), "
                                f"{len(str(abs(value)))} digits")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadInputError(f"{where}: {value} is not a finite number")


__all__ += ["safe_name", "regular_file", "read_text", "load_json", "load_toml", "check_tree",
            "MAX_TEXT_BYTES", "MAX_DEPTH"]


# Output folders and files are fleetc's alone (docs/compile.md "OUTDIR", docs/fleet.md
# "Outputs"): a folder fleetc writes is new, empty or one it wrote before (its marker says which
# kind); no output is, holds or sits inside an input; modes follow the umask.

OUTPUT_MARKER = ".fleetc-output"    # in every output folder fleetc writes: "compile" or "fleet"
OUTPUT_KINDS = ("compile", "fleet")
# Folders written before the marker: a fleetc manifest.json / fleet.json (file, keys it has).
_LEGACY_OUTPUTS = {"compile": ("manifest.json", ("artifacts", "predicted")),
                   "fleet": ("fleet.json", ("devices", "summary"))}
_SPECIAL = "a special file (FIFO, device or socket)"


def check_output_dir(path: str | os.PathLike, inputs: Iterable, kind: str,
                     force: bool = False) -> Path:
    """Where an output folder of `kind` ("compile" / "fleet") may be written: `path` resolved
    (a symlinked folder is followed; its target is what gets written).

    Allowed: a new path, an empty folder, or a folder fleetc wrote before as a `kind` output
    (`output_kind`); any other folder is a BadInputError naming it, unless `force`. Never, even
    with `force`: an empty path, a filesystem root, a last part that is a file, a special file,
    a link to one or a broken link, a path below a file, a folder that is, holds or sits inside
    one of `inputs` (files the command reads)."""
    dest = _output_path(path, "folder")
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"{os.fspath(path)}: is {_what_is(Path(path))}, not a folder")
    _refuse_inputs(path, dest, inputs, "folder")
    if dest.is_dir() and not force:
        _refuse_foreign(path, dest, kind)
    return dest


def check_output_file(path: str | os.PathLike, inputs: Iterable) -> Path:
    """Where an output file (`rewrite -o`, `fleet --depfile`) may be written: `path` resolved (a
    link to a regular file is followed: that file is replaced, the link kept). A BadInputError
    for an empty path, a folder, a special file (a FIFO is never replaced), a link to either, a
    broken link, a path below a file, or one of `inputs` (by path or as the same file)."""
    dest = _output_path(path, "file")
    if dest.exists() and not dest.is_file():
        raise BadInputError(f"{os.fspath(path)}: is {_what_is(Path(path))}, not a file")
    _refuse_inputs(path, dest, inputs, "file")
    return dest


def output_kind(folder: str | os.PathLike) -> str | None:
    """The kind of fleetc output `folder` holds ("compile" / "fleet"): the word in its
    `.fleetc-output` marker or, in folders written before markers, a fleetc manifest.json
    (compile) / fleet.json (fleet); None for anything else."""
    folder = Path(folder)
    raw = _small_regular_file(folder / OUTPUT_MARKER, 64)
    if raw is not None:
        word = raw.decode("utf-8", "replace").strip()
        return word if word in OUTPUT_KINDS else None
    for kind, (name, keys) in _LEGACY_OUTPUTS.items():
        raw = _small_regular_file(folder / name, MAX_TEXT_BYTES)
        try:
            doc = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and all(k in doc for k in keys):
            return kind
    return None


def write_output_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark `folder` as a fleetc output of `kind` (what `check_output_dir` accepts next time)."""
    atomic_write(Path(folder) / OUTPUT_MARKER, f"{kind}\n")


def current_umask() -> int:
    """The process's umask, read from /proc where there is one (os.umask must set it to read
    it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file or folder the mode open() / mkdir() would have given it: 0666 & ~umask for a
    file, 0777 & ~umask for a folder or an executable file (mkstemp / mkdtemp use 0600 / 0700)."""
    mode = os.stat(path).st_mode
    full = 0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666
    os.chmod(path, full & ~current_umask())


def _output_path(path: str | os.PathLike, what: str) -> Path:
    """`path` resolved, after the checks every output path gets: not empty, not a broken link
    or a link loop, not a filesystem root, not below a file."""
    text = os.fspath(path)
    if not text.strip():
        raise BadInputError(f"the output {what} path is empty")
    try:
        given = Path(text)
        if given.is_symlink() and not given.exists():
            raise BadInputError(f"{text}: is a broken symbolic link; give the output {what} "
                                "itself")
        dest = given.resolve()
        above = next((p for p in dest.parents if p.exists()), None)
    except (OSError, RuntimeError, ValueError) as err:   # link loop, NUL byte, permission
        raise BadInputError(f"{text}: not a usable output {what} path "
                            f"({getattr(err, 'strerror', None) or err})") from None
    if dest.parent == dest:
        raise BadInputError(f"{text}: a filesystem root cannot be an output {what}")
    if above is not None and not above.is_dir():
        raise BadInputError(f"{text}: {above} is not a folder")
    return dest


def _what_is(path: Path) -> str:
    link = "a symbolic link to " if path.is_symlink() else ""
    mode = os.stat(path).st_mode
    kind = "a folder" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else _SPECIAL
    return link + kind


def _refuse_inputs(path: str | os.PathLike, dest: Path, inputs: Iterable, what: str) -> None:
    """No output is, holds or sits inside a file the command reads (`--force` or not)."""
    label = os.fspath(path)
    for item in inputs:
        if item is None:
            continue
        try:
            src = Path(item).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if src == dest or _same_file(src, dest):
            relation = "is"
        elif dest in src.parents:
            relation = "holds"
        elif src in dest.parents:
            relation = "is inside"
        else:
            continue
        raise BadInputError(f"{label}: refusing to overwrite an input: the output {what} "
                            f"{relation} the input {Path(item).name}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_foreign(path: str | os.PathLike, dest: Path, kind: str) -> None:
    """An existing folder must be empty or fleetc's own output of `kind`."""
    try:
        with os.scandir(dest) as entries:
            empty = next(entries, None) is None
    except OSError as err:
        raise BadInputError(f"{os.fspath(path)}: cannot read the output folder "
                            f"({err.strerror})") from None
    found = None if empty else output_kind(dest)
    if empty or found == kind:
        return
    holds = f"a fleetc {found} output, not a {kind} one" if found else \
        "files fleetc did not write"
    raise BadInputError(f"{os.fspath(path)}: holds {holds} (--force to use it anyway)")


def _small_regular_file(path: Path, limit: int) -> bytes | None:
    """The bytes of `path` if it is a regular file of at most `limit` bytes, else None (a FIFO
    is never opened: it could block)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError:
        return None


__all__ += ["OUTPUT_MARKER", "OUTPUT_KINDS", "check_output_dir", "check_output_file",
            "output_kind", "write_output_marker", "current_umask",
            "follow_umask"]
