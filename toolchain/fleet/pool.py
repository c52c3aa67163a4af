"""Where fleet builds run: in this process, in worker processes or on a Dask cluster.

The prepared state (`state`: the model and calibration data) reaches each worker once: a
worker process receives it in its initializer, a Dask worker as one future scattered to every
worker (`broadcast=True`); each job then carries only its plan and target. Worker processes
persist for the whole run.

Worker processes never outlive the run. Each ignores Ctrl-C and dies with this process
(`toolchain.measure.child.child_init`: a SIGKILL of fleetc kills them too; the build folders
they leave are removed by the next run). A pool closed with work unfinished (Ctrl-C, an
error) does not wait for the builds: it cancels what has not started and terminates the
workers - a building worker unwinds its build (its temporary folders are removed, its TVM
build process killed) and exits; one still running after `GRACE_SECONDS` is killed.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator

from toolchain.errors import BadInputError
from toolchain.measure.child import child_init, sigint_blocked

__all__ = ["Pool", "GRACE_SECONDS"]

GRACE_SECONDS = 2.0   # a terminated worker's time to unwind its build before it is killed


class Pool:
    """submit/as_completed of `build` over the in-process loop, a process pool or a Dask
    client. `build` must be a module-level function (it is pickled to workers)."""

    def __init__(self, build: Callable[[dict, dict], object], jobs: int, executor: str | None,
                 state: dict | None = None) -> None:
        self.build = build
        self.state = state or {}
        self.scattered = None
        self.client = self.pool = None
        self.futures: list = []
        if executor:
            if not executor.startswith("dask://"):
                raise BadInputError(f"--executor {executor!r}: expected dask://HOST:PORT")
            try:
                from distributed import Client
            except ImportError as err:
                raise BadInputError("--executor dask:// needs dask.distributed: pip install "
                                    "'fleetc[fleet]'") from err
            address = "tcp://" + executor[len("dask://"):]
            try:
                self.client = Client(address, timeout="10s")
            except (OSError, TimeoutError) as err:
                raise BadInputError(f"cannot reach the Dask scheduler at {address}: "
                                    f"{err}") from err
            self.scattered = self.client.scatter(self.state, broadcast=True)
        elif jobs > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                               initializer=_worker_init,
                                               initargs=(os.getpid(), self.state))

    @property
    def in_process(self) -> bool:
        return self.client is None and self.pool is None

    def run(self, jobs: list[dict]) -> Iterator:
        if self.in_process:
            for job in jobs:
                yield self.build(job, self.state)
            return
        if self.client is not None:
            from distributed import as_completed

            self.futures = [self.client.submit(self.build, job, self.scattered, pure=False)
                            for job in jobs]
            for fut in as_completed(self.futures):
                yield fut.result()
            return
        with sigint_blocked():   # workers start on submit: immune to Ctrl-C until set up
            self.futures = [self.pool.submit(_build_in_worker, self.build, job)
                            for job in jobs]
        for fut in cf.as_completed(self.futures):
            yield fut.result()

    def close(self) -> None:
        """Wait for the workers to end; with work unfinished (the caller stopped waiting:
        Ctrl-C or an error), stop them instead (see the module doc)."""
        unfinished = any(not f.done() for f in self.futures)
        if self.pool is not None:
            if unfinished:
                self._stop_workers()
            self.pool.shutdown(wait=True, cancel_futures=unfinished)
        if self.client is not None:
            if unfinished:
                self.client.cancel(self.futures)
            self.client.close()

    def _stop_workers(self) -> None:
        for fut in self.futures:
            fut.cancel()   # those not started
        # concurrent.futures has no way to stop running calls before Python 3.14; its worker
        # processes are in `_processes`.
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + GRACE_SECONDS
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()


# In each worker process: whether a build is running (SIGTERM then unwinds it), and the state.
_building = False
_state: dict = {}


class _Terminated(BaseException):
    """SIGTERM in a worker during a build: unwinds it (no `except Exception` stops it)."""


def _worker_init(parent_pid: int, state: dict) -> None:
    child_init(parent_pid)
    _state.update(state)
    signal.signal(signal.SIGTERM, _on_terminate)


def _on_terminate(signum: int, _frame) -> None:
    if _building:
        raise _Terminated
    os._exit(128 + signum)   # idle: nothing to clean up


def _build_in_worker(build: Callable[[dict], object], job: dict):
    """`build(job)` in a worker; terminated, it unwinds the build and ends the worker."""
    global _building
    _building = True
    try:
        return build(job, _state)
    except _Terminated:
        os._exit(128 + signal.SIGTERM)
    finally:
        _building = False
