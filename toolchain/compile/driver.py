"""`fleetc compile`: budget-constrained plan for one device, measured accuracy, TVM build.

Stages (each reusable; the fleet command runs `prepare` once and `compile_model` per device):
1. prepare: import + analyze the model (kernels, design space), load the calibration data,
   score the fp32 model, and measure the sensitivity of every atomic change (cached on disk).
2. cost tables: the target's predictor prices every option (toolchain.compile.tables).
3. optimize: the exact solver per input resolution (re-linearized around its solutions), the
   evolutionary search (whole-plan predictions), the greedy baseline and the uniform baselines
   (all int8, all pruned) each propose a plan; proposals whose whole-plan prediction misses
   the budgets are dropped.
4. measure: every distinct proposal is rewritten and its accuracy measured on the calibration
   data; the least measured drop wins (or, with only an accuracy limit, the least predicted
   latency whose measured drop is within it); a proposal the rewrite refuses (an int8 activation
   that overflows float32) is left out with a warning. If none meets --max-accuracy-drop, the
   predicted-drop limit is tightened by the measured/predicted ratio and the solvers run
   again (at most `retries` times), then InfeasibleError with the best measured drop.
5. check the budget on the result: its latency measured where the target runs here and
   compared with --latency-ms (`output.budget_met`, 5% tolerance); a miss is a warning
   (`budget_met: false`), exit 3 with --strict; --retry re-plans with the predicted budget
   tightened by the measured/predicted ratio (at most MAX_LATENCY_RETRIES times).
6. emit: the chosen model through TVM for the target (passes.emit_tvm).
7. write OUTDIR atomically: model.onnx, model.so / model.tar, plan.json, manifest.json,
   report.html (built in a temporary folder beside OUTDIR, renamed into place at the end).

Without any budget, the objective is the least latency within DEFAULT_MAX_DROP points of
accuracy. With a given plan (--plan) steps 1's sensitivity, 2-4 and the retries are skipped.

Plans are deterministic: they depend on the model, the calibration data, the target's
predictions and the measured accuracy, never on timing - except with --retry, where a plan
may be re-chosen after a measured latency.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from toolchain.compile.output import BUDGET_TOLERANCE, budget_met
from toolchain.compile.tables import (
    Context,
    PlanCostFn,
    TableSet,
    build_table,
    build_tables,
    fastest_plan,
    flat_plan,
    flat_table,
    picks_of,
    plan_metrics,
    plan_of,
)
from toolchain.errors import BadInputError, InfeasibleError
from toolchain.files import (
    atomic_write,
    check_output_dir,
    follow_umask,
    owned_temp_dir,
    publish_dir,
    remove_dead_temps,
    sha256_file,
    tool_versions,
)
from toolchain.optimize.costs import Budget, Metrics, check_feasible
from toolchain.optimize.evolve import solve_evolve
from toolchain.optimize.exact import solve_exact
from toolchain.optimize.greedy import solve_greedy
from toolchain.predict.accuracy import (
    AccuracyEstimator,
    Score,
    SensitivityTable,
    cache_key,
    measure_sensitivity,
)
from toolchain.space import Choice, Kernel, Plan, Space

__all__ = ["Prepared", "CompileResult", "Candidate", "LatencyCheck", "prepare",
           "compile_model", "MANIFEST_VERSION", "DEFAULT_MAX_DROP", "MAX_LATENCY_RETRIES"]

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
DEFAULT_MAX_DROP = 1.0      # points: the accuracy limit of a compile given no budget at all
DEFAULT_MAX_DISTORTION = 5.0   # percent relative L2: the same when accuracy cannot be measured
MAX_LATENCY_RETRIES = 2     # --retry: re-plans after a measured latency budget miss
SENSITIVITY_CALIB = 64      # calibration samples the sensitivity rewrites fit on
RELINEARIZE = 3             # exact solves per resolution, each around the previous solution
Progress = Callable[[str], None]


@dataclass
class Prepared:
    """Work shared by every device compiled from one model and calibration set."""

    source: str
    model: onnx.ModelProto              # the input model, as loaded (never modified)
    model_sha256: str
    graph: object                       # toolchain.ir.Graph, analyzed
    kernels: list[Kernel]
    space: Space
    calib: object                       # toolchain.calib.CalibData
    calib_sha256: str | None            # None = synthetic calibration (accuracy unmeasured)
    estimator: AccuracyEstimator
    input_shape: tuple[int, ...] | None
    sensitivity_cache: Path | None
    warnings: list[str] = field(default_factory=list)
    _sens: dict = field(default_factory=dict)
    _models: dict = field(default_factory=dict, repr=False)
    _scores: dict = field(default_factory=dict, repr=False)
    _ranges: dict | None = field(default=None, repr=False)
    _grams: dict | None = field(default=None, repr=False)

    def sensitivity(self, precisions: tuple[str, ...], progress: Progress | None = None
                    ) -> SensitivityTable:
        """Measured drops of every atomic change legal with these precisions (cached)."""
        key = tuple(sorted(precisions))
        if key not in self._sens:
            kernels = {k: self.space.choices(k, precisions) for k in self.space.options}
            step = _eta_progress(progress) if progress else None
            self._sens[key] = measure_sensitivity(
                self.estimator, self._rewrite_light, kernels, self.space.blocks,
                self.space.resolutions, self.space.input_name, self.input_shape,
                self.sensitivity_cache, step)
            self._ranges = self._grams = None   # only single changes use them: free them
        return self._sens[key]

    def rewrite(self, plan: Plan) -> onnx.ModelProto:
        """The model rewritten by a plan (issue 3's passes, checked in onnxruntime there);
        the last few are kept, since compile measures a plan and then builds it."""
        from toolchain.compile.rewrite import apply_plan

        key = replace(plan, target=None).to_json()
        if key not in self._models:
            if len(self._models) >= 2:   # measured, then built: memory stays bounded
                self._models.pop(next(iter(self._models)))
            self._models[key] = apply_plan(self.model, plan, calib=self.calib)
        return self._models[key]

    def _rewrite_light(self, plan: Plan) -> onnx.ModelProto:
        """The rewrite for sensitivity: int8 ranges and pruning reconstruction fit on the first
        SENSITIVITY_CALIB samples (hundreds of single changes; the plans compile measures and
        builds use every sample), from the analyzed graph (no import per change), unchecked
        (the estimator loads it in onnxruntime next); one kernel made int8 reuses the fp32
        model's activation ranges, one kernel pruned its consumers' input statistics, each
        collected once (passes/quantize.py, passes/prune_channels.py)."""
        from toolchain.compile.rewrite import rewrite

        calib = self.calib.take(SENSITIVITY_CALIB)
        single = next(iter(plan.kernels.values())) if not plan.skip_blocks \
            and not plan.input_shape and len(plan.kernels) == 1 else None
        if single == Choice("int8"):
            if self._ranges is None:
                from passes.quantize import reference_ranges

                self._ranges = reference_ranges(self.graph, calib)
            calib = calib.with_ranges(self._ranges)
        elif single is not None and single == Choice(width=single.width) and single.width < 1:
            if self._grams is None:
                from passes.prune_channels import reference_grams

                pruned = [k for k, o in self.space.options.items()
                          if any(w < 1 for w in o.get("width", []))]
                self._grams = reference_grams(self.graph, pruned, calib)
            calib = calib.with_grams(self._grams)
        return rewrite(self.graph, plan, calib=calib, check=False).model

    def score(self, plan: Plan) -> Score:
        """Measured accuracy of the model under a plan (memoized: it is deterministic)."""
        key = replace(plan, target=None).to_json()
        if key not in self._scores:
            self._scores[key] = self.estimator.score(self.rewrite(plan))
        return self._scores[key]


def _eta_progress(progress: Progress) -> Callable[[int, int, str], None]:
    """'sensitivity 17/134: kernel|conv1|int8 (elapsed 1m05s, about 7m20s left)': the time left
    extrapolated from the changes measured so far in this run (cached ones cost nothing)."""
    import time

    start, done = time.monotonic(), [0]

    def step(i: int, n: int, what: str) -> None:
        elapsed = time.monotonic() - start
        eta = f", about {_clock(elapsed / done[0] * (n - i + 1))} left" if done[0] else ""
        progress(f"sensitivity {i}/{n}: {what} (elapsed {_clock(elapsed)}{eta})")
        done[0] += 1
    return step


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass(frozen=True)
class Candidate:
    """A proposed plan with its predicted and measured figures."""

    solver: str
    resolution: int | None
    plan: Plan
    metrics: Metrics                    # whole-plan prediction
    measured_drop: float | None = None
    measured_accuracy: float | None = None


@dataclass(frozen=True)
class LatencyCheck:
    """The chosen plan's measured latency against the latency budget (`budget_met`)."""

    latency_ms: float | None            # None: not measured (--no-measure, not timed here)
    budget_met: bool | None             # None: no latency budget or no measurement
    attempts: tuple[dict, ...] | None   # with --retry: every plan measured, in order
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CompileResult:
    outdir: Path
    plan: Plan
    manifest: dict
    candidates: tuple[Candidate, ...]


def prepare(model: str | os.PathLike | onnx.ModelProto, calib: str | os.PathLike | None = None,
            *, samples: int | None = None, cache: bool = True,
            progress: Progress | None = None) -> Prepared:
    """Import and analyze the model, load calibration data, score fp32 (shared work)."""
    from passes import analyze
    from passes.import_onnx import load_model
    from toolchain.calib import load_calib, synthetic_calib
    from toolchain.home import cache_dir

    proto = load_model(model)
    raw = proto.SerializeToString(deterministic=True)
    source = "<model>" if isinstance(model, onnx.ModelProto) else str(model)
    from passes.import_onnx import import_onnx

    graph = import_onnx(proto)
    analyze(graph)
    warnings = []
    if calib is not None:
        data = load_calib(calib, graph)
        calib_sha = sha256_file(Path(calib))
    else:
        data = synthetic_calib(graph, warn=False)   # in the warnings, printed once at the end
        calib_sha = None
        warnings.append("no calibration data: accuracy is agreement with fp32 on random "
                        "inputs, int8 ranges are fit to noise (accuracy UNMEASURED)")
    if samples is not None:
        data = data.take(samples)
    if progress:
        progress(f"scoring the fp32 model on {len(data)} calibration samples")
    estimator = AccuracyEstimator(proto, data.inputs, data.labels, batch=_batch_size(graph))
    if estimator.degenerate:
        warnings.append(f"accuracy cannot be measured with this calibration data: "
                        f"{estimator.degenerate}; changes are scored by output distortion "
                        "instead (relative L2 vs fp32, percent; limit: --max-distortion)")
    first = graph.inputs[0] if graph.inputs else None
    shape = tuple(graph.shape(first)) if first and graph.shape(first) else None
    sens_cache = None
    if cache:
        digest = f"{calib_sha or 'synthetic'}|fit{SENSITIVITY_CALIB}"
        sens_cache = cache_dir(create=True) / "sensitivity" / cache_key(raw, digest, len(data))
    return Prepared(source, proto, hashlib.sha256(raw).hexdigest(), graph, graph.kernels,
                    graph.space, data, calib_sha, estimator, shape, sens_cache, warnings)


def compile_model(model: str | os.PathLike | onnx.ModelProto | Prepared, target,
                  outdir: str | os.PathLike, *, latency_ms: float | None = None,
                  energy_mj: float | None = None, max_accuracy_drop: float | None = None,
                  calib: str | os.PathLike | None = None, cost: PlanCostFn | None = None,
                  max_distortion: float | None = None,
                  predictor_name: str | None = None, warnings: list[str] | None = None,
                  retries: int = 3, seed: int = 0, plan: Plan | str | os.PathLike | None = None,
                  strict: bool = False, latency_retries: int = 0,
                  measure_latency: bool = True, progress: Progress | None = None,
                  force: bool = False, tune_minutes: float | None = None) -> CompileResult:
    """Optimize, rewrite, build and write OUTDIR for one target (see the module doc).

    `model` may be a Prepared (shared work of a fleet); `cost` overrides the target's predictor
    (a function from Plan to PlanCosts) and `predictor_name` then names it in the manifest.
    Without any budget the objective is the least latency within DEFAULT_MAX_DROP points.
    `plan` (a Plan or a plan file) is built as given: no sensitivity, no search.
    The measured latency is checked against `latency_ms` (`budget_met`, 5% tolerance): a miss is
    a warning, an InfeasibleError with `strict`; `latency_retries` (at most MAX_LATENCY_RETRIES)
    re-plans against a predicted budget tightened by the measured/predicted ratio.
    OUTDIR follows the output folder rule (`toolchain.files.check_output_dir`: new, empty or a
    compile output, unless `force`; never an input), checked before any work. `tune_minutes`:
    the chosen model's TVM workloads are tuned first (docs/tune.md).
    """
    from toolchain.target import resolve_target

    say = progress or (lambda msg: None)
    plan_path = None if plan is None or isinstance(plan, Plan) else plan
    output = functools.partial(check_output_dir, outdir,
                               _input_paths(model, calib) + ([plan_path] if plan_path else []),
                               "compile", force)
    output()
    tgt = resolve_target(target)   # the API edge: a name or a Target
    defaults = False   # no budget given: the default limits (their own message, no warning)
    for name, v in (("latency-ms", latency_ms), ("energy-mj", energy_mj),
                    ("max-accuracy-drop", max_accuracy_drop),
                    ("max-distortion", max_distortion)):
        if v is not None and not (np.isfinite(v) and v >= 0 and (v > 0 or name[0] == "m")):
            raise BadInputError(f"--{name} must be a positive number, got {v}")
    if not 0 <= latency_retries <= MAX_LATENCY_RETRIES:
        raise BadInputError(f"latency retries must be 0 to {MAX_LATENCY_RETRIES}, "
                            f"got {latency_retries}")
    if plan is not None:
        given = plan if isinstance(plan, Plan) else Plan.load(plan)
        if energy_mj is not None or max_accuracy_drop is not None or latency_retries \
                or max_distortion is not None:
            raise BadInputError("--plan builds the plan as given: only --latency-ms (checked on "
                                "the measured latency) goes with it, not --energy-mj, "
                                "--max-accuracy-drop or --retry")
    elif latency_ms is None and energy_mj is None and max_accuracy_drop is None \
            and max_distortion is None:
        max_accuracy_drop, max_distortion = DEFAULT_MAX_DROP, DEFAULT_MAX_DISTORTION
        say(f"no budget given: the least latency whose measured accuracy drop is within "
            f"{DEFAULT_MAX_DROP:g} point (the default --max-accuracy-drop; output distortion "
            f"{DEFAULT_MAX_DISTORTION:g}% when accuracy cannot be measured)")
        defaults = True
    if energy_mj is not None and cost is None and tgt.power_w is None:
        # Checked before any work: the kernel predictors price latency only, so the target
        # file's power figure is the one energy model a built-in target can have.
        raise BadInputError(f"--energy-mj needs an energy model for target {tgt.name}: "
                            "energy measurements in its predictor or a power_w figure in "
                            "its target file")
    prep = model if isinstance(model, Prepared) else prepare(model, calib, progress=say)
    warnings = list(prep.warnings) + list(warnings or [])
    max_accuracy_drop = _accuracy_limit(prep, max_accuracy_drop, max_distortion,
                                        [] if defaults else warnings)
    cost, predictor_name, cost_warnings = _cost_function(tgt, prep, cost, predictor_name,
                                                         energy_mj is not None)
    warnings += cost_warnings
    budget = Budget(latency_ms, energy_mj, None, None, max_accuracy_drop)
    notes: list[str] = []    # candidate plans left out (_choose)
    if plan is not None:
        ctx, tset, chosen = _given(prep, tgt, cost, given, warnings)
        objective, candidates = "given", []
    else:
        sens = prep.sensitivity(tgt.precisions, say)
        ctx = Context(prep.kernels, prep.space, tgt.precisions, cost, sens, prep.input_shape)
        say("building cost tables")
        tset = build_tables(ctx)
        if tset.unpriced:
            warnings.append(f"{len(tset.unpriced)} option(s) not offered because the predictor "
                            f"cannot price them, e.g. {tset.unpriced[0]}")
        objective = "drop" if (latency_ms is not None or energy_mj is not None) else "latency_ms"
        chosen, candidates = _choose(prep, ctx, tset, budget, objective, tgt.name, retries,
                                     seed, say, notes)
    search = functools.partial(_choose, prep, ctx, tset, objective=objective, target=tgt.name,
                               retries=retries, seed=seed, say=say, notes=notes)
    measure = functools.partial(_measured_latency, tgt, say=say) if measure_latency else None
    chosen, candidates, check = _check_latency(prep, chosen, candidates, budget, search, measure,
                                               latency_retries, strict, predictor_name, say)
    return _finish(prep, ctx, tgt, tset, budget, objective, chosen, candidates, predictor_name,
                   warnings + notes + check.warnings, Path(outdir), output, check, say,
                   tune_minutes)


def _accuracy_limit(prep: Prepared, drop: float | None, distortion: float | None,
                    warnings: list[str]) -> float | None:
    """The limit on the metric's drop: --max-distortion when accuracy cannot be measured with
    the data (the metric is output distortion), else --max-accuracy-drop; the other, if given,
    does not apply and a warning says so."""
    if prep.estimator.metric == "distortion":
        if drop is not None:
            warnings.append("--max-accuracy-drop does not apply: accuracy cannot be measured "
                            "with this calibration data (--max-distortion limits the output "
                            "distortion)")
        return distortion
    if distortion is not None:
        warnings.append("--max-distortion does not apply: accuracy is measured with this "
                        "calibration data (--max-accuracy-drop limits it)")
    return drop


ACTIVATION_BYTES = 256 << 20   # per accuracy run: 4 x the largest activation x the batch


def _batch_size(graph) -> int:
    """Samples per accuracy run: at most 64, and few enough that four copies of the model's
    largest activation tensor at that batch fit in ACTIVATION_BYTES (memory stays bounded on
    224x224 models: VGG-19 runs 5 at a time, ResNet-50 20)."""
    largest = max((int(np.prod([d for d in info.shape if isinstance(d, int)]))
                   * np.dtype(info.dtype).itemsize
                   for t, info in graph.tensors.items()
                   if info.shape is not None and not graph.is_weight(t)
                   and info.dtype in ("float32", "float16")), default=1)
    return int(min(64, max(1, ACTIVATION_BYTES // (4 * max(largest, 1)))))


def _input_paths(model, calib) -> list:
    """The files compile reads, which its output folder may not be, hold or sit inside."""
    if isinstance(model, Prepared):
        model = None if model.source == "<model>" else model.source
    elif isinstance(model, onnx.ModelProto):
        model = None
    return [p for p in (model, calib) if p is not None]


def _cost_function(tgt, prep: Prepared, cost: PlanCostFn | None, name: str | None,
                   need_energy: bool) -> tuple[PlanCostFn, str, list[str]]:
    """The target's plan-cost function, with energy from the predictor or the power figure."""
    warnings: list[str] = []
    if cost is None:
        from toolchain.compile.pricing import predictor_cost

        cost, name, warnings = predictor_cost(tgt, prep)
    if not _has_energy(cost, prep) and (need_energy or tgt.power_w is not None):
        if tgt.power_w is None:
            raise BadInputError(f"--energy-mj needs an energy model for target {tgt.name}: "
                                "energy measurements in its predictor or a power_w figure in "
                                "its target file")
        base = cost
        power = tgt.power_w

        def cost(plan: Plan):    # noqa: F811 - energy = latency x average power (estimate)
            got = base(plan)
            return replace(got, energy_mj=got.latency_ms * power)
        warnings.append(f"energy is an ESTIMATE: predicted latency x the target's average "
                        f"power {power:g} W (no energy measurements)")
    return cost, name or tgt.predictor, warnings


def _has_energy(cost: PlanCostFn, prep: Prepared) -> bool:
    return cost(Plan()).energy_mj > 0


def _solve(ctx: Context, tset: TableSet, budget: Budget, objective: str, target: str,
           seed: int, say: Progress) -> list[Candidate]:
    """Proposals, each priced as a whole plan and kept only if that meets the budgets: the
    exact optimum per resolution (re-linearized around each solution, at most RELINEARIZE
    rounds; best two kept), the greedy baseline, the evolutionary search, the uniform
    baselines."""
    exact: list[Candidate] = []
    for r, table in tset.tables.items():
        exact += _exact_rounds(ctx, table, r, budget, objective, target)
    if not exact:
        raise _best_reachable_error(ctx, tset, budget)
    exact.sort(key=lambda c: _key(c, objective))
    out = [replace(c, solver="exact") for c in exact[:2]]
    home = ctx.original if ctx.original in tset.tables else next(iter(tset.tables))
    try:
        greedy = solve_greedy(tset.tables[home], budget)
        plan = plan_of(ctx, tset.tables[home], home, greedy.picks, target)
        out.append(Candidate("greedy", home, plan, plan_metrics(ctx, plan)))
    except InfeasibleError:
        pass
    say("evolutionary search")
    evolved = _evolve(ctx, out[0], budget, objective, target, seed)
    if evolved is not None:
        out.append(evolved)
    out += _uniform(ctx, target)
    return [c for c in out if budget.allows(c.metrics)]


UNIFORM = (("uniform-int8", "int8", 1.0), ("uniform-w0.75", "fp32", 0.75),
           ("uniform-w0.5", "fp32", 0.5), ("uniform-int8-w0.75", "int8", 0.75))


def uniform_plans(ctx: Context, target: str | None = None) -> list[tuple[str, Plan]]:
    """The trivial baselines, labelled: every kernel int8 and/or pruned alike, where legal
    (a kernel keeps the precision alone, or stays as it is, where the width is not legal)."""
    out = []
    for label, precision, width in UNIFORM:
        kernels = {}
        for name in ctx.space.options:
            legal = ctx.space.choices(name, ctx.precisions)
            c = Choice(precision, width)
            if c not in legal:
                c = Choice(precision) if Choice(precision) in legal else Choice()
            if c != Choice():
                kernels[name] = c
        if kernels:
            out.append((label, Plan(kernels=kernels, target=target)))
    return out


def _uniform(ctx: Context, target: str) -> list[Candidate]:
    """The trivial baselines, measured too when they meet the budgets, so compile never
    returns a plan worse than them."""
    return [Candidate(label, ctx.original, plan, plan_metrics(ctx, plan))
            for label, plan in uniform_plans(ctx, target)]


def _key(c: Candidate, objective: str):
    return (getattr(c.metrics, objective), c.metrics.latency_ms, c.plan.to_json())


def _exact_rounds(ctx: Context, table, r, budget: Budget, objective: str,
                  target: str) -> list[Candidate]:
    out, seen = [], set()
    for _ in range(RELINEARIZE):
        try:
            sol = solve_exact(table, budget, objective)
        except InfeasibleError:
            break
        plan = plan_of(ctx, table, r, sol.picks, target)
        m = plan_metrics(ctx, plan)
        if budget.allows(m):
            out.append(Candidate("exact", r, plan, m))
        key = replace(plan, target=None).to_json()
        if key in seen or not np.isfinite(m.latency_ms):
            break
        seen.add(key)
        table = build_table(ctx, r, replace(plan, target=None))
    return out


def _evolve(ctx: Context, best: Candidate, budget: Budget, objective: str, target: str,
            seed: int) -> Candidate | None:
    """Precisions and widths over the structure of the best exact plan, whole plans priced;
    seeded with that plan and with uniform int8 (int8 pays off in runs, not one kernel)."""
    flat = flat_table(ctx, best.plan)

    def evaluate(picks):
        return plan_metrics(ctx, flat_plan(flat, best.plan, picks))

    uniform = replace(best.plan, kernels={
        d.name: next((o.payload[d.name] for o in d.options
                      if o.payload[d.name].precision == "int8"
                      and o.payload[d.name].width == 1.0), Choice()) for d in flat.decisions})
    seeds = [picks_of(flat, best.plan), picks_of(flat, uniform)]
    try:
        sol = solve_evolve(flat, budget, objective, evaluate=evaluate, seed=seed, seeds=seeds,
                           population=24, generations=20)
    except InfeasibleError:
        return None
    plan = flat_plan(flat, best.plan, sol.picks, target)
    return Candidate("evolve", best.resolution, plan, sol.metrics)


def _best_reachable_error(ctx: Context, tset: TableSet, budget: Budget) -> InfeasibleError:
    """Why no resolution's table has a plan: the accuracy limit (then the least predicted drop
    under the other budgets), or a resource budget (then the best reachable value of it)."""
    if budget.max_drop is not None:
        without = replace(budget, max_drop=None)
        drops = []
        for table in tset.tables.values():
            try:
                drops.append(solve_exact(table, without, "drop").metrics.drop)
            except InfeasibleError:
                pass
        if drops:
            return InfeasibleError(
                f"accuracy-drop limit {budget.max_drop:g} points cannot be met within the other "
                f"budgets: the least predicted drop reachable is {min(drops):.3g} points")
    best = None
    for table in tset.tables.values():
        try:
            check_feasible(table, replace(budget, max_drop=None))
        except InfeasibleError as e:
            lat = sum(min(o.latency_ms for o in d.options) for d in table.decisions) \
                + table.base.latency_ms
            if best is None or lat < best[0]:
                best = (lat, e)
    if best:
        return _with_fastest(best[1], ctx, tset)
    return InfeasibleError("no plan meets all budgets at once according to the whole-model "
                           "predictions (each is reachable alone in the additive estimate)")


def _with_fastest(err: InfeasibleError, ctx: Context, tset: TableSet) -> InfeasibleError:
    """The error naming the least-latency plan too (what reaches the best value)."""
    fastest = fastest_plan(ctx, tset)
    if fastest is None:
        return err
    plan, latency = fastest
    return InfeasibleError(f"{err}; the fastest plan ({plan.summary()}) is predicted at "
                           f"{latency:.4g} ms")


def _choose(prep: Prepared, ctx: Context, tset: TableSet, budget: Budget, objective: str,
            target: str, retries: int, seed: int, say: Progress,
            notes: list[str] | None = None) -> tuple[Candidate, list[Candidate]]:
    """The proposals measured (see the module doc). A proposal the rewrite refuses (an int8
    activation that overflows float32 on the calibration data) is left out, with a note in
    `notes` (compile's warnings)."""
    notes = [] if notes is None else notes
    measured: dict[str, Candidate] = {}
    refused: set[str] = set()
    limit = budget.max_drop
    pred_budget = budget
    for attempt in range(retries + 1):
        try:
            proposals = _solve(ctx, tset, pred_budget, objective, target, seed, say)
        except InfeasibleError:
            if not measured:
                raise          # the budgets themselves are out of reach: say by how much
            break              # the tightened predicted limit is: stop retrying
        if not proposals and not measured:
            raise _best_reachable_error(ctx, tset, budget)
        for c in proposals:
            key = c.plan.to_json()
            if key in measured or key in refused:
                continue
            say(f"measuring the accuracy of the {c.solver} plan "
                f"({c.metrics.latency_ms:.3f} ms predicted)")
            try:
                score = prep.score(c.plan)
            except BadInputError as err:
                refused.add(key)
                note = f"a candidate plan was left out: {err}"
                if note not in notes:
                    notes.append(note)
                    say(f"left out the {c.solver} plan: {err}")
                continue
            drop = prep.estimator.baseline.value - score.value
            measured[key] = replace(c, measured_drop=round(drop, 6),
                                    measured_accuracy=score.value)
        ok = [c for c in measured.values() if limit is None or c.measured_drop <= limit + 1e-9]
        if ok:
            return _pick(ok, objective), sorted(measured.values(), key=_order)
        if not measured:
            raise InfeasibleError(f"no candidate plan could be built: {notes[-1]}")
        best = min(measured.values(), key=_order)
        ratio = max(best.metrics.drop, 1e-3) / best.measured_drop
        tighter = (pred_budget.max_drop if pred_budget.max_drop is not None else limit) \
            * min(ratio, 0.9)
        say(f"measured drop {best.measured_drop:.3f} > limit {limit:g}: tightening the "
            f"predicted-drop limit to {tighter:.3f} (retry {attempt + 1}/{retries})")
        pred_budget = replace(pred_budget, max_drop=tighter)
    best = min(measured.values(), key=_order)
    raise InfeasibleError(f"accuracy-drop limit {limit:g} points cannot be met within the "
                          f"budgets: the best measured drop is {best.measured_drop:.3g} points "
                          f"({best.solver} plan)")


OBJECTIVES = {"drop": "least accuracy drop", "latency_ms": "least latency",
              "given": "the given plan (--plan: no search)"}


def _order(c: Candidate):
    return (c.measured_drop, c.metrics.latency_ms, c.solver, c.plan.to_json())


def _pick(ok: list[Candidate], objective: str) -> Candidate:
    if objective == "drop":
        return min(ok, key=_order)
    return min(ok, key=lambda c: (c.metrics.latency_ms, c.measured_drop, c.solver,
                                  c.plan.to_json()))


def _given(prep: Prepared, tgt, cost: PlanCostFn, plan: Plan, warnings: list[str]
           ) -> tuple[Context, TableSet, Candidate]:
    """--plan: the plan checked against the model's space and the target's precisions, priced
    and its accuracy measured; no sensitivity is measured, so its predicted drop is NaN
    (written as null) and there are no cost tables (the report has no front)."""
    plan.check(prep.space, tgt.precisions)
    if plan.target and plan.target != tgt.name:
        warnings.append(f"the plan was made for target {plan.target}; built for {tgt.name} as "
                        "given")
    plan = replace(plan, target=tgt.name)
    unmeasured = SensitivityTable(defaultdict(lambda: math.nan), prep.estimator.baseline)
    ctx = Context(prep.kernels, prep.space, tgt.precisions, cost, unmeasured, prep.input_shape)
    score = prep.score(plan)
    drop = round(prep.estimator.baseline.value - score.value, 6)
    chosen = Candidate("given", None, plan, plan_metrics(ctx, plan), drop, score.value)
    if not math.isfinite(chosen.metrics.latency_ms):
        warnings.append(f"the predictor cannot price this plan for {tgt.name}: no predicted "
                        "latency")
    return ctx, TableSet({}, prep.space.input_name, prep.input_shape), chosen


def _check_latency(prep: Prepared, chosen: Candidate, candidates: list[Candidate],
                   budget: Budget, search: Callable, measure: Callable | None, retries: int,
                   strict: bool, predictor: str, say: Progress
                   ) -> tuple[Candidate, list[Candidate], LatencyCheck]:
    """Time the chosen plan where the target runs here and check it against the latency budget
    (`budget_met`: 5% tolerance). A miss with retries left: the predicted latency budget becomes
    min(predicted budget, the plan's prediction) x budget / measured, and the search runs again.
    The first plan that meets the budget is kept, else the one measured fastest. A miss is a
    warning, or with `strict` an InfeasibleError (exit 3, nothing written)."""
    target_ms = budget.latency_ms
    tried: list[tuple[Candidate, list[Candidate], float | None, Budget]] = []
    pred, notes = budget, []
    while True:
        latency = measure(prep.rewrite(chosen.plan)) if measure else None
        tried.append((chosen, candidates, latency, pred))
        if budget_met(latency, target_ms) is not False or len(tried) > retries:
            break
        tighter = min(pred.latency_ms, chosen.metrics.latency_ms) * target_ms / latency
        say(f"measured {latency:.4g} ms > budget {target_ms:g} ms: predicted-latency budget "
            f"{tighter:.4g} ms (retry {len(tried)}/{retries})")
        pred = replace(pred, latency_ms=tighter)
        try:
            chosen, candidates = search(pred)
        except InfeasibleError as err:
            notes.append(f"--retry {len(tried)}: no plan within the tightened predicted budget "
                         f"{tighter:.4g} ms ({err})")
            break
    met = [t for t in tried if budget_met(t[2], target_ms) is not False]
    chosen, candidates, latency, _ = met[0] if met else min(tried, key=lambda t: t[2])
    ok = budget_met(latency, target_ms)
    if ok is False:
        miss = (f"measured latency {latency:.4g} ms misses the latency budget {target_ms:g} ms "
                f"by {100 * (latency / target_ms - 1):.0f}% (tolerance "
                f"{100 * BUDGET_TOLERANCE:g}%); predicted {chosen.metrics.latency_ms:.4g} ms by "
                f"{predictor}" + (f", after {len(tried) - 1} retries" if retries else
                                  "; --retry re-plans with the measured/predicted ratio"))
        if strict:
            raise InfeasibleError(miss + " (--strict)")
        notes.append(miss)
    attempts = None if not retries else tuple(
        {"predicted_latency_budget_ms": None if b.latency_ms is None else _figure(b.latency_ms),
         "solver": c.solver, "predicted_latency_ms": _figure(c.metrics.latency_ms),
         "measured_latency_ms": ms,
         "budget_met": budget_met(ms, target_ms)} for c, _, ms, b in tried)
    return chosen, candidates, LatencyCheck(latency, ok, attempts, notes)


def _measured_latency(tgt, model: onnx.ModelProto, say: Progress) -> float | None:
    """Latency of the rewritten model on the target when it runs here (checked against the
    latency budget; plans depend on it only with --retry)."""
    if tgt.measure.kind == "local-tvm":
        from toolchain.measure.tvm_backend import time_tvm_local

        say(f"timing the TVM module (model.so, relax VM, {tgt.measure.threads or 'all'} "
            "thread(s))")
        return round(time_tvm_local(model, tgt.tvm(), tgt.measure.threads).median_ms, 4)
    if tgt.measure.kind != "local-ort":
        return None
    from toolchain.measure.ort_backend import time_ort

    say(f"timing the result in onnxruntime ({tgt.measure.threads or 'all'} thread(s))")
    return round(time_ort(model, threads=tgt.measure.threads).median_ms, 4)


def _finish(prep: Prepared, ctx: Context, tgt, tset: TableSet, budget: Budget, objective: str,
            chosen: Candidate, candidates: list[Candidate], predictor: str,
            warnings: list[str], outdir: Path, output: Callable[[], Path],
            check: LatencyCheck, say: Progress,
            tune_minutes: float | None = None) -> CompileResult:
    """Emit the chosen model and write OUTDIR: built in a temporary folder beside it (owned by
    this process: a killed run's is removed by the next), which replaces it at the end by
    rename; `output()` re-checks the folder rule and gives the path to write."""
    from passes.emit_tvm import emit_tvm
    from toolchain.compile.output import kernel_rows, report_points, write_outdir
    from toolchain.measure.child import call as in_child

    model = prep.rewrite(chosen.plan)
    if tune_minutes:   # into the target's tuning database, which emit_tvm applies
        from toolchain.measure.tuning import tune_model

        tune_model(model, tgt, minutes=tune_minutes, progress=say)
    distortion = prep.estimator.metric == "distortion"
    dest = output()
    prefix = f".{dest.name}.tmp-"
    remove_dead_temps(dest.parent, prefix)     # left by a compile that was killed
    with owned_temp_dir(dest.parent, prefix) as work:
        tmp = work / "out"
        tmp.mkdir()                              # the mode mkdir gives: the umask's
        atomic_write(tmp / "model.onnx", model.SerializeToString(deterministic=True))
        say(f"building for {tgt.name} with TVM")
        feeds = {k: v[:1] for k, v in prep.calib.inputs.items()}
        # In a child process (toolchain.measure.child): Ctrl-C need not wait for TVM's C++.
        emitted = in_child(emit_tvm, model, tgt, tmp, cross_compiler=tgt.cross_compiler,
                           inputs=_at_input_size(feeds, model))
        warnings += list(emitted.warnings)
        for artifact in emitted.artifacts:
            follow_umask(tmp / artifact.path)
        m = chosen.metrics
        manifest = {
            "version": MANIFEST_VERSION,
            "target": tgt.name,
            "inputs": {"model_sha256": prep.model_sha256, "calib_sha256": prep.calib_sha256},
            "tools": tool_versions(),
            "budgets": {"latency_ms": budget.latency_ms, "energy_mj": budget.energy_mj,
                        "max_accuracy_drop": None if distortion else budget.max_drop,
                        "max_distortion_pct": budget.max_drop if distortion else None},
            "objective": OBJECTIVES[objective],
            "solver": chosen.solver,
            "predictor": predictor,
            "plan": json.loads(chosen.plan.to_json()),
            "predicted": {"latency_ms": _figure(m.latency_ms),
                          "energy_mj": _figure(m.energy_mj) if m.energy_mj else None,
                          "accuracy_drop": _figure(m.drop),
                          "model_bytes": int(m.model_bytes),
                          "peak_activation_bytes": int(m.peak_activation_bytes)},
            "measured": {"latency_ms": check.latency_ms, "accuracy": chosen.measured_accuracy,
                         "accuracy_drop": chosen.measured_drop,
                         "metric": prep.estimator.baseline.metric,
                         "unit": "% relative L2 vs fp32" if distortion else "points",
                         "baseline_accuracy": prep.estimator.baseline.value,
                         "samples": prep.estimator.samples},
            "budget_met": check.budget_met,
            "latency_retries": None if check.attempts is None else list(check.attempts),
            "tvm": {"target": emitted.target, "arch": emitted.arch, "cross": emitted.cross,
                    "checked_against_onnxruntime": emitted.checked,
                    "max_abs_error": emitted.max_abs_error,
                    "int8_runs_in_float": emitted.int8_in_float,
                    "schedules": dict(sorted(emitted.schedules.items()))},
            "artifacts": [{"path": "model.onnx",
                           "sha256": sha256_file(tmp / "model.onnx"), "arch": "onnx"}]
            + [{"path": a.path, "sha256": a.sha256, "arch": a.arch} for a in emitted.artifacts],
            "warnings": sorted(set(warnings)),
        }
        write_outdir(tmp, chosen.plan, manifest, report_points(tset, candidates, chosen,
                                                           check.latency_ms),
                     kernel_rows(ctx, chosen.plan), candidates, budget)
        publish_dir(tmp, output(), work)    # checked again: the folder may have changed since
    say(f"wrote {outdir}")
    return CompileResult(outdir, chosen.plan, manifest, tuple(candidates))


def _figure(value: float) -> float | None:
    """A predicted figure for the manifest: null where there is none (a given plan's drop, a
    price the predictor cannot give), never NaN or Infinity (not JSON)."""
    return round(value, 4) if math.isfinite(value) else None


def _at_input_size(feeds: dict[str, np.ndarray], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Check inputs at the rewritten model's input size (a plan may change the resolution)."""
    from passes.resize_input import fit_to_shape

    return {vi.name: fit_to_shape(feeds[vi.name],
                                  [d.dim_value for d in vi.type.tensor_type.shape.dim])
            for vi in model.graph.input if vi.name in feeds}



