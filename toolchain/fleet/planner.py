"""Per-device plans for the fleet: the exact solver per device, or the amortized optimizer
(one network for the whole fleet), chosen by `--planner fronts|exact|amortized|auto`
(fronts, the default: no per-device plan, only the fleet-wide candidates of plan.py).

Both work on the model's additive tables for every device at once (`table_family`): every
option of compile's cost tables (toolchain/compile/tables.py: each kernel's choices, each
skippable block as "skip" or one combination of its kernels' choices, at every input
resolution) is priced as `x(option) . w`, the option's features computed once per fleet and
`w` the device's predictor weights (toolchain/fleet/plan.py), so a device's tables are one
matrix product.

- exact: per device, the least predicted drop within its latency budget over every resolution,
  by the MILP (toolchain/optimize/exact.py; `exact_tables`).
- amortized: g(device latencies, budget) -> plan, an MLP trained once per (model, fleet) on
  TRAIN_DEVICES devices drawn around the fleet's own predictors with per-kernel-class speed
  factors from the spread the published device tables show (targets/class_spread.json,
  benchmarks/class_spread.py), labels from their exact fronts; exported to ONNX, run by
  onnxruntime over all devices in one batch, its plan repaired with each device's own
  latencies (toolchain/optimize/amortized.py, "additive tables").
- auto: amortized when the fleet has more than AUTO_DEVICES devices, else exact.

A device's latency budget is its `latency_ms`, tightened by `energy_mj / power_w` where the
target has a power figure. Devices with only an accuracy budget get no per-device plan (the
fleet's candidates serve them). The plans join the fleet's candidates; the pick (plan.py)
still decides per device with whole-plan predictions and measured accuracy.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import replace
from functools import cache
from importlib import resources

import numpy as np

from toolchain.compile.tables import Context, _block_members, _set_kernel, plan_of
from toolchain.errors import BadInputError
from toolchain.optimize.amortized import (
    TableFamily,
    exact_tables,
    train_table_planner,
)
from toolchain.optimize.costs import CostTable, Decision, Option
from toolchain.space import Choice, Plan

__all__ = ["PLANNERS", "AUTO_DEVICES", "resolve_planner", "table_family", "device_plans",
           "class_of", "prior_devices", "plausible_devices", "latency_budget"]

logger = logging.getLogger(__name__)

PLANNERS = ("fronts", "exact", "amortized", "auto")
# auto: amortized above this many devices. The rule: the break-even fleet size measured by
# benchmarks/bench_planner.py (training seconds / (exact - amortized seconds per device)),
# rounded up to a multiple of 50: 1055 measured on 200 generated digits devices (docs/fleet.md
# has the figures); it depends on the model's table size, this is the digits model's.
AUTO_DEVICES = 1100
TRAIN_DEVICES = 200     # training devices of the amortized planner
TRAIN_SEED = 0


def resolve_planner(planner: str, devices: int) -> str | None:
    """"exact", "amortized" or None (fronts) for a fleet of `devices` devices."""
    if planner not in PLANNERS:
        raise BadInputError(f"unknown planner {planner!r} (one of {', '.join(PLANNERS)})")
    if planner == "auto":
        return "amortized" if devices > AUTO_DEVICES else "exact"
    return None if planner == "fronts" else planner


def class_of(kind: str) -> tuple[str, bool]:
    """(kernel class, int8?) of a predictor kind such as `conv/int8` (targets/class_spread.json
    classes: 1x1 convs and gemms are the reference, `conv` dense, `dwconv` depthwise, anything
    else memory-bound). A kind named `conv1x1/...` is a 1x1 conv."""
    cls, _, precision = kind.partition("/")
    group = {"conv1x1": "1x1", "gemm": "1x1", "conv": "dense", "dwconv": "depthwise"}
    return group.get(cls, "memory"), precision.startswith("int8") or cls in ("quantize",
                                                                             "dequantize")


@cache
def class_spread() -> dict[str, float]:
    """sigma of log speed per kernel class relative to 1x1 convs (published device tables)."""
    doc = json.loads(resources.files("targets").joinpath("class_spread.json").read_text())
    return doc["sigma_log"]


def prior_devices(W: np.ndarray, const: np.ndarray, columns: list, count: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` devices: each a random one of the rows of W (its constant kept) with every
    kernel class's weights times exp(N(0, sigma_class)) and int8 kinds' times another such
    factor (`class_spread`)."""
    spread = class_spread()
    rng = np.random.default_rng(seed)
    kinds = sorted({k for k, _ in columns})
    cls = [class_of(k) for k in kinds]
    names = sorted({c for c, _ in cls} - {"1x1"})
    col_kind = np.array([kinds.index(k) for k, _ in columns])
    pick = rng.integers(0, len(W), count)
    logf = {c: rng.normal(0.0, spread[c], count) for c in names}
    log8 = rng.normal(0.0, spread["int8"], count)
    zero = np.zeros(count)
    per_kind = np.column_stack([logf.get(c, zero) + (log8 if int8 else zero)
                                for c, int8 in cls])
    return W[pick] * np.exp(per_kind[:, col_kind]), const[pick]


