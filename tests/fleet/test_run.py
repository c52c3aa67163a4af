"""`fleetc fleet`: cache behaviour, partial failure, Dask, Make.

The model is a small ResNet-10 built in code (32x32 inputs, width 0.25: 11 convolutions and a
Gemm), labelled with its own fp32 predictions: every stage of a fleet build runs (import,
analysis, accuracy sensitivity, tables, solvers, rewrite, TVM build, timing) in seconds, and what
these tests check - which devices are built, cached or failed, and when - does not depend on it.
The tests of this module share one FLEETC_HOME (the accuracy sensitivity of the model is
measured once, as a user's second fleet run would find it) and run on one worker in order;
each test still builds whatever it needs itself. To keep the suite short the devices use
`host-fp32`, a user target that is host-ort-1t with fp32 only (fewer options to measure) and
LLVM at opt-level 0 (TVM builds several times faster; the code is still built, exported and
checked against onnxruntime).
"""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.helpers import run_ort
from toolchain.cli import cli
from toolchain.measure import zoo

pytestmark = pytest.mark.xdist_group("fleet")

TWO_HOSTS = '''
model = "model.onnx"
calib = "calib.npz"
max_accuracy_drop = 2.0

[[device]]
name = "host-a"
target = "host-fp32"
latency_ms = 3.0

[[device]]
name = "host-b"
target = "host-fp32"
latency_ms = {b}
'''

HOST_FP32 = '''
name = "host-fp32"
description = "this CPU through onnxruntime, 1 thread, fp32 only, unoptimized LLVM (test target)"
precisions = ["fp32"]
predictor = "host-ort-1t"
tvm_target = { kind = "llvm", opt-level = 0 }
[measure]
kind = "local-ort"
threads = 1
'''


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("fleet_home")
    (home / "targets").mkdir()
    (home / "targets" / "host-fp32.toml").write_text(HOST_FP32)
    return home


@functools.lru_cache(maxsize=1)
def _model() -> bytes:
    return zoo.resnet(resolution=32, depth=10, width=0.25, num_classes=10).SerializeToString()


@functools.lru_cache(maxsize=1)
def _samples() -> tuple[np.ndarray, np.ndarray]:
    """24 seeded inputs, labelled with the model's fp32 predictions (it scores 100%)."""
    inputs = np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32)
    model = onnx.load_from_string(_model())
    labels = np.array([run_ort(model, {"input": x[None]})[0].argmax() for x in inputs])
    return inputs, labels


@pytest.fixture()
def work(tmp_path, home, monkeypatch):
    monkeypatch.setenv("FLEETC_HOME", str(home))
    (tmp_path / "model.onnx").write_bytes(_model())
    _calib(tmp_path / "calib.npz", 24)
    return tmp_path


def _calib(path: Path, n: int) -> None:
    inputs, labels = _samples()
    np.savez_compressed(path, inputs=inputs[:n], labels=labels[:n])


def _fleet(work: Path, *args: str, text: str | None = None) -> tuple[dict, float]:
    if text is not None:
        (work / "fleet.toml").write_text(text)
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["fleet", str(work / "fleet.toml"), "-o",
                                      str(work / "out"), *args])
    seconds = time.perf_counter() - start
    doc = json.loads((work / "out" / "fleet.json").read_text())
    doc["exit_code"] = result.exit_code
    doc["stdout"] = result.stdout
    return doc, seconds


def _status(doc: dict) -> dict[str, str]:
    return {d["name"]: d["status"] for d in doc["devices"]}


