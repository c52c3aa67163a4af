"""Where fleet devices are built: in this process, in worker processes or on a Dask cluster."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Iterator

from toolchain.errors import BadInputError

__all__ = ["Pool"]


class Pool:
    """submit/as_completed of `build` over the in-process loop, a process pool or a Dask
    client. `build` must be a module-level function (it is pickled to workers)."""

    def __init__(self, build: Callable[[dict], object], jobs: int, executor: str | None) -> None:
        self.build = build
        self.client = self.pool = None
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
        elif jobs > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)

    @property
    def in_process(self) -> bool:
        return self.client is None and self.pool is None

    def run(self, jobs: list[dict]) -> Iterator:
        if self.in_process:
            for job in jobs:
                yield self.build(job)
            return
        if self.client is not None:
            from distributed import as_completed

            futures = [self.client.submit(self.build, job, pure=False) for job in jobs]
            for fut in as_completed(futures):
                yield fut.result()
            return
        futures = [self.pool.submit(self.build, job) for job in jobs]
        for fut in cf.as_completed(futures):
            yield fut.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.client is not None:
            self.client.close()
