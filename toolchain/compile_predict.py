"""The target's latency predictor as a plan-cost function for compile (toolchain.predict).

Every price comes from `predict_plan` on the analyzed float graph (no rewrite, no quantization:
fast enough for the thousands of plans the tables and the evolutionary search price). A kernel
the predictor has no model for is never priced as zero: the base plan then fails with
UnsupportedKernelError naming it, and an option that introduces one is not offered (compile
lists such options in its warnings).
"""
from __future__ import annotations

import logging

from toolchain.compile_costs import PlanCosts
from toolchain.space import Plan

__all__ = ["predictor_cost"]

logger = logging.getLogger(__name__)


def predictor_cost(target, prep) -> tuple:
    """(cost function, predictor name, warnings) for `target` on the prepared model."""
    from toolchain.predict.latency import load_predictor, predict_plan

    predictor = load_predictor(target)
    warnings = []
    meta = predictor.meta
    if not target.measurable_here and not meta.get("validated", False):
        warnings.append(f"latency predictions for {target.name} are UNVALIDATED: its predictor "
                        f"({predictor.name}) was not checked against measurements from the "
                        "device")
    memo: dict[str, PlanCosts] = {}

    def cost(plan: Plan) -> PlanCosts:
        key = plan.to_json()
        if key not in memo:
            p = predict_plan(predictor, prep.graph, plan, strict=True)
            memo[key] = PlanCosts(p.latency_ms)
        return memo[key]

    cost(Plan())   # fails here, naming the kernels, if the model itself cannot be priced
    return cost, predictor.name, warnings
