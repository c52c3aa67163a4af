"""Running `fleetc` as a real process for the interruption tests: its own process group (the
group a terminal's Ctrl-C goes to), stderr read line by line as it comes, its descendants
seen through psutil, orphans reaped here.

Orphans: a process whose parent died is adopted by the nearest "child subreaper", else by
pid 1, which reaps them - at once on a normal system, seconds later or never in some
containers (this machine's pid 1 takes about 3 s). Until then a dead orphan is a zombie
whose pid looks alive to `os.kill(pid, 0)`. The tests make themselves the subreaper
(`adopting_orphans`), reap the orphans of a killed fleetc as init would, and count a zombie
as dead.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

FLEETC = str(Path(sys.executable).parent / "fleetc")

HOST_FP32 = '''
name = "host-fp32"
description = "this CPU through onnxruntime, 1 thread, fp32 only (test target)"
precisions = ["fp32"]
predictor = "host-ort-1t"
tvm_target = "llvm"
[measure]
kind = "local-ort"
threads = 1
'''

_PR_SET_CHILD_SUBREAPER = 36   # <linux/prctl.h>


class Fleetc:
    """`fleetc ARGS` started in a new session (its own process group), stderr collected."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen([FLEETC, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stderr, self.stderr),
                                               (self.proc.stdout, self.stdout))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float) -> int:
        """Index of the first stderr line matching `pattern`; fails if the process ends or
        `timeout` passes first."""
        found = wait_until(lambda: _first(self.stderr, pattern), timeout,
                           stop=lambda: self.proc.poll() is not None)
        assert found is not None, (f"no stderr line {pattern!r} within {timeout} s "
                                   f"(exit {self.proc.poll()}):\n" + "\n".join(self.stderr))
        return found

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def finish(self, timeout: float) -> float | None:
        """Seconds until the process ended (None: still running after `timeout`); its output
        is then complete."""
        start = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(timeout=10)
        return time.monotonic() - start

    def kill_all(self, others: list[psutil.Process]) -> None:
        """Clean-up (after a failed assertion): the process, its descendants and `others`."""
        for p in [*self.descendants(), *others]:
            with contextlib.suppress(psutil.Error):   # gone (psutil sees a reused pid)
                p.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _first(lines: list[str], pattern: str) -> int | None:
    return next((i for i, ln in enumerate(list(lines)) if re.search(pattern, ln)), None)


def wait_until(check: Callable[[], object], timeout: float,
               stop: Callable[[], bool] | None = None, step: float = 0.05):
    """Poll `check` until it gives something not None/False (returned), `stop()` is true or
    `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline or (stop is not None and stop()):
            return None
        time.sleep(step)


def alive(p: psutil.Process) -> bool:
    """Running (a zombie has ended: only its exit status is left to collect)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def survivors(procs: list[psutil.Process], timeout: float) -> list[str]:
    """The processes of `procs` still running after up to `timeout` seconds, as
    "pid command line" (read before: a survivor may end while the failure is reported)."""
    names = {p.pid: describe(p) for p in procs}
    wait_until(lambda: not any(alive(p) for p in procs), timeout)
    return [names[p.pid] for p in procs if alive(p)]


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[-100:]}"
    except psutil.Error:
        return f"{p.pid} (gone)"


@contextlib.contextmanager
def adopting_orphans() -> Iterator[Callable[[list[psutil.Process]], None]]:
    """This process as the child subreaper for the block; yields `reap(procs)`, which collects
    those of `procs` that ended and were adopted here."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    def reap(procs: list[psutil.Process]) -> None:
        for p in procs:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
    try:
        yield reap
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
