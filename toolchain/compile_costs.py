"""Cost tables for the optimizer, built from a plan-level cost function and measured sensitivity.

For one input resolution r, the base plan B_r sets only the resolution. For each kernel option
c, the table holds `cost(B_r + {kernel: c}) - cost(B_r)` (latency, energy), and the summed
measured drop of c's atomic parts; a skippable block gets the options keep / skip the same way.
Model bytes and peak activation bytes are estimated from each kernel's weight and activation
bytes, scaled by the option's precision (fp16 2 bytes, int8 1 byte per value) and width, and
activations by (r / r0)^2.

This is the additive model: the exact solver is exact for it; the evolutionary search can score
whole plans with the cost function itself (`plan_metrics`), which captures interactions (a
pruned kernel shrinking its consumer). A skippable block and the kernels inside it are one
decision (skipping removes them, so adding both savings would count them twice): its options
are "skip" plus the Pareto-optimal latency/drop combinations of its kernels' options.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from toolchain.accuracy import SensitivityTable
from toolchain.errors import UnsupportedKernelError
from toolchain.optimize.costs import CostTable, Decision, Metrics, Option
from toolchain.space import Choice, Kernel, Plan, Space

__all__ = ["PlanCosts", "TableSet", "build_tables", "plan_of", "plan_metrics", "BYTES"]

logger = logging.getLogger(__name__)

BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
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
    return k.weight_bytes / 4 * BYTES[c.precision] * c.width


def _act_bytes(k: Kernel, c: Choice, scale: float) -> float:
    return k.activation_bytes / 4 * BYTES[c.precision] * scale


def build_tables(kernels: list[Kernel], space: Space, precisions: tuple[str, ...],
                 cost: PlanCostFn, sensitivity: SensitivityTable,
                 input_shape: tuple[int, ...] | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> TableSet:
    """Cost tables over every legal option of the target (see the module doc)."""
    resolutions: list[int | None] = list(space.resolutions) or [None]
    original = input_shape[2] if input_shape and len(input_shape) == 4 else None
    by_name = {k.name: k for k in kernels}
    blocks = _block_members(kernels, space)
    tables = {}
    unpriced: set[str] = set()
    for i, r in enumerate(resolutions):
        if progress:
            progress(i + 1, len(resolutions), f"cost table at resolution {r}")
        base_plan = _with_resolution(Plan(), space.input_name, input_shape, r, original)
        base = cost(base_plan)
        scale = (r / original) ** 2 if r and original else 1.0
        per_kernel = {}
        for name in sorted(space.options):
            k = by_name[name]
            opts = []
            for c in space.choices(name, precisions):
                try:
                    delta = _delta(cost, base_plan, base, kernels={name: c})
                except UnsupportedKernelError as err:
                    unpriced.add(f"{name}={_label(c)}: {err}")
                    continue      # never priced as zero: not offered
                opts.append(Option(_label(c), delta.latency_ms, sensitivity.kernel(name, c),
                                   delta.energy_mj, _weight_bytes(k, c), _act_bytes(k, c, scale),
                                   payload={name: c}))
            per_kernel[name] = Decision(name, tuple(opts))
        decisions = [d for n, d in per_kernel.items()
                     if not any(n in inner for inner in blocks.values())]
        for b, inner in blocks.items():
            delta = _delta(cost, base_plan, base, skip=[b])
            decisions.append(_block_decision(b, [per_kernel[n] for n in inner if n in per_kernel],
                                             delta, sensitivity.block(b)))
        fixed_bytes = sum(k.weight_bytes for k in kernels if k.name not in space.options)
        fixed_act = max([k.activation_bytes * scale for k in kernels
                         if k.name not in space.options] + [0.0])
        res_drop = sensitivity.resolution(r, original) if r and original else 0.0
        tables[r] = CostTable(tuple(sorted(decisions, key=lambda d: d.name)), Metrics(
            base.latency_ms, res_drop, base.energy_mj, fixed_bytes, fixed_act))
    if unpriced:
        logger.warning("%d option(s) not offered: the predictor cannot price them",
                       len(unpriced))
    return TableSet(tables, space.input_name, input_shape, tuple(sorted(unpriced)))


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


def _block_decision(block: str, inner: list[Decision], skip: PlanCosts,
                    drop: float) -> Decision:
    """One decision for a block: skip it, or keep it with one of the Pareto-optimal (latency,
    drop) combinations of its kernels' options (exact for latency/energy budgets, which are
    proportional here; dominated combinations can never be part of an optimum)."""
    from toolchain.optimize.pareto import pareto_front

    opts = [Option("skip", skip.latency_ms, drop, skip.energy_mj, 0.0, 0.0, payload="skip")]
    if inner:
        sub = CostTable(tuple(inner))
        for sol in pareto_front(sub):
            m = sol.metrics
            payload = {}
            for d, j in zip(inner, sol.picks, strict=True):
                payload.update(d.options[j].payload)
            label = "keep" + "".join(f" {d.name}={d.options[j].label}"
                                     for d, j in zip(inner, sol.picks, strict=True) if j)
            opts.append(Option(label, m.latency_ms, m.drop, m.energy_mj, m.model_bytes,
                               m.peak_activation_bytes, payload=payload))
    else:
        opts.append(Option("keep", 0.0, payload={}))
    # "keep everything original" first: option 0 is the original form, as everywhere.
    opts.sort(key=lambda o: (o.payload == "skip", o.latency_ms, o.drop))
    keep_original = [o for o in opts if isinstance(o.payload, dict)
                     and all(c == Choice() for c in o.payload.values())]
    if keep_original:
        opts.remove(keep_original[0])
        opts.insert(0, keep_original[0])
    return Decision(f"block:{block}", tuple(opts))


def _label(c: Choice) -> str:
    parts = [c.precision]
    if c.width != 1.0:
        parts.append(f"w{c.width:g}")
    if c.kernel_size is not None:
        parts.append(f"k{c.kernel_size}")
    return "/".join(parts)


def _with_resolution(plan: Plan, input_name, input_shape, r, original) -> Plan:
    if r is None or r == original or input_name is None:
        return plan
    shape = [input_shape[0], input_shape[1], r, r]
    return replace(plan, input_shape={input_name: shape})


def _delta(cost: PlanCostFn, base_plan: Plan, base: PlanCosts, kernels=None,
           skip=None) -> PlanCosts:
    p = replace(base_plan, kernels=dict(kernels or {}), skip_blocks=list(skip or []))
    if not p.kernels and not p.skip_blocks:
        return PlanCosts(0.0, 0.0)
    got = cost(p)
    return PlanCosts(got.latency_ms - base.latency_ms, got.energy_mj - base.energy_mj)


def plan_of(tset: TableSet, resolution: int | None, picks: tuple[int, ...],
            target: str | None = None) -> Plan:
    """The Plan a solution's option indices stand for (original choices left out)."""
    table = tset.tables[resolution]
    kernels, skips = {}, []
    for d, i in zip(table.decisions, picks, strict=True):
        payload = d.options[i].payload
        if payload == "skip":
            skips.append(d.name[len("block:"):])
        else:
            kernels.update({k: c for k, c in payload.items() if c != Choice()})
    original = tset.input_shape[2] if tset.input_shape else None
    plan = Plan(kernels=kernels, skip_blocks=sorted(skips), target=target)
    return _with_resolution(plan, tset.input_name, tset.input_shape, resolution, original)


def plan_metrics(tset: TableSet, resolution: int | None, cost: PlanCostFn,
                 sensitivity: SensitivityTable) -> Callable[[tuple[int, ...]], Metrics]:
    """Whole-plan evaluation for the evolutionary search: the predictor on the full plan
    (interactions included), the additive table for drop and bytes."""
    from toolchain.optimize.costs import metrics_of

    table = tset.tables[resolution]

    def evaluate(picks: tuple[int, ...]) -> Metrics:
        add = metrics_of(table, picks)
        got = cost(plan_of(tset, resolution, picks))
        return replace(add, latency_ms=got.latency_ms, energy_mj=got.energy_mj)
    return evaluate
