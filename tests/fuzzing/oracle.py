"""Running one fuzz case and judging it.

A case runs in process through click's CliRunner, in the main thread, with the case folder
as working directory and `home/` in it as $FLEETC_HOME, under a deadline (SIGALRM raises
CaseTimeout, a BaseException the CLI's handlers do not catch). The oracle:

- exit code in {0, 2, 3, 4} (1 is an internal error, a bug; an escaped exception counts as 1);
- no "Traceback" in the output (stdout, stderr and log records);
- no hang (the deadline);
- every path the case laid out (inputs, a user's other files, links, special files) is
  unchanged: type, size and sha256;
- nothing written in the case folder outside -o, the depfile and $FLEETC_HOME (new parent
  folders of an output path are allowed; the system temp folder is outside the case folder);
- no partial output: the -o path is complete (a loadable .onnx; a compile folder with its
  manifest and every artifact it lists; a fleet folder whose fleet.json lists complete device
  folders) or absent, and present after exit 0.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shlex
import shutil
import signal
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from click.testing import CliRunner

from tests.fuzzing.cases import Case
from toolchain.files import sha256_file

__all__ = ["PROBLEMS", "Outcome", "CaseTimeout", "run_case", "materialize", "memory_limit"]

PROBLEMS = ("exit 1", "traceback", "hang", "modified input", "write outside", "partial output")


class CaseTimeout(BaseException):
    """A case ran past its deadline."""


@dataclass
class Outcome:
    case_id: str
    kind: str
    mutation: str
    command: str
    exit_code: int | None          # None: the case hung
    seconds: float
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    output: str = ""
    accepted_invalid: bool = False

    def error_line(self) -> str:
        lines = [ln for ln in self.output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return ((errors or lines or [""])[-1])[:200]

    def repro(self) -> str:
        """One line: the problems, the case, the command, what it said, how to replay it."""
        what = ", ".join(self.problems) or "ok"
        extra = f" ({'; '.join(self.details)[:200]})" if self.details else ""
        return (f"[{what}] {self.case_id} {self.mutation[:120]} | {self.command[:160]} -> "
                f"exit {self.exit_code}: {self.error_line()}{extra} | replay: "
                f"python benchmarks/fuzz.py --replay {self.case_id}")


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise CaseTimeout in the main thread after `seconds`."""
    def fire(signum, frame):
        raise CaseTimeout()
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def memory_limit(extra_bytes: int):
    """Cap this process's address space at its current size plus `extra_bytes` (a case that
    allocates without bound gets MemoryError instead of the machine's memory)."""
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = now + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, now + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def materialize(case: Case, folder: Path) -> None:
    """Lay out the case's folders, files, special files and links under `folder`."""
    for rel in case.dirs:
        (folder / rel).mkdir(parents=True, exist_ok=True)
    for rel, data in case.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    for rel in case.fifos:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(folder / rel)
    for rel, target in case.links.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, folder / rel)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under `folder` (links not followed): kind, and size + sha256 for files."""
    out: dict[str, tuple] = {}

    def walk(path: str, prefix: str) -> None:
        with os.scandir(path) as entries:
            for e in entries:
                rel = prefix + e.name
                if e.is_symlink():
                    out[rel] = ("link", os.readlink(e.path))
                elif e.is_dir(follow_symlinks=False):
                    out[rel] = ("dir",)
                    walk(e.path, rel + "/")
                elif e.is_file(follow_symlinks=False):
                    out[rel] = ("file", e.stat(follow_symlinks=False).st_size,
                                sha256_file(e.path))
                else:
                    out[rel] = ("special", stat.S_IFMT(e.stat(follow_symlinks=False).st_mode))
    walk(str(folder), "")
    return out


def _invoke(case: Case, folder: Path, timeout: float, command):
    """(result or None if it hung, seconds): the CLI in process, in `folder`, with its home."""
    from toolchain.cli import cli

    handlers, level = logging.root.handlers[:], logging.root.level
    logging.root.handlers = []   # the CLI's basicConfig then logs into this run's stderr
    cwd = os.getcwd()
    start = time.monotonic()
    os.chdir(folder)
    try:
        with deadline(timeout):
            # no calibration of predictors to this CPU: 20 s of timing per case's new home
            env = {"FLEETC_HOME": str(folder / "home"), "FLEETC_DEBUG": None,
                   "FLEETC_CALIBRATE": "0"}
            return CliRunner().invoke(command or cli, case.args, env=env), \
                time.monotonic() - start
    except CaseTimeout:
        return None, time.monotonic() - start
    finally:
        os.chdir(cwd)
        logging.root.handlers = handlers
        logging.root.setLevel(level)


def run_case(case: Case, root: Path, timeout: float = 30.0, command=None,
             keep: bool = False) -> Outcome:
    """Lay the case out in a new folder under `root`, run it, judge it (and remove the
    folder unless `keep`). `command`: the click command to run (default: fleetc's root)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{case.kind}-{case.index}-", dir=root))
    try:
        materialize(case, folder)
        allowed = _allowed_roots(case, folder)
        before = snapshot(folder)
        result, seconds = _invoke(case, folder, timeout, command)
        after = snapshot(folder)
        return _judge(case, folder, before, after, result, seconds, allowed)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _judge(case, folder, before, after, result, seconds, allowed) -> Outcome:
    out = Outcome(case.id, case.kind, case.mutation, case.command,
                  None if result is None else result.exit_code, round(seconds, 2))
    if result is None:
        out.problems.append("hang")
        out.details.append(f"no exit within {seconds:.0f} s")
    else:
        out.output = result.output[-20_000:]
        _check_exit(out, result)
    changed = _changed(before, after)
    modified = [p for p in case.protected() if before.get(p) != after.get(p)]
    if modified:
        out.problems.append("modified input")
        out.details.append(f"changed or removed: {', '.join(map(repr, modified[:5]))}")
    if result is not None:
        outside = [p for p in changed if p not in modified
                   and not _is_allowed(p, allowed, after)]
        if outside:
            out.problems.append("write outside")
            out.details.append(f"written: {', '.join(map(repr, outside[:5]))}")
        partial = _output_problem(case, folder, before, after, changed, out.exit_code)
        if partial:
            out.problems.append("partial output")
            out.details.append(partial)
        out.accepted_invalid = bool(case.expect_bad) and out.exit_code not in (2, 3)
    return out


def _check_exit(out: Outcome, result) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        out.details.append(f"escaped {type(result.exception).__name__}: "
                           f"{str(result.exception)[:160]}")
    if out.exit_code not in (0, 2, 3, 4):
        out.problems.append("exit 1")
        if out.exit_code != 1:
            out.details.append(f"exit code {out.exit_code}")
    if "Traceback" in result.output:
        out.problems.append("traceback")


def _changed(before: dict, after: dict) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


def _rel(path: str, folder: Path) -> str | None:
    """`path` (relative to the case folder) as a normalized relative path, None if outside."""
    full = os.path.normpath(os.path.join(folder, path))
    rel = os.path.relpath(full, folder)
    return None if rel == ".." or rel.startswith("../") else ("" if rel == "." else rel)


def _allowed_roots(case: Case, folder: Path) -> list[str]:
    """Where a run may write: each output path as given and as its links resolve (computed
    before the run), and home/."""
    roots = ["home"]
    for path in case.outputs:
        for candidate in (path, os.path.realpath(folder / path) if path else None):
            rel = _rel(candidate, folder) if candidate else None
            if rel is not None:
                roots.append(rel)
    return roots


def _is_allowed(path: str, roots: list[str], after: dict) -> bool:
    for root in roots:
        if root == "" or path == root or path.startswith(root + "/"):
            return True
        if root.startswith(path + "/") and after.get(path) == ("dir",):
            return True   # a parent folder of the output path, made for it
    return False


def _output_problem(case, folder, before, after, changed, code) -> str | None:
    """What is incomplete about the -o output, or None (complete, or untouched and absent)."""
    if case.output_kind is None or not case.outputs:
        return None
    rel = _rel(case.outputs[0], folder)
    if rel is None:
        return None
    path = folder / rel if rel else folder
    touched = any(p == rel or p.startswith(rel + "/") or rel == "" for p in changed)
    if not touched:
        if code == 0 and not os.path.lexists(path):
            return f"exit 0 but no output at {case.outputs[0]!r}"
        return None
    if not os.path.lexists(path):
        return None
    check = {"onnx": _onnx_problem, "compile": _compile_problem,
             "fleet": _fleet_problem}[case.output_kind]
    return check(path)


def _onnx_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name}: not a file"
    try:
        onnx.checker.check_model(onnx.load(str(path)))
    except Exception as err:  # any failure to load is the finding
        return f"{path.name}: not a loadable model ({type(err).__name__})"
    return None


def _compile_problem(path: Path) -> str | None:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        return f"{path.name}/manifest.json unreadable ({type(err).__name__})"
    missing = [a.get("path") for a in manifest.get("artifacts", [])
               if isinstance(a, dict) and not (path / str(a.get("path"))).is_file()]
    if missing:
        return f"{path.name}: artifacts missing {missing}"
    if (path / "model.onnx").is_file():
        return _onnx_problem(path / "model.onnx")
    return f"{path.name}/model.onnx missing"


def _fleet_problem(path: Path) -> str | None:
    try:
        doc = json.loads((path / "fleet.json").read_text())
    except (OSError, ValueError) as err:
        return f"{path.name}/fleet.json unreadable ({type(err).__name__})"
    for device in doc.get("devices", []):
        sub = device.get("outdir")
        if sub:
            problem = _compile_problem(path / sub)
            if problem:
                return f"device {device.get('name')!r}: {problem}"
    return None


def shell_line(case: Case, folder: Path) -> str:
    """The command to rerun a kept case folder by hand."""
    return (f"cd {shlex.quote(str(folder))} && FLEETC_HOME={shlex.quote(str(folder / 'home'))}"
            f" FLEETC_CALIBRATE=0 {case.command}")
