"""Cost tables for the optimizer, built from a plan-level cost function and measured sensitivity.

For one input resolution r and a reference plan R (first the plan B_r that only sets the
resolution), each kernel option c is priced `cost(R with c) - cost(R)` (latency, energy), with
the summed measured drop of c's atomic parts; a skippable block gets keep / skip the same way.
Compile re-linearizes around each solution (R = the last solution) until it repeats.
Model bytes and peak activation bytes are estimated from each kernel's weight and activation
bytes, scaled by the option's precision (fp16 2 bytes, int8 1 byte per value) and width, and
activations by (r / r0)^2.

This is the additive model: the exact solver is exact for it; every proposal is then priced as
a whole plan (`plan_metrics`), and the evolutionary search works on whole plans only
(`flat_table`), which captures interactions (int8 kernels fusing only next to int8 ones, a
pruned kernel shrinking its consumer). A skippable block and the kernels inside it are one
decision (skipping removes them, so adding both savings would count them twice): its options
are "skip" plus the Pareto-optimal latency/drop combinations of its kernels' options.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from toolchain.errors import UnsupportedKernelError
from toolchain.optimize.costs import CostTable, Decision, Metrics, Option
from toolchain.predict.accuracy import SensitivityTable
from toolchain.space import BYTES_PER_PRECISION, Choice, Kernel, Plan, Space

__all__ = ["PlanCosts", "TableSet", "Context", "build_table", "build_tables", "plan_of",
           "plan_metrics", "flat_table", "flat_plan", "picks_of", "fastest_plan"]

logger = logging.getLogger(__name__)

RESOLUTION = "input_resolution"


@dataclass(frozen=True)
class PlanCosts:
    """Predicted costs of the whole model under a plan (from the target's predictor)."""

    latency_ms: float
    energy_mj: float = 0.0
    unknown: tuple[str, ...] = ()     # kernels the predictor had no model for


PlanCostFn = Callable[[Plan], PlanCosts]


@dataclass(frozen=True)
class TableSet:
    """One cost table per input resolution (the resolution scales every kernel's cost, so it
    is an outer choice: each table is solved exactly and the best is kept)."""

    tables: dict[int | None, CostTable]     # None = the model has no resolution choice
    input_name: str | None
    input_shape: tuple[int, ...] | None
    unpriced: tuple[str, ...] = ()          # options left out: the predictor cannot price them


def _weight_bytes(k: Kernel, c: Choice) -> float:
    return k.weight_bytes / 4 * BYTES_PER_PRECISION[c.precision] * c.width


def _act_bytes(k: Kernel, c: Choice, scale: float) -> float:
    return k.activation_bytes / 4 * BYTES_PER_PRECISION[c.precision] * scale


@dataclass(frozen=True)
class Context:
    """What pricing a table needs besides the reference plan (one model, one target)."""

    kernels: list[Kernel]
    space: Space
    precisions: tuple[str, ...]
    cost: PlanCostFn
    sensitivity: SensitivityTable
    input_shape: tuple[int, ...] | None

    @property
    def original(self) -> int | None:
        s = self.input_shape
        return s[2] if s and len(s) == 4 else None

    def resolutions(self) -> list[int | None]:
        return list(self.space.resolutions) or [None]

    def at(self, resolution: int | None) -> Plan:
        """The plan that only sets the input resolution."""
        return _with_resolution(Plan(), self.space.input_name, self.input_shape, resolution,
                                self.original)


def build_table(ctx: Context, resolution: int | None, reference: Plan | None = None,
                unpriced: set[str] | None = None) -> CostTable:
    """The additive table of one resolution, linearized around `reference` (default: the
    original model at that resolution): each option is priced as `cost(reference with that
    one change) - cost(reference)`, so the table is exact at the reference and its single-change
    neighbours. Re-linearizing around a solution captures interactions such as int8 kernels
    that are only fast next to other int8 kernels."""
    ref = reference if reference is not None else ctx.at(resolution)
    base = ctx.cost(ref)
    r0 = ctx.original
    scale = (resolution / r0) ** 2 if resolution and r0 else 1.0
    blocks = _block_members(ctx.kernels, ctx.space)
    inside = {n for inner in blocks.values() for n in inner}
    decisions = [_kernel_decision(ctx, name, ref, base, scale, unpriced)
                 for name in sorted(ctx.space.options) if name not in inside]
    for b, inner in blocks.items():
        # A block's kernels are priced with the block kept (the reference may skip it).
        kept = replace(ref, skip_blocks=[x for x in ref.skip_blocks if x != b])
        # Skipping removes the block's kernels: their choices in the reference go with them.
        skipped = replace(ref, skip_blocks=sorted(set(ref.skip_blocks) | {b}),
                          kernels={k: c for k, c in ref.kernels.items() if k not in inner})
        try:
            kept_cost = ctx.cost(kept)
            keep_delta = PlanCosts(kept_cost.latency_ms - base.latency_ms,
                                   kept_cost.energy_mj - base.energy_mj)
            inner_decisions = [_kernel_decision(ctx, n, kept, kept_cost, scale, unpriced)
                               for n in inner if n in ctx.space.options]
        except UnsupportedKernelError as err:
            _note(unpriced, f"keeping block {b}", err)
            continue
        try:
            skip = _delta(ctx.cost, skipped, base)
        except UnsupportedKernelError as err:
            _note(unpriced, f"skipping block {b}", err)
            skip = None
        decisions.append(_block_decision(b, inner_decisions, keep_delta, skip,
                                         ctx.sensitivity.block(b)))
    fixed_bytes = sum(k.weight_bytes for k in ctx.kernels if k.name not in ctx.space.options)
    fixed_act = max([k.activation_bytes * scale for k in ctx.kernels
                     if k.name not in ctx.space.options] + [0.0])
    res_drop = ctx.sensitivity.resolution(resolution, r0) if resolution and r0 else 0.0
    return CostTable(tuple(sorted(decisions, key=lambda d: d.name)),
                     Metrics(base.latency_ms, res_drop, base.energy_mj, fixed_bytes, fixed_act))


def _note(unpriced: set[str] | None, what: str, err: Exception) -> None:
    if unpriced is not None:
        unpriced.add(f"{what}: {err}")


def _set_kernel(plan: Plan, name: str, c: Choice) -> Plan:
    kernels = {k: v for k, v in plan.kernels.items() if k != name}
    if c != Choice():
        kernels[name] = c
    return replace(plan, kernels=kernels)


def _kernel_decision(ctx: Context, name: str, ref: Plan, base: PlanCosts, scale: float,
                     unpriced: set[str] | None) -> Decision:
    """One kernel's options priced against `ref` (whose cost is `base`)."""
    k = next(k for k in ctx.kernels if k.name == name)
    opts = []
    for c in ctx.space.choices(name, ctx.precisions):
        try:
            delta = _delta(ctx.cost, _set_kernel(ref, name, c), base)
        except UnsupportedKernelError as err:
            _note(unpriced, f"{name}={c.label}", err)
            continue      # never priced as zero: not offered
        opts.append(Option(c.label, delta.latency_ms, ctx.sensitivity.kernel(name, c),
                           delta.energy_mj, _weight_bytes(k, c), _act_bytes(k, c, scale),
                           payload={name: c}))
    return Decision(name, tuple(opts))


def build_tables(ctx: Context, progress: Callable[[int, int, str], None] | None = None
                 ) -> TableSet:
    """One table per input resolution, linearized around the original model."""
    tables, unpriced = {}, set()
    rs = ctx.resolutions()
    for i, r in enumerate(rs):
        if progress:
            progress(i + 1, len(rs), f"cost table at resolution {r}")
        tables[r] = build_table(ctx, r, unpriced=unpriced)
    if unpriced:   # info: compile puts them in its warnings (manifest; `compile` prints them)
        logger.info("%d option(s) not offered: the predictor cannot price them", len(unpriced))
    return TableSet(tables, ctx.space.input_name, ctx.input_shape, tuple(sorted(unpriced)))


def _block_members(kernels: list[Kernel], space: Space) -> dict[str, tuple[str, ...]]:
    """Kernels inside each skippable block; a block overlapping an earlier one is left out
    (its saving would be counted twice)."""
    out: dict[str, tuple[str, ...]] = {}
    taken: set[str] = set()
    for b in sorted(space.blocks):
        nodes = set(space.blocks[b])
        inner = tuple(k.name for k in kernels if k.nodes and k.nodes[0] in nodes)
        if taken & set(inner):
            logger.info("block %s overlaps another skippable block; not offered", b)
            continue
        taken |= set(inner)
        out[b] = inner
    return out


def _block_decision(block: str, inner: list[Decision], keep: PlanCosts, skip: PlanCosts | None,
                    drop: float) -> Decision:
    """One decision for a block: skip it, or keep it (at `keep` against the reference) with one
    of the Pareto-optimal (latency, drop) combinations of its kernels' options (exact for
    latency/energy budgets, which are proportional here; dominated combinations can never be
    part of an optimum)."""
    from toolchain.optimize.pareto import pareto_front

    opts = [] if skip is None else [
        Option("skip", skip.latency_ms, drop, skip.energy_mj, 0.0, 0.0, payload="skip")]
    if inner:
        sub = CostTable(tuple(inner))
        for sol in pareto_front(sub):
            m = sol.metrics
            payload = {}
            for d, j in zip(inner, sol.picks, strict=True):
                payload.update(d.options[j].payload)
            label = "keep" + "".join(f" {d.name}={d.options[j].label}"
                                     for d, j in zip(inner, sol.picks, strict=True) if j)
            opts.append(Option(label, keep.latency_ms + m.latency_ms, m.drop,
                               keep.energy_mj + m.energy_mj, m.model_bytes,
                               m.peak_activation_bytes, payload=payload))
    else:
        opts.append(Option("keep", keep.latency_ms, 0.0, keep.energy_mj, payload={}))
    # "keep everything original" first: option 0 is the original form, as everywhere.
    opts.sort(key=lambda o: (o.payload == "skip", o.latency_ms, o.drop))
    keep_original = [o for o in opts if isinstance(o.payload, dict)
                     and all(c == Choice() for c in o.payload.values())]
    if keep_original:
        opts.remove(keep_original[0])
        opts.insert(0, keep_original[0])
    return Decision(f"block:{block}", tuple(opts))


def _with_resolution(plan: Plan, input_name, input_shape, r, original) -> Plan:
    if r is None or r == original or input_name is None:
        return plan
    shape = [input_shape[0], input_shape[1], r, r]
    return replace(plan, input_shape={input_name: shape})


def _delta(cost: PlanCostFn, plan: Plan, base: PlanCosts) -> PlanCosts:
    got = cost(plan)
    return PlanCosts(got.latency_ms - base.latency_ms, got.energy_mj - base.energy_mj)


def plan_of(ctx: Context, table: CostTable, resolution: int | None, picks: tuple[int, ...],
            target: str | None = None) -> Plan:
    """The Plan a solution's option indices stand for (original choices left out; the
    choices of kernels inside a skipped block dropped, since the block is gone)."""
    kernels, skips = {}, []
    for d, i in zip(table.decisions, picks, strict=True):
        payload = d.options[i].payload
        if payload == "skip":
            skips.append(d.name[len("block:"):])
        else:
            kernels.update({k: c for k, c in payload.items() if c != Choice()})
    gone = {n for b in skips for n in _block_members(ctx.kernels, ctx.space).get(b, ())}
    plan = Plan(kernels={k: c for k, c in kernels.items() if k not in gone},
                skip_blocks=sorted(skips), target=target)
    return _with_resolution(plan, ctx.space.input_name, ctx.input_shape, resolution,
                            ctx.original)


def plan_metrics(ctx: Context, plan: Plan) -> Metrics:
    """Whole-plan prediction: latency/energy from the cost function on the full plan
    (interactions included; infinite when the predictor cannot price it - never zero), drop
    from the summed sensitivity, bytes from the per-kernel estimates."""
    r0 = ctx.original
    shape = next(iter(plan.input_shape.values()), None)
    scale = (shape[2] / r0) ** 2 if shape and r0 else 1.0
    drop = ctx.sensitivity.plan(plan, r0)
    gone = {n for b in plan.skip_blocks
            for n in _block_members(ctx.kernels, ctx.space).get(b, ())}
    weights, acts = 0.0, 0.0
    for k in ctx.kernels:
        if k.name in gone:
            continue
        c = plan.kernels.get(k.name, Choice())
        weights += _weight_bytes(k, c)
        acts = max(acts, _act_bytes(k, c, scale))
    try:
        got = ctx.cost(plan)
    except UnsupportedKernelError:
        return Metrics(math.inf, drop, math.inf, weights, acts)
    return Metrics(got.latency_ms, drop, got.energy_mj, weights, acts)


def flat_table(ctx: Context, structure: Plan) -> CostTable:
    """The evolutionary search's space: the precision and width of every kernel left by the
    structure of `structure` (its input size, skipped blocks and kernel sizes stay fixed), as
    separate decisions without costs - the search prices whole plans (`plan_metrics`)."""
    gone = {n for b in structure.skip_blocks
            for n in _block_members(ctx.kernels, ctx.space).get(b, ())}
    decisions = []
    for name in sorted(ctx.space.options):
        if name in gone:
            continue
        size = structure.kernels.get(name, Choice()).kernel_size
        opts = tuple(Option(c.label, 0.0, payload={name: c})
                     for c in ctx.space.choices(name, ctx.precisions) if c.kernel_size == size)
        if opts:
            decisions.append(Decision(name, opts))
    return CostTable(tuple(decisions))


def flat_plan(table: CostTable, structure: Plan, picks: tuple[int, ...],
              target: str | None = None) -> Plan:
    kernels = {}
    for d, i in zip(table.decisions, picks, strict=True):
        kernels.update({k: c for k, c in d.options[i].payload.items() if c != Choice()})
    return Plan(kernels=kernels, skip_blocks=list(structure.skip_blocks),
                input_shape=dict(structure.input_shape), target=target)


def picks_of(table: CostTable, plan: Plan) -> tuple[int, ...]:
    """Option indices of a plan in a flat table (the first option where it has none)."""
    out = []
    for d in table.decisions:
        want = plan.kernels.get(d.name, Choice())
        out.append(next((i for i, o in enumerate(d.options) if o.payload[d.name] == want), 0))
    return tuple(out)


def fastest_plan(ctx: Context, tset: TableSet) -> tuple[Plan, float] | None:
    """The least-latency plan of the tables (every decision at its fastest option, at each
    resolution) and its whole-plan predicted latency; None if none can be priced."""
    best = None
    for r, table in tset.tables.items():
        picks = tuple(min(range(len(d.options)), key=lambda i, d=d: d.options[i].latency_ms)
                      for d in table.decisions)
        plan = plan_of(ctx, table, r, picks)
        latency = plan_metrics(ctx, plan).latency_ms
        if math.isfinite(latency) and (best is None or latency < best[1]):
            best = (plan, latency)
    return best
