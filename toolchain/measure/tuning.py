"""Tuning with MetaSchedule: the workloads of a model, tuned for a target, saved to the target's
database (`toolchain.tunedb`), which every later build applies.

`tune_model(model, target, trials=... | minutes=...)`:
1. imports, legalizes and fuses the model as the build does (`passes.emit_tvm.tuning_module`)
   and extracts one task per distinct fused function;
2. skips the workloads the target's database already has records for (shared with every model
   and device of the same code-generation target) unless `retune`; logs both counts;
3. searches the rest (evolutionary search, gradient task scheduler) and merges the records into
   the database at the end (also at each checkpoint, and when stopped by Ctrl-C or time-out).

Why every trial reported N/A before (measured here with TVM's defaults: 8 of 8 candidates
"LocalBuilder: Timeout, killed after 30.0 seconds", 533 s): `LocalBuilder` starts fresh worker
processes for every batch, and its build function imports `tvm.s_tir.tensor_intrin` (the
TensorIR intrinsics of every back end, parsed from TVMScript) inside the 30 s time-out - 334 s on
this loaded 2-core machine. The default cost model (`xgb`) also needs xgboost, whose Linux wheel
pulls the CUDA NCCL library. Here instead:
- local targets build and run every candidate in this process (`_InProcessBuilder`,
  `_InProcessRunner`): no worker start-up, no linking, no files - a candidate costs its LLVM
  code generation and a few runs. A candidate's time is the fastest of its runs (the other
  samples are what other processes on the machine cost it);
- RPC targets build here, export a tar and run through TVM's `RPCRunner` on the device (the
  device links and times it); the runner's time-out is the target's `timeout_s`;
- the cost model is `xgb` with xgboost's CPU-only wheel (`xgboost-cpu`, the `tune` extra);
  without xgboost the search falls back to the random model (a warning says so).
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from toolchain import tunedb
from toolchain.errors import BadInputError
from toolchain.measure.rpc import DeviceUnreachableError
from toolchain.target import Target

__all__ = ["tune_model", "TuneResult", "model_workloads", "TRIALS_PER_ROUND"]

logger = logging.getLogger(__name__)

TRIALS_PER_ROUND = 16       # candidates measured per task per round of the task scheduler
_NO_TRIAL_LIMIT = 10 ** 6   # with `minutes`, time ends the search
# Evolutionary search population (TVM's default 512): its sampling and mutation are paid in
# every round of every task, a few seconds each on this 2-core machine; 256 halves that.
POPULATION = 256
# MetaSchedule's own log (its per-task files and stdout handlers are not set up): shown with -vv.
_MS_LOGGER = logging.getLogger("toolchain.measure.tuning.metaschedule")


@dataclass(frozen=True)
class TuneResult:
    database: str                  # the target's database folder
    workloads: int                 # distinct tunable functions of the model
    reused: int                    # of them, already in the database (not tuned again)
    tuned: int                     # tuned in this run
    trials: int                    # candidates measured
    failed: int                    # of them, failed to build or run
    seconds: float
    cost_model: str
    checkpoints: dict[float, str] = field(default_factory=dict)   # minutes -> database copy


def model_workloads(model: onnx.ModelProto, tgt) -> list:
    """MetaSchedule tasks (one per distinct fused function) of the model as fleetc builds it."""
    from tvm.s_tir import meta_schedule as ms

    from passes.emit_tvm import tuning_module

    mod = tunedb.inline_scalars(tuning_module(model, tgt))
    return [t for t in ms.relax_integration.extract_tasks(mod, tgt)
            if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled", False)]


def tune_model(model: onnx.ModelProto, target: Target, *, trials: int | None = None,
               minutes: float | None = None, retune: bool = False, tracker: str | None = None,
               checkpoints: tuple[float, ...] = (), checkpoint_dir: str | Path | None = None,
               seed: int = 0, progress: Callable[[str], None] | None = None) -> TuneResult:
    """Tune the model's workloads the target's database lacks; see the module doc.

    `trials`: candidates to measure in all; `minutes`: wall-clock budget from the call (one of
    the two). The target's `[measure]` says where candidates run: here with its thread count,
    or on the RPC device under its key (`tracker` overrides its tracker). `checkpoints`: minutes
    at which a copy of the database so far is written to `checkpoint_dir/<m>min/tuning/` (a
    FLEETC_HOME to build with)."""
    from tvm.s_tir import meta_schedule as ms

    if (trials is None) == (minutes is None):
        raise BadInputError("tune: give either a number of trials or of minutes")
    if (trials is not None and trials < 1) or (minutes is not None and not minutes > 0):
        raise BadInputError("tune: trials and minutes must be positive")
    say = progress or logger.info
    start = time.monotonic()
    tgt = target.tvm()
    folder = tunedb.database_dir(tgt)
    tasks = model_workloads(model, tgt)
    known = tunedb.load_database(tgt)
    todo = [t for t in tasks if retune or known is None
            or known.query_tuning_record(t.dispatched[0], tgt, t.task_name) is None]
    reused = len(tasks) - len(todo)
    say(f"{len(tasks)} workloads: {reused} already in the database {folder}, "
        f"{len(todo)} to tune")
    cost_model = _cost_model_kind()
    if not todo:
        return TuneResult(str(folder), len(tasks), reused, 0, 0, 0,
                          time.monotonic() - start, cost_model)
    _cpu_intrinsics_only()
    db = ms.database.MemoryDatabase()
    if known is not None:
        tunedb._commit(db, known.get_all_tuning_records())
    clock = _Clock(start, minutes, tgt, db, sorted(checkpoints), checkpoint_dir, say)
    contexts, weights = _contexts(todo, seed, say)
    if not contexts:
        return TuneResult(str(folder), len(tasks), reused, 0, 0, 0,
                          time.monotonic() - start, cost_model)
    # A small trial budget still reaches every task once.
    per_round = min(TRIALS_PER_ROUND, max(1, (trials or _NO_TRIAL_LIMIT) // len(contexts)))
    with tempfile.TemporaryDirectory(prefix="fleetc-tune-") as work:
        builder, runner, callbacks = _measure(target, tracker, work, clock)
        try:
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work,
                          max_trials_global=trials or _NO_TRIAL_LIMIT,
                          num_trials_per_iter=per_round, builder=builder, runner=runner,
                          database=db, cost_model=ms.CostModel.create(cost_model),
                          measure_callbacks=[*callbacks, _Counter(clock)])
        except Exception:
            if not clock.time_up:
                raise
        finally:       # what was measured is kept, even when interrupted
            tunedb.save_records(tgt, db.get_all_tuning_records(), folder)
    seconds = time.monotonic() - start
    say(f"tuned {len(contexts)} workloads: {clock.trials} trials ({clock.failed} failed) "
        f"in {seconds:.0f} s; database {folder}")
    return TuneResult(str(folder), len(tasks), reused, len(contexts), clock.trials, clock.failed,
                      seconds, cost_model, dict(clock.written))


def _contexts(tasks: list, seed: int, say) -> tuple[list, list[float]]:
    """A TuneContext per task whose MetaSchedule design space can be generated; the others
    (MetaSchedule's rules fail on some fused functions, e.g. a depthwise conv whose ReLU6
    bounds are computed inside it) are left to the default schedules, and said so."""
    from tvm.s_tir import meta_schedule as ms

    contexts, weights, failed = [], [], []
    for i, task in enumerate(tasks):
        ctx = ms.TuneContext(
            mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(population_size=POPULATION),
            task_name=task.task_name, logger=_MS_LOGGER, rand_state=seed + i,
            num_threads="physical").clone()
        try:
            ctx.generate_design_space()
        except Exception as err:   # a TVM ScheduleError: MetaSchedule cannot tune this one
            logger.debug("%s: no design space: %s", task.task_name, str(err).splitlines()[-1:])
            failed.append(task.task_name)
            continue
        contexts.append(ctx)
        weights.append(float(task.weight))
    if failed:
        say(f"{len(failed)} workloads MetaSchedule cannot schedule (default schedules): "
            f"{', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}")
    return contexts, weights


def _cpu_intrinsics_only() -> None:
    """Register the CPU tensor intrinsics (x86, Arm, RISC-V) without GPU ones.

    MetaSchedule's TuneContext imports `tvm.s_tir.tensor_intrin`, which parses the TVMScript
    intrinsics of every back end; on the loaded 2-core machine its CUDA part alone took 75 s and
    the whole import 334 s (x86 1 s, Arm 5 s). LLVM targets use only the CPU ones, so the package
    is put in place with just those (its other modules still import on demand)."""
    import importlib
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    package = types.ModuleType(name)
    package.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    sys.modules[name] = package
    for part in ("x86", "arm_cpu", "riscv_cpu"):
        importlib.import_module(f"{name}.{part}")


def _cost_model_kind() -> str:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        logger.warning("xgboost is not installed (pip install 'fleetc[tune]'): tuning samples "
                       "candidates at random, which needs more trials for the same result")
        return "random"
    return "xgb"


def _measure(target: Target, tracker: str | None, work: str, clock: _Clock):
    """Builder, runner and the measure callbacks they need, from the target's `[measure]`."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=10,
                                          enable_cpu_cache_flush=False)
    store: dict[str, object] = {}
    measure = target.measure
    if measure.kind != "rpc":
        return (_InProcessBuilder(store, None, clock),
                _InProcessRunner(store, evaluator, measure.threads),
                [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()])
    from toolchain.measure.rpc import DEFAULT_TRACKER, parse_address, tracker_keys

    address = tracker or measure.tracker or os.environ.get("FLEETC_TRACKER") or DEFAULT_TRACKER
    if measure.rpc_key not in tracker_keys(address, min(measure.timeout_s, 10.0)):
        raise DeviceUnreachableError(f"no device registered under key {measure.rpc_key!r} at "
                                     f"tracker {address}")
    host, port = parse_address(address)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port,
                                 tracker_key=measure.rpc_key, session_priority=1,
                                 session_timeout_sec=int(measure.timeout_s))
    runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)
    return (_InProcessBuilder(store, work, clock), runner,
            ms.measure_callback.MeasureCallback.create("default"))


