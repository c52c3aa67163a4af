"""Local measurements run in a worker process: one per round, restarted after a crash."""
from __future__ import annotations

import os
import signal
import threading

import onnx
import pytest
from onnx import TensorProto, helper

from toolchain.errors import BadInputError
from toolchain.measure.probe import build_probe, probe_set
from toolchain.measure.profile import profile
from toolchain.measure.records import read_measurements
from toolchain.measure.timing import TimingConfig
from toolchain.measure.worker import MeasureProcess
from toolchain.target import load_target

FAST = TimingConfig(warmup=1, repeats=3, min_sample_ms=1.0, max_seconds=1.0)
SLOW = TimingConfig(warmup=1, repeats=200, min_sample_ms=20.0, max_seconds=30.0)


def _probes(count: int):
    names = [p.name for p in probe_set(("fp32",), "fingerprint")][:count]
    return [(n, lambda n=n: build_probe(n)) for n in names]


def _unloadable() -> onnx.ModelProto:
    """A valid protobuf that onnxruntime refuses (an op of no known domain)."""
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                       [1])])
    return helper.make_model(graph)


@pytest.fixture
def started(monkeypatch):
    """Pids of the worker processes started (parent side)."""
    pids: list[int] = []
    original = MeasureProcess._start

    def counting(self):
        original(self)
        pids.append(self._proc.pid)
    monkeypatch.setattr(MeasureProcess, "_start", counting)
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_each_round_runs_in_a_new_process(tmp_path, started):
    out = tmp_path / "m.csv"
    result = profile(load_target("host-ort-1t"), _probes(2), out, FAST, rounds=3)
    assert (result.measured, result.failed) == (2, ())
    assert len(started) == 3 and len(set(started)) == 3 and os.getpid() not in started
    assert all(_gone(pid) for pid in started)   # each stopped after its round
    assert len(read_measurements(out)) == 2


def test_a_design_the_worker_rejects_fails_alone(tmp_path, started):
    designs = _probes(2)
    designs.insert(1, ("bad-model", _unloadable))
    result = profile(load_target("host-ort-1t"), designs, tmp_path / "m.csv", FAST)
    assert result.failed == ("bad-model",) and result.measured == 2
    assert len(started) == 1   # a refused model does not cost the worker


def test_a_crashed_worker_fails_the_design_and_is_restarted(started):
    target = load_target("host-ort-1t")
    name = "conv-128-128-3-1-112-1-relu-fp32"   # ~17 ms a run: SLOW keeps it busy for seconds
    with MeasureProcess() as worker:
        killer = threading.Timer(3.0, lambda: os.kill(started[0], signal.SIGKILL))
        killer.start()
        try:
            with pytest.raises(BadInputError, match=r"measuring process died \(exit code -9\)"):
                worker.measure(target, build_probe(name), SLOW)
        finally:
            killer.cancel()
        small = _probes(1)[0][1]()
        assert worker.measure(target, small, FAST).min_ms > 0
    assert len(started) == 2 and all(_gone(pid) for pid in started)


def test_an_interrupted_round_stops_its_worker_at_once(tmp_path, started):
    class StopError(Exception):
        pass

    def interrupt(_line: str) -> None:
        raise StopError   # as Ctrl-C would, after the first row
    with pytest.raises(StopError):
        profile(load_target("host-ort-1t"), _probes(3), tmp_path / "m.csv", FAST,
                progress=interrupt)
    assert len(started) == 1 and _gone(started[0])
