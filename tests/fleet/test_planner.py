"""`fleetc fleet --planner` (toolchain/fleet/planner.py): the auto rule, the prior's devices
differ in ranking, and both per-device planners on a real (tiny) fleet in plan-only mode."""
from __future__ import annotations

import numpy as np
import pytest

from tests.fleet.test_plan import _run, fleet_dir  # noqa: F401 - the fixture
from toolchain.errors import BadInputError
from toolchain.fleet import planner as fleet_planner

pytestmark = pytest.mark.xdist_group("fleet")


def test_auto_is_amortized_above_the_documented_fleet_size():
    assert fleet_planner.resolve_planner("auto", fleet_planner.AUTO_DEVICES) == "exact"
    assert fleet_planner.resolve_planner("auto", fleet_planner.AUTO_DEVICES + 1) == "amortized"
    assert fleet_planner.resolve_planner("fronts", 10_000) is None
    assert fleet_planner.resolve_planner("exact", 10_000) == "exact"
    with pytest.raises(BadInputError):
        fleet_planner.resolve_planner("greedy", 3)


def test_kinds_map_to_the_published_classes():
    assert fleet_planner.class_of("conv/fp32") == ("dense", False)
    assert fleet_planner.class_of("conv1x1/int8") == ("1x1", True)
    assert fleet_planner.class_of("gemm/fp32") == ("1x1", False)
    assert fleet_planner.class_of("dwconv/int8a") == ("depthwise", True)
    assert fleet_planner.class_of("Add/fp32") == ("memory", False)
    assert fleet_planner.class_of("quantize/int8") == ("memory", True)


def test_prior_devices_differ_in_ranking_not_only_in_scale():
    columns = [("conv/fp32", "macs"), ("dwconv/fp32", "macs"), ("Add/fp32", "kernel"),
               ("conv/int8", "macs")]
    W = np.array([[1.0, 1.0, 1.0, 1.0]])
    DW, _ = fleet_planner.prior_devices(W, np.zeros(1), columns, 50, seed=0)
    ratios = DW / DW[:, :1]                      # every class relative to dense fp32
    assert (ratios.std(axis=0)[1:] > 0.3).all()  # the published spread is about 1 in log
    X = np.random.default_rng(1).uniform(0, 1, (20, 4))       # 20 plans' features
    lat = X @ DW.T
    ranks = np.argsort(np.argsort(lat, axis=0), axis=0)
    assert (ranks != ranks[:, :1]).any(axis=0).mean() > 0.5   # most devices reorder plans


def test_latency_budget_is_tightened_by_energy():
    assert fleet_planner.latency_budget({"latency_ms": 5.0, "energy_mj": 8.0}, 2.0) == 4.0
    assert fleet_planner.latency_budget({"energy_mj": 8.0}, None) is None
    assert fleet_planner.latency_budget({"max_accuracy_drop": 1.0}, 2.0) is None


@pytest.mark.parametrize("planner", ["exact", "amortized"])
def test_per_device_plans_fit_and_are_no_worse_than_fronts(fleet_dir, monkeypatch,  # noqa: F811
                                                          planner):
    """Plan-only on the tiny fleet: with a per-device planner each device's pick is within
    its budget and its predicted drop is no more than with the fleet-wide fronts alone."""
    monkeypatch.setattr(fleet_planner, "TRAIN_DEVICES", 12)
    res, fronts = _run(fleet_dir, 0.0008, "--plan-only")
    assert res.exit_code == 0, res.output
    res, doc = _run(fleet_dir, 0.0008, "--plan-only", "--planner", planner)
    assert res.exit_code == 0, res.output
    assert "plan.planner.tables" in doc["phases_seconds"]
    assert ("plan.planner.train" in doc["phases_seconds"]) == (planner == "amortized")
    for mine, theirs in zip(doc["devices"], fronts["devices"], strict=True):
        assert mine["predicted"]["latency_ms"] <= 0.0008 * (1 + 1e-9)
        assert mine["predicted"]["accuracy_drop"] <= theirs["predicted"]["accuracy_drop"] + 1e-9
