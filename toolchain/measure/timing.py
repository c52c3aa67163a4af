"""Robust timing: warm-up, repeated samples, outlier removal, median and spread, thread pinning.

Clocks: "wall" (perf_counter) or "thread" (the calling thread's CPU time, for runtimes that
compute on the calling thread, such as onnxruntime with one intra-op thread). On an idle core the
two agree; on a shared machine the thread clock leaves out the time the thread waits while other
processes hold the core, which is the noise that dominates wall-clock medians there.

A sample is the mean of `number` back-to-back runs, `number` chosen so that one sample lasts at
least `min_sample_ms` (short kernels are below the clock's useful resolution otherwise). High
outliers - samples more than `outlier_mads` scaled MADs above the median, typically another
process taking the core - are dropped before the summary and counted.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

__all__ = ["TimingConfig", "Timing", "summarize", "time_callable", "pinned", "pick_cpus"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingConfig:
    """How hard to try: the defaults take about 0.3-1 s for a small model."""

    warmup: int = 3               # untimed runs first (allocations, caches, lazy init)
    repeats: int = 15             # samples kept for the median
    min_sample_ms: float = 4.0    # one sample averages enough runs to last this long
    max_seconds: float = 8.0      # budget for the samples of one model (at least 3 samples)
    outlier_mads: float = 4.0     # high-outlier cut, in scaled MADs above the median


@dataclass(frozen=True)
class Timing:
    """Summary of one timed model, in milliseconds per run."""

    median_ms: float
    min_ms: float
    spread_pct: float        # interquartile range of the kept samples, % of the median
    repeats: int             # samples kept
    number: int              # runs averaged per sample
    outliers: int            # samples dropped as high outliers
    clock: str = "wall"      # "wall" or "thread" (CPU time of the calling thread)

    @property
    def latency_ms(self) -> float:
        return self.median_ms


def summarize(samples_ms: Sequence[float], number: int = 1, outlier_mads: float = 4.0,
              clock: str = "wall") -> Timing:
    """Median and interquartile spread of the samples after dropping high outliers."""
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("no finite timing samples")
    med = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - med)))
    keep = x <= med + outlier_mads * max(mad, 0.005 * med)
    kept = x[keep]
    q1, q2, q3 = np.percentile(kept, [25, 50, 75])
    return Timing(median_ms=float(q2), min_ms=float(kept.min()),
                  spread_pct=float(100.0 * (q3 - q1) / q2) if q2 > 0 else 0.0,
                  repeats=int(kept.size), number=number, outliers=int(x.size - kept.size),
                  clock=clock)


def time_callable(run: Callable[[], object], config: TimingConfig | None = None,
                  clock: str = "wall") -> Timing:
    """Time `run()` (one inference) with warm-up and repeated samples."""
    config = config or TimingConfig()
    now = {"wall": time.perf_counter, "thread": time.thread_time}[clock]
    start = now()
    run()                       # first warm-up run, timed: slow models get fewer warm-ups
    once_ms = max(1e-3, (now() - start) * 1e3)
    extra = min(config.warmup, max(1, int(0.1 * config.max_seconds * 1e3 / once_ms)))
    for _ in range(extra):
        start = now()
        run()
        once_ms = max(1e-3, (now() - start) * 1e3)
    number = max(1, math.ceil(config.min_sample_ms / once_ms))
    budget = max(3, int(config.max_seconds * 1e3 / (once_ms * number)))
    samples = []
    for _ in range(max(3, min(config.repeats, budget))):
        start = now()
        for _ in range(number):
            run()
        samples.append((now() - start) * 1e3 / number)
    return summarize(samples, number, config.outlier_mads, clock)


def pick_cpus(threads: int) -> set[int]:
    """The CPUs to pin `threads` threads to: the last ones of the current affinity mask.

    The last cores rather than core 0, which takes most interrupts and housekeeping.
    """
    available = sorted(os.sched_getaffinity(0))
    if threads <= 0 or threads >= len(available):
        return set(available)
    return set(available[-threads:])


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Pin the calling thread (and threads it starts) to `cpus`; restore the mask afterwards.

    On Linux `sched_setaffinity(0, ...)` applies to the calling thread only, so a pytest worker
    or a server thread is not left pinned.
    """
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as err:  # containers may forbid it: time unpinned rather than fail
        logger.warning("cannot pin to CPUs %s: %s", sorted(cpus), err)
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
