"""Measured plan accuracy is kept in the fleet cache: a later run measures no plan twice."""
from __future__ import annotations

from types import SimpleNamespace

from toolchain.fleet.cache import plan_score
from toolchain.home import cache_dir
from toolchain.space import Choice, Plan


class _Prep(SimpleNamespace):
    def score(self, plan):
        self.measured.append(plan.to_json())
        return SimpleNamespace(value=0.9 if plan.kernels else 0.97)


def _prep(model: str = "a" * 64) -> _Prep:
    return _Prep(model_sha256=model, calib_sha256="c" * 64, measured=[],
                 estimator=SimpleNamespace(baseline=SimpleNamespace(value=0.97)))


def test_a_measured_plan_is_read_back_and_a_damaged_record_measured_again():
    int8 = Plan(kernels={"conv1": Choice("int8")})
    prep = _prep()
    assert plan_score(prep, int8) == (0.07, 0.9)
    assert plan_score(prep, Plan(target="rpi4", kernels=int8.kernels)) == (0.07, 0.9)
    assert plan_score(prep, Plan()) == (0.0, 0.97)
    assert len(prep.measured) == 2                 # the target is not part of the plan's key
    again = _prep()                                # a new run: read from the cache
    assert plan_score(again, int8) == (0.07, 0.9) and again.measured == []
    other = _prep(model="b" * 64)                  # another model: measured
    assert plan_score(other, int8) == (0.07, 0.9) and len(other.measured) == 1
    records = sorted((cache_dir() / "fleet" / "accuracy").iterdir())
    assert len(records) == 3
    for record in records:
        record.write_text('{"drop": ')
    damaged = _prep()
    assert plan_score(damaged, int8) == (0.07, 0.9) and len(damaged.measured) == 1
