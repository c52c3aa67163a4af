"""Measure models on a target and append the results to a resumable CSV."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolchain.errors import BadInputError
from toolchain.measure.backend import backend_name, measure_model
from toolchain.measure.records import RowWriter, measured_designs
from toolchain.measure.timing import Timing, TimingConfig
from toolchain.target import Target

__all__ = ["profile", "ProfileResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileResult:
    measured: int
    already: int
    failed: tuple[str, ...]


def profile(target: Target, designs: Sequence[tuple[str, Callable[[], onnx.ModelProto]]],
            out: str | Path, config: TimingConfig | None = None, tracker: str | None = None,
            progress: Callable[[str], None] | None = None, rounds: int = 1) -> ProfileResult:
    """Measure every design not yet in `out`; one appended row each (resumable).

    With `rounds` > 1 the designs are measured round-robin `rounds` times and a design's
    latency is the fastest sample of all its rounds: on a virtual machine whole timing blocks
    of a design sometimes run 1.5-2x slower (the host's other work; no process of this machine
    is involved), so the median of one block is bimodal, while the fastest sample, over rounds
    spread across the run, is the undisturbed speed within a few percent (`spread_pct` is then
    the spread of the rounds' medians). The rounds so far are kept in `<out>.rounds.csv`
    (design names `NAME@r`), so an interrupted run resumes mid-round. On this machine each
    round runs in a new process (`toolchain.measure.worker`: some slow states belong to a
    process); a script calling this must do so under `if __name__ == "__main__":` (spawn).

    A design that fails (bad model, device error) is reported and skipped; an unreachable
    device stops the run (the rows so far are kept).
    """
    if rounds < 1:
        raise BadInputError("--rounds must be at least 1")
    done = measured_designs(out)
    todo = [(n, b) for n, b in designs if n not in done]
    if not todo:
        return ProfileResult(0, len(done), ())
    if rounds == 1:
        failed = _measure_round(target, todo, out, config, tracker, progress, len(done))
        return ProfileResult(len(todo) - len(failed), len(done), tuple(failed))
    side = Path(str(out) + ".rounds.csv")
    failed: list[str] = []
    for r in range(1, rounds + 1):
        have = measured_designs(side)
        pending = [(f"{n}@{r}", b) for n, b in todo
                   if f"{n}@{r}" not in have and n not in failed]
        failed += [n.rsplit("@", 1)[0] for n in _measure_round(
            target, pending, side, config, tracker,
            progress and (lambda line, r=r: progress(f"round {r}/{rounds} {line}")), 0)]
    rounds_of = _rounds(side)
    with RowWriter(out) as writer:
        for name, _ in todo:
            if name not in failed and len(rounds_of.get(name, ())) >= rounds:
                writer.write(_merged_row(target, name, rounds_of[name]))
    return ProfileResult(len(todo) - len(failed), len(done), tuple(failed))


def _measure_round(target, todo, out, config, tracker, progress, offset: int) -> list[str]:
    """Measure `todo` into `out`: on this machine in a new process, remote devices from here.
    Returns the designs that failed."""
    if not todo:
        return []
    if target.measure.kind == "rpc":
        return _measure_into(todo, out, lambda model: measure_model(target, model, config,
                                                                     tracker), target, progress,
                             offset)
    from toolchain.measure.worker import MeasureProcess

    with MeasureProcess() as worker:
        return _measure_into(todo, out, lambda model: worker.measure(target, model, config),
                             target, progress, offset)


def _measure_into(todo, out, measure, target, progress, offset: int) -> list[str]:
    from toolchain.measure.rpc import DeviceUnreachableError

    failed = []
    with RowWriter(out) as writer:
        for i, (name, build) in enumerate(todo, start=1):
            start = time.perf_counter()
            try:
                timing = measure(build())
            except DeviceUnreachableError:
                raise
            except BadInputError as err:
                failed.append(name)
                logger.warning("%s: %s", name, err)
                continue
            writer.write(_row(target, name, timing))
            if progress:
                progress(f"[{offset + i}/{offset + len(todo)}] {name}: "
                         f"{timing.median_ms:.4g} ms (+/-{timing.spread_pct:.1f}%) "
                         f"in {time.perf_counter() - start:.1f} s")
    return failed


def _rounds(side: Path) -> dict[str, list]:
    from toolchain.measure.records import read_measurements

    by_design: dict[str, list] = {}
    for row in read_measurements(side) if measured_designs(side) else []:
        by_design.setdefault(row.design.rsplit("@", 1)[0], []).append(row)
    return by_design


def _merged_row(target: Target, name: str, rows: list) -> dict:
    """One design's row from its rounds: the fastest sample of all rounds; spread = IQR of
    the rounds' medians."""
    import numpy as np

    lat = np.array([r.latency_ms for r in rows])
    q1, q2, q3 = np.percentile(lat, [25, 50, 75])
    fastest = min(float(dict(r.extra).get("min_ms") or r.latency_ms) for r in rows)
    extra = dict(rows[-1].extra)
    return {"design": name, "latency_ms": fastest, "energy_mj": target.energy_mj(fastest),
            "spread_pct": round(float(100 * (q3 - q1) / q2), 2), "min_ms": fastest,
            "repeats": len(rows), "number": extra.get("number", ""),
            "outliers": extra.get("outliers", ""), "clock": extra.get("clock", ""),
            "target": target.name, "backend": backend_name(target),
            "threads": target.measure.threads,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _row(target: Target, name: str, t: Timing) -> dict:
    return {"design": name, "latency_ms": t.median_ms, "energy_mj": target.energy_mj(t.median_ms),
            "spread_pct": round(t.spread_pct, 2), "min_ms": t.min_ms, "repeats": t.repeats,
            "number": t.number, "outliers": t.outliers, "clock": t.clock, "target": target.name,
            "backend": backend_name(target), "threads": target.measure.threads,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