def plausible_devices(family: TableFamily, W: np.ndarray, const: np.ndarray, columns: list,
                      count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`prior_devices` whose every plan is predicted to take a positive time: scaling kinds
    apart can make a predictor's negative feature weights win; such draws are redrawn (at
    most 20 rounds)."""
    from toolchain.optimize.amortized import budget_range

    got_W, got_c = [], []
    for round_ in range(20):
        DW, Dc = prior_devices(W, const, columns, 2 * count, seed + 1000 * round_)
        lo, hi = budget_range(family, *family.latencies(DW, Dc))
        ok = np.isfinite(lo) & (lo > 0.02 * hi)
        got_W.append(DW[ok])
        got_c.append(Dc[ok])
        if sum(len(w) for w in got_W) >= count:
            break
    return np.vstack(got_W)[:count], np.concatenate(got_c)[:count]


def latency_budget(budgets: dict, power_w: float | None) -> float | None:
    """The latency a device may take: `latency_ms`, tightened by `energy_mj / power_w`."""
    out = budgets.get("latency_ms")
    if "energy_mj" in budgets and power_w:
        limit = budgets["energy_mj"] / power_w
        out = limit if out is None else min(out, limit)
    return out


def table_family(prep, precisions: tuple[str, ...], vector) -> tuple[TableFamily, list, Context,
                                                                    list]:
    """(family, template CostTable per resolution (payloads for `plan_of`), context, feature
    columns) of the model's tables, `vector(plan)` giving a plan's features (a dict
    (kind, feature) -> value, `FeatureCache.vector`). Options as compile/tables.py prices them
    around each resolution's unchanged model; a block's kept options are every combination of
    its kernels' choices (the original first)."""
    sens = prep.sensitivity(precisions)
    ctx = Context(prep.kernels, prep.space, precisions, None, sens, prep.input_shape)
    blocks = _block_members(ctx.kernels, ctx.space)
    inside = {n for inner in blocks.values() for n in inner}
    names = sorted([n for n in ctx.space.options if n not in inside]
                   + [f"block:{b}" for b in blocks])
    resolutions = ctx.resolutions()
    r0 = ctx.original
    rows: list[list] = []       # per resolution: (base vector, [option vectors])
    meta: list[tuple] = []      # per option: (decision, label, drop, payload)
    for r in resolutions:
        ref = ctx.at(r)
        x0 = vector(ref)
        opts = []
        for d, name in enumerate(names):
            for label, drop, payload, vec in _options(ctx, name, blocks, ref, x0, vector):
                opts.append(vec)
                if r == resolutions[0]:
                    meta.append((d, label, drop, payload))
        rows.append((x0, opts))
    columns = sorted({c for x0, opts in rows for v in [x0, *opts] for c in v})
    index = {c: j for j, c in enumerate(columns)}

    def dense(v: dict) -> np.ndarray:
        out = np.zeros(len(columns))
        for c, value in v.items():
            out[index[c]] = value
        return out

    X_base = np.array([dense(x0) for x0, _ in rows])
    X_opt = np.array([[dense(v) for v in opts] for _, opts in rows])
    drop_base = np.array([sens.resolution(r, r0) if r and r0 else 0.0 for r in resolutions])
    family = TableFamily(X_base, X_opt, drop_base, np.array([m[2] for m in meta]),
                         np.array([m[0] for m in meta]), tuple(m[1] for m in meta),
                         tuple(names))
    templates = []
    for _ in resolutions:
        decisions = [Decision(name, tuple(Option(m[1], 0.0, m[2], payload=m[3])
                                          for m in meta if m[0] == d))
                     for d, name in enumerate(names)]
        templates.append(CostTable(tuple(decisions)))
    return family, templates, ctx, columns


def _minus(a: dict, b: dict) -> dict:
    return {c: a.get(c, 0.0) - b.get(c, 0.0) for c in set(a) | set(b)}