def _build_candidate(mod, tgt):
    """What MetaSchedule's default build does, without its `import tvm.s_tir.tensor_intrin`
    (which registers every TensorIR intrinsic of every back end: 334 s on the loaded machine,
    and the reason every candidate of TVM's LocalBuilder timed out). fp32 candidates use no
    tensor intrinsic: TVM imports int8 models as float."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=tgt)


def _fastest(costs: list[float]) -> list[float]:
    return [min(costs)] if costs else costs


class _Clock:
    """Tuning time: writes the checkpoints and raises TimeoutError when the time is up; asked
    before each batch is built and after each batch is measured."""

    def __init__(self, start: float, minutes: float | None, tgt, db, checkpoints: list[float],
                 checkpoint_dir, say) -> None:
        self.start, self.minutes, self.tgt, self.db = start, minutes, tgt, db
        self.pending, self.dir, self.say = list(checkpoints), checkpoint_dir, say
        self.trials = self.failed = 0
        self.time_up = False
        self.written: dict[float, str] = {}

    def tick(self) -> None:
        elapsed = (time.monotonic() - self.start) / 60
        while self.pending and elapsed >= self.pending[0]:
            mark = self.pending.pop(0)
            out = Path(self.dir or ".", f"{mark:g}min")   # a FLEETC_HOME to build with
            tunedb.save_records(self.tgt, self.db.get_all_tuning_records(),
                                tunedb.database_dir(self.tgt, out / "tuning"))
            self.written[mark] = str(out)
            self.say(f"checkpoint {mark:g} min (at {elapsed:.1f} min): {self.trials} trials "
                     f"measured, database copy {out}")
        if self.minutes is not None and elapsed >= self.minutes:
            self.time_up = True
            raise TimeoutError("tuning time is up")


@functools.cache
def _classes():
    """The MetaSchedule plug-ins (defined on first use: they import TVM)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult
    from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds candidates here; keeps the module in memory (local) or exports a tar (RPC)."""

        def __init__(self, store: dict, export_dir: str | None, clock: _Clock) -> None:
            super().__init__()
            self.store, self.export_dir, self.count, self.clock = store, export_dir, 0, clock

        def build(self, build_inputs):
            self.clock.tick()        # the first round is joined only at its end: ask here too
            results = []
            for item in build_inputs:
                self.count += 1
                try:
                    module = _build_candidate(item.mod, item.target)
                    if self.export_dir is None:
                        key = f"in-memory:{self.count}"
                        self.store[key] = module
                    else:
                        from tvm.support import tar

                        # A folder each: MetaSchedule's RemoveBuildArtifact deletes it.
                        folder = tempfile.mkdtemp(prefix="candidate", dir=self.export_dir)
                        key = str(Path(folder, "module.tar"))
                        module.export_library(key, fcompile=tar.tar)
                    results.append(BuilderResult(key, None))
                except Exception as err:   # a candidate that does not build is a failed trial
                    results.append(BuilderResult(None, f"build failed: {err}"[:2000]))
            return results

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, result) -> None:
            super().__init__()
            self.value = result

        def done(self) -> bool:
            return True

        def result(self):
            return self.value

    @derived_object
    class InProcessRunner(PyRunner):
        """Runs built candidates here, pinned like fleetc's local timing."""

        def __init__(self, store: dict, evaluator, threads: int) -> None:
            super().__init__()
            self.store, self.evaluator, self.threads = store, evaluator, threads

        def run(self, runner_inputs):
            import tvm

            from toolchain.measure.timing import pick_cpus, pinned
            from toolchain.measure.tvm_backend import set_tvm_threads

            set_tvm_threads(self.threads)
            dev = tvm.cpu()
            futures = []
            for item in runner_inputs:
                module = self.store.pop(item.artifact_path, None)
                try:
                    args_info = [a.as_json() for a in item.args_info]
                    args = default_alloc_argument(dev, args_info, 1)
                    with pinned(pick_cpus(self.threads)):
                        costs = run_evaluator_common(module, dev, self.evaluator, args)
                    futures.append(Done(RunnerResult(_fastest(costs), None)))
                except Exception as err:
                    futures.append(Done(RunnerResult(None, f"run failed: {err}"[:2000])))
            return futures

    @derived_object
    class Counter(PyMeasureCallback):
        """After each measured batch: counts trials and failures, asks the clock."""

        def __init__(self, clock: _Clock) -> None:
            super().__init__()
            self.clock = clock

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            self.clock.trials += len(measure_candidates)
            self.clock.failed += sum(1 for b, r in zip(builder_results, runner_results,
                                                       strict=True)
                                     if b.error_msg or r.error_msg)
            self.clock.tick()

    return ms, InProcessBuilder, InProcessRunner, Counter


def _InProcessBuilder(*args):  # noqa: N802 - the plug-in classes are made on first use
    return _classes()[1](*args)


def _InProcessRunner(*args):  # noqa: N802
    return _classes()[2](*args)


def _Counter(*args):  # noqa: N802
    return _classes()[3](*args)
