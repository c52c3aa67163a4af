"""Child processes that Ctrl-C stops at once and that never outlive their parent.

A long C call (a TVM build, onnxruntime timing) does not return to Python until it ends, so
a Ctrl-C in the process that makes it waits for it (and may surface as the call's own
error). Such calls run in a spawned child process instead (`ChildProcess`, or `call` for this
thread's shared one): the parent waits in short polls (`POLL_SECONDS`), so KeyboardInterrupt
reaches it at once, and then kills the child.

Every child (and every fleet worker, through `child_init`):
- ignores SIGINT: a terminal sends Ctrl-C to the whole process group, and stopping the work is
  the parent's decision. It is started with SIGINT blocked (`sigint_blocked`), so a Ctrl-C
  during its start-up neither kills it with a traceback nor is lost by the parent;
- dies with its parent: Linux's parent-death signal (SIGKILL, sent when the thread that
  started the child ends: its process ends, or the thread that owns a per-thread child),
  elsewhere a watchdog thread that ends the child when its parent pid changes. A killed fleetc
  thus leaves no work running that could write after it.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator

from toolchain.errors import FleetcError

__all__ = ["ChildProcess", "ChildDiedError", "call", "child_init", "die_with_parent",
           "sigint_blocked", "POLL_SECONDS"]

POLL_SECONDS = 0.2       # how often a waiting parent looks up (Ctrl-C is seen within this)
WATCHDOG_SECONDS = 0.5   # how often a child without a parent-death signal checks its parent
_PR_SET_PDEATHSIG = 1    # <linux/prctl.h>


class ChildDiedError(FleetcError):
    """The child process ended without an answer (a crash in C code, or it was killed)."""

    def __init__(self, name: str, exitcode: int | None) -> None:
        super().__init__(f"the {name} process died (exit code {exitcode})")
        self.name, self.exitcode = name, exitcode

    def __reduce__(self):
        return type(self), (self.name, self.exitcode)


def die_with_parent(parent_pid: int) -> None:
    """End this process when process `parent_pid` (its parent) ends: the parent-death signal on
    Linux, else a watchdog thread; a parent already gone ends it now."""
    if not _parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                         name="fleetc-parent-watchdog").start()
    if os.getppid() != parent_pid:   # the parent died before the signal was armed
        os._exit(1)


def _parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)


def child_init(parent_pid: int) -> None:
    """What every child runs first: SIGINT ignored (then unblocked) and death with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    die_with_parent(parent_pid)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread for the block: processes started in it inherit the mask,
    so they start immune to Ctrl-C until `child_init`; one that arrives meanwhile is delivered
    here when the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _serve(conn, parent_pid: int) -> None:
    """The child: (function, args, kwargs) in, ("ok", value) or ("error", exception) out."""
    child_init(parent_pid)
    while True:
        try:
            fn, args, kwargs = conn.recv()
            reply = ("ok", fn(*args, **kwargs))
        except EOFError:   # the parent closed the pipe: done
            return
        except Exception as err:  # noqa: BLE001 - raised again in the parent
            reply = ("error", _portable(err))
        try:
            conn.send(reply)
        except OSError:   # the parent is gone or stopped waiting
            return
        except Exception as err:  # noqa: BLE001 - a value that does not pickle
            with contextlib.suppress(OSError):
                conn.send(("error", _portable(err)))


def _portable(err: Exception) -> Exception:
    """`err` if it survives pickling, else a RuntimeError that names it; with the child's
    traceback as a note where the exception keeps its attributes (shown with tracebacks:
    `fleetc --debug`)."""
    note = "in the child process:\n" + "".join(traceback.format_exception(err)).rstrip()
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any pickling failure
        err = RuntimeError(f"{type(err).__name__}: {err}")
    err.add_note(note)
    return err


class ChildProcess:
    """`call(fn, *args, **kwargs)` in one spawned child process, started on first use and again
    after it died, and kept for the next call; `fn` must be a module-level function and its
    arguments and result picklable. An exception while waiting (Ctrl-C) kills the child at
    once; `close()` (or the with-block's end) stops it."""

    def __init__(self, name: str = "fleetc-child") -> None:
        self.name = name
        self._proc = None
        self._conn = None

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(kill=exc_type is not None)   # interrupted: do not wait for the call

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, os.getpid()), daemon=True,
                                 name=self.name)
        with sigint_blocked():
            self._proc.start()
        child.close()

    def call(self, fn: Callable, *args, **kwargs):
        if self._proc is None or not self._proc.is_alive():
            self.close()
            try:
                self._start()
            except BaseException:   # Ctrl-C during the start: do not leave the child
                self.close(kill=True)
                raise
        try:
            self._conn.send((fn, args, kwargs))
            while not self._conn.poll(POLL_SECONDS) and self._proc.is_alive():
                pass
            status, value = self._conn.recv()   # EOF at once if the child is gone
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            self.close(kill=True)
            raise ChildDiedError(self.name, code) from None
        except BaseException:   # Ctrl-C (or any other reason to stop waiting)
            self.close(kill=True)
            raise
        if status == "error":
            raise value
        return value

    def close(self, kill: bool = False) -> None:
        if self._conn is not None:
            self._conn.close()   # an idle child sees EOF and ends
        if self._proc is not None:
            self._proc.join(timeout=0 if kill else 5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = self._conn = None


_local = threading.local()


def call(fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)` in this thread's child process (kept for the next call, so its
    imports are paid once), or here in a daemonic process (a Dask worker), which may not have
    children."""
    if multiprocessing.current_process().daemon:
        return fn(*args, **kwargs)
    child = getattr(_local, "child", None)
    if child is None:
        child = _local.child = ChildProcess("fleetc-build")
    return child.call(fn, *args, **kwargs)