def _options(ctx: Context, name: str, blocks: dict, ref: Plan, x0: dict, vector) -> list:
    """(label, drop, payload, feature delta) of one decision's options around `ref`."""
    sens = ctx.sensitivity
    if not name.startswith("block:"):
        return [(c.label, sens.kernel(name, c), {name: c},
                 _minus(vector(_set_kernel(ref, name, c)), x0))
                for c in ctx.space.choices(name, ctx.precisions)]
    block = name[len("block:"):]
    inner = [n for n in blocks[block] if n in ctx.space.options]
    per = [[(c, sens.kernel(n, c), _minus(vector(_set_kernel(ref, n, c)), x0))
            for c in ctx.space.choices(n, ctx.precisions)] for n in inner]
    out = []
    for combo in itertools.product(*per):
        payload = {n: c for n, (c, _, _) in zip(inner, combo, strict=True)}
        label = "keep" + "".join(f" {n}={c.label}" for n, c in payload.items() if c != Choice())
        vec: dict = {}
        for _, _, v in combo:
            for c, value in v.items():
                vec[c] = vec.get(c, 0.0) + value
        out.append((label, sum(d for _, d, _ in combo), payload, vec))
    skipped = replace(ref, skip_blocks=sorted(set(ref.skip_blocks) | {block}),
                      kernels={k: c for k, c in ref.kernels.items() if k not in blocks[block]})
    out.append(("skip", sens.block(block), "skip", _minus(vector(skipped), x0)))
    return out


def _allowed(predictors: list, columns: list, family: TableFamily) -> np.ndarray:
    """(devices, options): the option only uses kernel kinds the device's predictor has."""
    kinds = sorted({k for k, _ in columns})
    used = np.zeros((family.X_opt.shape[1], len(kinds)), dtype=bool)
    for j, (kind, _) in enumerate(columns):
        used[:, kinds.index(kind)] |= (family.X_opt[:, :, j] != 0).any(axis=0)
    missing = np.array([[k not in p.weights for k in kinds] for p in predictors], dtype=bool)
    return (missing.astype(np.int32) @ used.T.astype(np.int32)) == 0


def device_plans(prep, cache, precisions: tuple[str, ...], members: list, planner: str,
                 say, weights_of) -> tuple[list[Plan], dict]:
    """One plan per device with a latency budget (module doc) and the seconds spent
    ({"planner.tables", "planner.train", "planner.plans"}). `weights_of(predictors, columns)`
    -> (weights, constants): plan.py's, passed in (plan.py imports this module)."""
    seconds: dict[str, float] = {}
    wanted = [(m, latency_budget(m.budgets, m.target.power_w)) for m in members]
    wanted = [(m, b) for m, b in wanted if b is not None]
    if not wanted:
        return [], seconds
    start = time.perf_counter()
    say(f"{planner} planner: tables of every option for {len(wanted)} device(s)")
    family, templates, ctx, columns = table_family(prep, precisions, cache.vector)
    W, const = weights_of([m.predictor for m, _ in wanted], columns)
    base, opt = family.latencies(W, const)
    budgets = np.array([b for _, b in wanted])
    allowed = _allowed([m.predictor for m, _ in wanted], columns, family)
    seconds["planner.tables"] = time.perf_counter() - start
    if planner == "amortized":
        start = time.perf_counter()
        say(f"amortized planner: training on {TRAIN_DEVICES} devices around the fleet's "
            f"{len(wanted)}")
        TW, Tc = plausible_devices(family, W, const, columns, TRAIN_DEVICES, TRAIN_SEED)
        g = train_table_planner(family, TW, Tc)
        seconds["planner.train"] = time.perf_counter() - start
        start = time.perf_counter()
        opt = np.where(allowed[:, None, :], opt, 1e9)      # never repaired into
        rs, picks = g.choose(family, base, opt, budgets)
        chosen = list(zip(rs, picks, strict=True))
    else:
        start = time.perf_counter()
        chosen = [exact_tables(family, base[i], opt[i], budgets[i], allowed[i])
                  for i in range(len(wanted))]
    plans = []
    resolutions = ctx.resolutions()
    for got in chosen:
        if got is None:
            continue
        r, picks = int(got[0]), np.asarray(got[1])
        local = tuple(int(o - family.starts[d]) for d, o in enumerate(picks))
        plans.append(plan_of(ctx, templates[r], resolutions[r], local))
    seconds["planner.plans"] = time.perf_counter() - start
    return plans, seconds
