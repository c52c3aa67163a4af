"""The long fuzz run: N seeded cases over the five input kinds (tests/fuzzing), each run in
process through click's CliRunner in worker processes, judged by the fuzz oracle.

Prints, per kind: cases, exit codes seen, exit 1, tracebacks, hangs, modified inputs, writes
outside the allowed places, partial outputs (and, as a figure, invalid inputs accepted with
exit 0); then the failures grouped by what they said, each with a one-line reproduction.
Asserts nothing.

    .venv/bin/python benchmarks/fuzz.py --cases 1000 --seed 1 [--workers 2]
    .venv/bin/python benchmarks/fuzz.py --replay plan:1:37 [--keep DIR]   # one case again

Workers are separate processes (a case that hangs in C code or crashes the interpreter is
killed and counted, and the run goes on); each caps its address space (--memory-gb) so a
case that allocates without bound fails with MemoryError instead of exhausting the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzzing import (  # noqa: E402
    KINDS,
    PROBLEMS,
    Outcome,
    make_case,
    memory_limit,
    parse_case_id,
    run_case,
    schedule,
)

# Per 100 cases: (cases, heavy cases) of each kind. Heavy cases run compile or a fleet build.
MIX = {"model": (24, 2), "plan": (20, 0), "fleet": (20, 5), "target": (18, 2),
       "calib": (18, 3)}
GRACE_S = 60          # beyond a case's own deadline, before its worker is killed
RECYCLE = 50          # cases per worker process before a fresh one


def _timeout(heavy: bool, light_s: float) -> float:
    return light_s * 5 if heavy else light_s


def _worker(conn, root: str, memory_gb: float, light_s: float) -> None:
    """Run the cases the parent sends ((kind, seed, index, heavy)); send back Outcomes."""
    os.setpgrp()   # the parent kills the worker's whole group (fleet pools included)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import toolchain.cli  # noqa: F401  (imported once, before the memory cap)

    with memory_limit(int(memory_gb * (1 << 30))), contextlib.suppress(EOFError):
        while (job := conn.recv()) is not None:   # EOFError: the parent is gone
            conn.send(_run_job(job, Path(root), light_s))


def _run_job(job, root: Path, light_s: float) -> Outcome:
    kind, seed, index, heavy = job
    case = make_case(kind, seed, index, heavy)
    try:
        return run_case(case, root, _timeout(heavy, light_s))
    except Exception as err:  # the harness's own failure, reported apart from the product's
        return Outcome(case.id, kind, case.mutation, case.command, None, 0.0,
                       ["harness error"], [f"{type(err).__name__}: {err}"])


class _Slot:
    """One worker process and the case it is running."""

    def __init__(self, ctx, args) -> None:
        self.conn, child = ctx.Pipe()
        # not daemonic: fleetc itself starts child processes (a daemon may not have any)
        self.proc = ctx.Process(target=_worker, args=(child, *args))
        self.proc.start()
        child.close()
        self.job, self.started, self.done, self.lost = None, 0.0, 0, False

    def send(self, job) -> None:
        self.job, self.started = job, time.monotonic()
        self.conn.send(job)

    def stop(self) -> None:
        """Ask an idle worker to finish, then kill its process group (a busy one at once)."""
        if self.job is None and not self.lost and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(10)
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.join(5)


def _lost(job, why: str, seconds: float) -> Outcome:
    """The outcome of a case whose worker had to be killed (hang) or died (a crash)."""
    kind, seed, index, heavy = job
    case = make_case(kind, seed, index, heavy)
    problem = "hang" if why == "hang" else "exit 1"
    return Outcome(case.id, kind, case.mutation, case.command, None, round(seconds, 1),
                   [problem], [f"worker {why}"])


def run_all(jobs: list, workers: int, memory_gb: float, light_s: float,
            progress) -> list[Outcome]:
    """Every job on `workers` worker processes; a worker whose case was lost, or that ran
    RECYCLE cases, is replaced by a fresh one."""
    ctx = mp.get_context("spawn")
    root = tempfile.mkdtemp(prefix="fleetc-fuzz-")
    args = (root, memory_gb, light_s)
    slots = [_Slot(ctx, args) for _ in range(min(workers, len(jobs)))]
    todo, results = list(reversed(jobs)), []
    try:
        for slot in slots:
            slot.send(todo.pop())
        while any(s.job for s in slots):
            ready = wait([s.conn for s in slots if s.job], timeout=1.0)
            for i, slot in enumerate(slots):
                outcome = _collect(slot, slot.conn in ready, light_s)
                if outcome is None:
                    continue
                results.append(outcome)
                progress(len(results), outcome)
                if slot.done >= RECYCLE or slot.lost:
                    slot.stop()
                    slots[i] = slot = _Slot(ctx, args)
                if todo:
                    slot.send(todo.pop())
    finally:
        for slot in slots:
            slot.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


def _collect(slot: _Slot, ready: bool, light_s: float) -> Outcome | None:
    """The slot's finished case, a lost one (hung past the grace, or the worker died), or
    None while it runs."""
    if slot.job is None:
        return None
    seconds = time.monotonic() - slot.started
    outcome = None
    if ready:
        try:
            outcome = slot.conn.recv()
        except (EOFError, OSError):
            why = "died"
    elif seconds > _timeout(slot.job[3], light_s) + GRACE_S:
        why = "hang"
    elif not slot.proc.is_alive():
        why = "died"
    else:
        return None
    if outcome is None:
        slot.lost = True
        outcome = _lost(slot.job, why, seconds)
    slot.job = None
    slot.done += 1
    return outcome


# --- report --------------------------------------------------------------------------------

COLUMNS = ("cases", "exit codes seen", *PROBLEMS, "accepted invalid")


def table(outcomes: list[Outcome]) -> str:
    rows = [("kind", *COLUMNS)]
    for kind in [*KINDS, "total"]:
        mine = [o for o in outcomes if kind in (o.kind, "total")]
        codes = Counter("hang" if o.exit_code is None else str(o.exit_code) for o in mine)
        seen = " ".join(f"{c}:{n}" for c, n in sorted(codes.items()))
        rows.append((kind, str(len(mine)), seen or "-",
                     *(str(sum(p in o.problems for o in mine)) for p in PROBLEMS),
                     str(sum(o.accepted_invalid for o in mine))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)


def _signature(o: Outcome) -> str:
    """What a failure said, with paths, numbers and quoted names blurred: one group per bug."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", o.error_line())
    text = re.sub(r"/[\w./-]+", "PATH", text)
    text = re.sub(r"\d+", "N", text)
    return f"{o.kind} | {', '.join(o.problems)} | {o.command.split()[1]} | {text[:110]}"


