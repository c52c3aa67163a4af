"""A fake fleet back end for tests of what surrounds planning and building (the cache, output
folders, interruption): `prepare`, `plan_devices`, `build_plan` and the timing phase replaced
by stand-ins that write a build entry in milliseconds. `builds` lists the target of each build.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def artifact(target: str) -> bytes:
    """The fake build's model.so: 20 kB that depend on the target."""
    return (target.encode() + bytes(range(256))) * 80


class FakeFleet:
    def __init__(self, seconds: float = 0.0) -> None:
        self.builds: list[str] = []
        self.seconds = seconds
        self.fail: BaseException | None = None

    def install(self, monkeypatch) -> FakeFleet:
        import toolchain.compile.driver as driver
        import toolchain.fleet.run as run

        monkeypatch.setattr(driver, "prepare", self.prepare)
        monkeypatch.setattr(run, "plan_devices", self.plan_devices)
        monkeypatch.setattr(run, "build_plan", self.build_plan)
        monkeypatch.setattr(run, "_time_builds", lambda builds, say: {})
        return self

    def prepare(self, model, calib=None, **_):
        return SimpleNamespace(
            sensitivity=lambda precisions, say=None: None, calib=None, warnings=[],
            model_sha256="0" * 64, calib_sha256=None,
            estimator=SimpleNamespace(baseline=SimpleNamespace(metric="agreement", value=1.0),
                                      samples=0))

    def plan_devices(self, fleet, prep, todo, say, planner=None):
        from toolchain.fleet.plan import DevicePlan, DevicePricing, FleetPlans
        from toolchain.space import Plan

        predicted = {"latency_ms": 1.5, "energy_mj": None, "accuracy_drop": 0.0,
                     "model_bytes": 0, "peak_activation_bytes": 0}
        devices = {d.name: DevicePlan(d.name, Plan(target=d.target), 0, predicted, 0.0, 1.0)
                   for d in todo}
        plans = FleetPlans([Plan()], np.zeros(1), {0: (0.0, 1.0)}, devices, {})
        plans.pricing = {d.name: DevicePricing(d.name, fleet.targets[d.target], d.budgets(),
                                               None, "fake") for d in todo}
        return plans

    def build_plan(self, job: dict, state: dict) -> dict:
        from toolchain.fleet.cache import build_folder, publish

        target = job["target"].name
        self.builds.append(target)
        try:
            with build_folder() as tmp:
                if self.fail is not None:
                    raise self.fail
                out = tmp / "out"
                out.mkdir()
                (out / "model.so").write_bytes(artifact(target))
                (out / "model.onnx").write_bytes(b"onnx" * 500)
                if self.seconds:
                    threading.Event().wait(self.seconds)   # overlap concurrent runs
                doc = {"target": target, "arch": "x86_64", "cross": False,
                       "checked_against_onnxruntime": True, "max_abs_error": 0.0,
                       "int8_runs_in_float": False, "warnings": [],
                       "artifacts": [{"path": "model.onnx", "sha256": "0", "arch": "onnx"},
                                     {"path": "model.so", "sha256": "0", "arch": "x86_64"}]}
                Path(out / "build.json").write_text(json.dumps(doc))
                publish(out, job["key"], tmp)
        except Exception as err:
            return {"key": job["key"], "ok": False, "error": f"{err}", "seconds": 0.0}
        return {"key": job["key"], "ok": True, "error": None, "seconds": 0.0}
