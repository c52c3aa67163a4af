"""Cost tables from a plan-cost function: decisions, block collapsing, plans round-trip."""
from __future__ import annotations

import pytest

from passes import load_and_analyze
from toolchain.compile.report import Point, svg_plot
from toolchain.compile.tables import (
    Context,
    PlanCosts,
    build_table,
    build_tables,
    plan_metrics,
    plan_of,
)
from toolchain.measure.zoo import mobilenet_v2
from toolchain.optimize.costs import Budget, metrics_of
from toolchain.optimize.exact import solve_exact
from toolchain.predict.accuracy import Score, SensitivityTable, atomic_changes, choice_key
from toolchain.space import Plan

SPEED = {"fp32": 1.0, "fp16": 1.3, "int8": 0.5}


@pytest.fixture(scope="module")
def analyzed():
    graph = load_and_analyze(mobilenet_v2(32, width=0.35, num_classes=10))
    return graph, graph.kernels, graph.space


def fake_cost(kernels, space):
    """MAC-proportional latency: precision factor x width (own output) x resolution area."""
    base = {k.name: k.macs * 1e-6 for k in kernels}
    blocks = {b: set(nodes) for b, nodes in space.blocks.items()}

    def cost(plan: Plan) -> PlanCosts:
        scale = 1.0
        for shape in plan.input_shape.values():
            scale = (shape[2] / 32) ** 2
        skipped = set().union(*(blocks[b] for b in plan.skip_blocks)) if plan.skip_blocks \
            else set()
        total = 0.1
        for k in kernels:
            if k.nodes[0] in skipped:
                continue
            c = plan.kernels.get(k.name)
            f = SPEED[c.precision] * c.width if c else 1.0
            total += base[k.name] * f * scale
        return PlanCosts(total)
    return cost


def fake_sensitivity(space):
    drops = {}
    for name in space.options:
        for c in space.choices(name, ("fp32", "int8")):
            for part in atomic_changes(c):
                drops[choice_key("kernel", name, part)] = 0.1 if part == "int8" else 0.3
    for b in space.blocks:
        drops[choice_key("block", b, "skip")] = 0.5
    for r in space.resolutions:
        drops[choice_key("resolution", "input", r)] = (32 - r) * 0.2
    return SensitivityTable(drops, Score("top1", 90.0, 90.0, 100.0, 1.0, 10))


def test_tables_cover_the_space_and_plans_round_trip(analyzed):
    graph, kernels, space = analyzed
    cost = fake_cost(kernels, space)
    shape = tuple(graph.shape(graph.inputs[0]))
    ctx = Context(kernels, space, ("fp32", "int8"), cost, fake_sensitivity(space), shape)
    tset = build_tables(ctx)
    assert set(tset.tables) == set(space.resolutions)
    table = tset.tables[32]
    names = {d.name for d in table.decisions}
    assert {f"block:{b}" for b in space.blocks} <= names
    for d in table.decisions:
        assert d.options[0].latency_ms == 0 and d.options[0].drop == 0   # original first
    # Every plan the exact solver picks is legal for the space and priced like the predictor.
    full = metrics_of(table, tuple(0 for _ in table.decisions)).latency_ms
    assert full == pytest.approx(cost(Plan()).latency_ms)
    sol = solve_exact(table, Budget(latency_ms=0.6 * full))
    plan = plan_of(ctx, table, 32, sol.picks, "host")
    plan.check(space, ("fp32", "int8"))
    assert plan.kernels or plan.skip_blocks
    whole = plan_metrics(ctx, plan)
    assert whole.latency_ms == pytest.approx(cost(plan).latency_ms)
    assert whole.drop == pytest.approx(sol.metrics.drop)
    # The fake cost is additive, except that a kernel inside a skipped block costs nothing:
    # the block decisions make the table agree with the whole-plan price.
    assert sol.metrics.latency_ms == pytest.approx(whole.latency_ms)
    # Re-linearized around the solution, the table is priced from it: the solution costs the
    # base, every option is a single change against it, and a solver started there agrees.
    again = build_table(ctx, 32, plan)
    assert again.base.latency_ms == pytest.approx(whole.latency_ms)
    resolved = solve_exact(again, Budget(latency_ms=0.6 * full))
    assert plan_metrics(ctx, plan_of(ctx, again, 32, resolved.picks)).latency_ms <= 0.6 * full
    small = plan_of(ctx, tset.tables[16], 16, tuple(0 for _ in tset.tables[16].decisions))
    assert small.input_shape == {space.input_name: [shape[0], shape[1], 16, 16]}


def test_svg_plot_draws_every_point():
    pts = [Point(1.0, 2.0, "a", "front"), Point(2.0, 1.0, "b", "front"),
           Point(1.5, 1.5, "c", "candidate"), Point(1.5, 1.2, "c", "measured"),
           Point(2.0, 1.0, "chosen", "chosen")]
    svg = svg_plot(pts, "latency", "drop", vline=1.8)
    assert svg.startswith("<svg") and svg.count("<title>") == 5 and "budget" in svg
    assert svg == svg_plot(pts, "latency", "drop", vline=1.8)     # deterministic