def failures(outcomes: list[Outcome], every: bool) -> str:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.problems:
            groups[_signature(o)].append(o)
    lines = []
    for sig, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"{len(group):4d} x {sig}")
        lines += [f"       {o.repro()}" for o in (group if every else group[:2])]
    return "\n".join(lines) or "no failures"


def accepted(outcomes: list[Outcome]) -> str:
    found = [o for o in outcomes if o.accepted_invalid and not o.problems]
    return "\n".join(f"  exit {o.exit_code}: {o.case_id} {o.mutation[:100]} | {o.command[:100]}"
                     for o in found) or "  none"


# --- command line --------------------------------------------------------------------------

def replay(case_id: str, keep: str | None, light_s: float) -> None:
    from tests.fuzzing.oracle import shell_line

    kind, seed, index, heavy = parse_case_id(case_id)
    case = make_case(kind, seed, index, heavy)
    root = Path(keep or tempfile.mkdtemp(prefix="fleetc-replay-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"case {case.id}: {case.mutation}\n  {case.command}")
    with memory_limit(8 << 30):
        outcome = run_case(case, root, _timeout(heavy, light_s), keep=bool(keep))
    print(f"exit {outcome.exit_code} in {outcome.seconds} s; problems: "
          f"{', '.join(outcome.problems) or 'none'}")
    for d in outcome.details:
        print(f"  {d}")
    print("--- output (last 4000 characters) ---")
    print(outcome.output[-4000:])
    if keep:
        folder = next(p for p in sorted(root.iterdir()) if p.name.startswith(f"{kind}-{index}-"))
        print(f"--- rerun by hand ---\n{shell_line(case, folder)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="Deadline of a case, s (heavy cases: 5x).")
    ap.add_argument("--memory-gb", type=float, default=6.0,
                    help="Address space a worker may add, GB.")
    ap.add_argument("--kinds", default=",".join(KINDS), help="Comma-separated input kinds.")
    ap.add_argument("--all", action="store_true", help="Print every failure, not two a group.")
    ap.add_argument("--replay", metavar="KIND:SEED:INDEX[:heavy]", help="Run one case again.")
    ap.add_argument("--keep", metavar="DIR", help="With --replay: keep the case folder here.")
    a = ap.parse_args()
    if a.replay:
        replay(a.replay, a.keep, a.timeout)
        return
    kinds = a.kinds.split(",")
    mix = {k: v for k, v in MIX.items() if k in kinds}
    jobs = [(kind, a.seed, i, heavy) for kind, i, heavy in schedule(a.cases, mix)]
    start = time.monotonic()

    def progress(n: int, o: Outcome) -> None:
        if o.problems:
            print(f"  {o.repro()[:300]}", file=sys.stderr, flush=True)
        if n % 25 == 0 or n == len(jobs):
            print(f"[{n}/{len(jobs)}] {time.monotonic() - start:.0f} s", file=sys.stderr,
                  flush=True)
    outcomes = run_all(jobs, a.workers, a.memory_gb, a.timeout, progress)
    print(f"fleetc fuzz: {len(outcomes)} cases, seed {a.seed}, {a.workers} workers, "
          f"{time.monotonic() - start:.0f} s\n")
    print(table(outcomes))
    print(f"\nfailures (grouped; one-line reproductions):\n{failures(outcomes, a.all)}")
    print(f"\ninvalid inputs accepted (a figure, not an oracle failure):\n{accepted(outcomes)}")


if __name__ == "__main__":
    main()
