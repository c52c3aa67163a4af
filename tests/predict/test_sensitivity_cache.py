"""The accuracy sensitivity cache verifies itself: a damaged entry is measured again, with a
warning; entries are replaced whole; build folders of killed runs are collected."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh

from toolchain.predict.accuracy import AccuracyEstimator, measure_sensitivity
from toolchain.space import Choice, Plan

KERNELS = {"gemm": [Choice(), Choice("int8"), Choice("int8", 0.5)]}
DIGESTS = "digests.json"


def _sound(folder: Path) -> bool:
    """The folder matches its digests (imported here: the helper is new in issue 21, and the
    module must load on the commit before it to show which tests fail there)."""
    from toolchain.files import check_digests

    return check_digests(folder) is None


def classifier(W: np.ndarray) -> onnx.ModelProto:
    nodes = [h.make_node("GlobalAveragePool", ["x"], ["p"]), h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    g = h.make_graph(nodes, "c", [h.make_tensor_value_info("x", 1, ["N", 2, 4, 4])],
                     [h.make_tensor_value_info("y", 1, ["N", 3])], [nh.from_array(W, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


class Measured:
    """An estimator and an `apply` that counts the plans it rewrites."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((40, 2, 4, 4)).astype(np.float32)
        self.W = rng.standard_normal((3, 2)).astype(np.float32)
        self.estimator = AccuracyEstimator(classifier(self.W), {"x": x},
                                           (x.mean((2, 3)) @ self.W.T).argmax(1))
        self.calls: list[Plan] = []
        self.stop_at: int | None = None

    def apply(self, plan: Plan) -> onnx.ModelProto:
        self.calls.append(plan)
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        return classifier(-self.W) if "int8" in plan.to_json() else classifier(self.W)

    def run(self, cache: Path):
        return measure_sensitivity(self.estimator, self.apply, KERNELS, cache=cache)


def _flip_digit(path: Path) -> None:
    """A measured value changed, the file still valid JSON of the same size."""
    text = path.read_text()
    i = next(i for i in range(text.index("["), len(text)) if text[i] in "123456789")
    path.write_text(text[:i] + ("2" if text[i] == "1" else "1") + text[i + 1:])


DAMAGE = {
    "truncated drops.json": lambda e: (e / "drops.json").write_bytes(
        (e / "drops.json").read_bytes()[:10]),
    "changed drops.json": lambda e: _flip_digit(e / "drops.json"),
    "deleted drops.json": lambda e: (e / "drops.json").unlink(),
    "garbled digests.json": lambda e: (e / DIGESTS).write_bytes(b"\xff\x00" * 40),
    "nested digests.json": lambda e: (e / DIGESTS).write_text("[" * 100_000),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_measured_again_with_a_warning(tmp_path, caplog, damage):
    m = Measured()
    cache = tmp_path / "sensitivity" / "key"
    first = m.run(cache)
    assert len(m.calls) == 2 and _sound(cache)
    DAMAGE[damage](cache)
    caplog.set_level(logging.WARNING)
    again = m.run(cache)
    assert len(m.calls) == 4                       # both changes measured again
    assert again.drops == first.drops
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(cache) in warned[0] and "damaged" in warned[0]
    assert damage.split()[1] in warned[0]
    assert _sound(cache)            # replaced by a sound entry
    m.run(cache)
    assert len(m.calls) == 4                       # and served from it


def test_an_interrupted_measurement_keeps_what_it_measured(tmp_path):
    m = Measured()
    cache = tmp_path / "sensitivity" / "key"
    m.stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        m.run(cache)
    assert _sound(cache)
    assert len(json.loads((cache / "drops.json").read_text())) == 1
    assert [p.name for p in cache.parent.iterdir()] == ["key"]   # no build folder left
    m.stop_at = None
    m.run(cache)
    assert len(m.calls) == 3                       # only the change not measured yet


def test_build_folders_of_dead_owners_are_removed_live_ones_kept(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    root = tmp_path / "sensitivity"
    dead, live = root / f".build-{child.pid}-x", root / f".build-{os.getpid()}-x"
    for folder in (dead, live):
        (folder / "entry").mkdir(parents=True)
    Measured().run(root / "key")
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, "key"])
