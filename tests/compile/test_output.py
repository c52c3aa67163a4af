"""The budget check on the artifact (toolchain.compile.output.budget_met)."""
from __future__ import annotations

import pytest

from toolchain.compile.output import BUDGET_TOLERANCE, budget_met


@pytest.mark.parametrize(("measured", "budget", "expected"), [
    (0.9, 1.0, True),
    (1.0, 1.0, True),
    (1.049, 1.0, True),          # within the 5% tolerance
    (1.051, 1.0, False),
    (34.7, 31.1, False),         # issue 22: Inception-v1, a miss that went unflagged
    (None, 1.0, None),           # not measurable here
    (1.0, None, None),           # no latency budget
])
def test_budget_met(measured, budget, expected):
    assert budget_met(measured, budget) is expected


def test_budget_met_tolerance_is_explicit():
    assert BUDGET_TOLERANCE == 0.05
    assert budget_met(1.09, 1.0, tolerance=0.1) is True
    assert budget_met(1.01, 1.0, tolerance=0.0) is False