def test_cache_rebuilds_exactly_what_changed(work):
    first, t_first = _fleet(work, text=TWO_HOSTS.format(b=4.0))
    assert first["exit_code"] == 0, first["stdout"]
    assert _status(first) == {"host-a": "built", "host-b": "built"}
    for name in ("host-a", "host-b"):
        files = {p.name for p in (work / "out" / name).iterdir()}
        assert {"model.onnx", "model.so", "plan.json", "manifest.json", "report.html"} <= files
    assert "host-a" in first["stdout"] and "built" in first["stdout"]

    again, t_again = _fleet(work, "--json")
    assert _status(again) == {"host-a": "cached", "host-b": "cached"}
    # --json: stdout is fleet.json and nothing else.
    assert json.loads(again.pop("stdout")) == {k: v for k, v in again.items() if k != "exit_code"}
    assert t_again < 0.1 * t_first, (t_again, t_first)
    print(f"\nfleet of 2: first call {t_first:.1f} s, cached call {t_again:.2f} s "
          f"({100 * t_again / t_first:.1f}%)")

    budget, _ = _fleet(work, text=TWO_HOSTS.format(b=5.0))
    assert _status(budget) == {"host-a": "cached", "host-b": "built"}

    _calib(work / "calib.npz", 23)  # other calibration data
    calib, _ = _fleet(work)
    assert _status(calib) == {"host-a": "built", "host-b": "built"}
    assert calib["inputs"]["calib_sha256"] != first["inputs"]["calib_sha256"]


BROKEN_TARGET = '''
name = "broken"
description = "a deliberately broken entry: its TVM target names no real kind"
precisions = ["fp32"]
predictor = "host-ort-1t"
tvm_target = { kind = "no-such-kind" }
[measure]
kind = "local-ort"
threads = 1
'''


def test_a_failing_device_does_not_stop_the_others(work, home):
    (home / "targets" / "broken.toml").write_text(BROKEN_TARGET)
    text = TWO_HOSTS.format(b=4.0).replace('target = "host-fp32"\nlatency_ms = 4.0',
                                           'target = "broken"\nlatency_ms = 4.0')
    doc, _ = _fleet(work, text=text)
    (home / "targets" / "broken.toml").unlink()
    assert doc["exit_code"] == 4
    status = _status(doc)
    assert status["host-b"] == "failed" and status["host-a"] in ("built", "cached")
    failed = next(d for d in doc["devices"] if d["name"] == "host-b")
    assert "no-such-kind" in failed["error"] or "TVM" in failed["error"]
    assert (work / "out" / "host-a" / "model.so").is_file()
    assert not (work / "out" / "host-b").exists()


def test_dask_cluster_gives_identical_plans(work):
    import distributed
    text = TWO_HOSTS.format(b=4.0).split("[[device]]")
    (work / "fleet.toml").write_text(text[0] + "[[device]]" + text[1])
    local, _ = _fleet(work)
    assert local["exit_code"] == 0
    plan_local = (work / "out" / "host-a" / "plan.json").read_bytes()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        address = cluster.scheduler_address.replace("tcp://", "")
        remote, _ = _fleet(work, "--no-cache", "--executor", f"dask://{address}")
    assert remote["exit_code"] == 0, remote["stdout"]
    assert _status(remote) == {"host-a": "built"}
    assert (work / "out" / "host-a" / "plan.json").read_bytes() == plan_local


def test_make_runs_fleetc_once_and_again_after_touching_the_model(work):
    if shutil.which("make") is None:
        pytest.fail("make is needed for the build-system example")
    text = TWO_HOSTS.format(b=4.0).split("[[device]]")
    (work / "fleet.toml").write_text(text[0] + "[[device]]" + text[1])
    shutil.copy(Path(__file__).parents[2] / "examples" / "make" / "Makefile", work)
    fleetc = str(Path(sys.executable).parent / "fleetc")

    def make() -> str:
        run = subprocess.run(["make", "-C", str(work), f"FLEETC={fleetc}"], capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    first = make()
    assert "fleet.toml -o build" in first
    out1 = (work / "build" / "fleet.json").stat().st_mtime_ns
    second = make()
    assert "fleet.toml -o build" not in second and "up to date" in second
    assert (work / "build" / "fleet.json").stat().st_mtime_ns == out1
    time.sleep(0.01)
    (work / "model.onnx").touch()
    third = make()
    assert "fleet.toml -o build" in third
    assert (work / "build" / "fleet.json").stat().st_mtime_ns > out1
