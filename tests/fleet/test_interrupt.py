"""An interrupted `fleetc fleet --jobs 2`: no process outlives it, Ctrl-C stops it within 5 s
(exit 130, one line), and what a killed run leaves is collected by the next run.

The CLI runs as a real process in its own process group (the group a terminal's Ctrl-C goes
to); its worker processes are found through psutil. These tests adopt the orphans of the
killed run and reap them, as init does on a normal system (`tests.processes`).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.compile.test_interrupt import softmax_chain
from tests.helpers import run_ort
from tests.processes import HOST_FP32, Fleetc, adopting_orphans, survivors, wait_until
from toolchain.cli import cli
from toolchain.measure import zoo

pytestmark = pytest.mark.xdist_group("interrupt")

FLEET = '''
model = "model.onnx"
calib = "calib.npz"
latency_ms = 100.0

[[device]]
name = "host-a"
target = "host-fp32"

[[device]]
name = "host-b"
target = "host-fp32-o1"
max_accuracy_drop = 50.0
'''
# Another TVM target, so the two devices are two distinct builds (one per worker) whatever
# their plans: a fleet builds once per distinct (plan, TVM target).
HOST_FP32_O1 = HOST_FP32.replace('"host-fp32"', '"host-fp32-o1"').replace(
    'tvm_target = "llvm"', 'tvm_target = { kind = "llvm", opt-level = 1 }')
IN_BUILD = 1.0    # seconds into both builds at the SIGKILL
IN_TVM = 12.0     # seconds into both builds at the Ctrl-C: in TVM code generation
LIMIT = 5.0       # seconds from the signal


@pytest.fixture()
def work(tmp_path):
    home = Path(os.environ["FLEETC_HOME"])
    (home / "targets").mkdir(parents=True)
    (home / "targets" / "host-fp32.toml").write_text(HOST_FP32)
    (home / "targets" / "host-fp32-o1.toml").write_text(HOST_FP32_O1)
    (tmp_path / "fleet.toml").write_text(FLEET)
    return tmp_path


def _inputs(work: Path, model: onnx.ModelProto, samples: int = 16) -> None:
    """The model and calibration data labelled with its own predictions (fp32 scores 100%)."""
    (work / "model.onnx").write_bytes(model.SerializeToString())
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal((samples, *dims[1:])).astype(np.float32)
    labels = [int(run_ort(model, {"input": x[i:i + 1]})[0].argmax()) for i in range(samples)]
    np.savez(work / "calib.npz", inputs=x, labels=np.array(labels, dtype=np.int64))


def _start_building(run: Fleetc, home: Path, seconds: float) -> int:
    """Wait until both workers build (each has its `.build-*` folder in the cache) and then
    `seconds` more; the index of the "building" line."""
    at = run.wait_for_line(r"^fleetc: 2 distinct build\(s\)", timeout=40)
    builds = home / "cache" / "fleet"
    assert wait_until(lambda: len(list(builds.glob(".build-*"))) >= 2, 40,
                      stop=lambda: run.proc.poll() is not None), "\n".join(run.stderr)
    time.sleep(seconds)
    assert run.proc.poll() is None and len(run.stderr) == at + 1, \
        "the fleet was not building when signalled:\n" + "\n".join(run.stderr)
    return at


def _temp_folders(*roots: Path) -> list[Path]:
    """Hidden folders (fleetc's temporary folders are all named .<something>)."""
    return [p for root in roots for p in root.rglob(".*") if p.is_dir()]


def test_sigkill_leaves_no_process_and_the_next_run_no_temp_folder(work):
    _inputs(work, zoo.resnet(resolution=32, depth=10, width=0.25, num_classes=10))
    home, out = Path(os.environ["FLEETC_HOME"]), work / "out"
    with adopting_orphans() as reap:
        run = Fleetc("fleet", "fleet.toml", "-o", str(out), "--jobs", "2", cwd=work)
        procs, left = [], []
        try:
            _start_building(run, home, IN_BUILD)
            procs = run.descendants()
            run.proc.kill()
            run.proc.wait()
            left = survivors(procs, timeout=LIMIT)
        finally:
            run.kill_all(procs)
            time.sleep(0.2)
            reap(procs)
    assert len(procs) >= 2
    assert left == []
    # The killed workers' build folders are still there (nothing ran their clean-up) ...
    assert len(_temp_folders(home / "cache" / "fleet")) >= 2

    result = CliRunner().invoke(cli, ["fleet", str(work / "fleet.toml"), "-o", str(out),
                                      "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert _temp_folders(home, out) == []   # ... and the next run removed them
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"host-a", "host-b"}


def test_ctrl_c_during_builds_exits_130_within_5_s(work):
    _inputs(work, softmax_chain())
    home, out = Path(os.environ["FLEETC_HOME"]), work / "out"
    with adopting_orphans() as reap:
        run = Fleetc("fleet", "fleet.toml", "-o", str(out), "--jobs", "2", cwd=work)
        procs, left = [], []
        try:
            at = _start_building(run, home, IN_TVM)
            procs = run.descendants()
            os.killpg(run.proc.pid, signal.SIGINT)
            seconds = run.finish(timeout=60)
            left = survivors(procs, timeout=2.0)
        finally:
            run.kill_all(procs)
            reap(procs)
    assert seconds is not None and seconds < LIMIT, seconds
    assert run.proc.returncode == 130, run.stderr
    assert run.stderr[at + 1:] == ["fleetc: interrupted"]
    assert left == []
    assert _temp_folders(home, out) == []   # removed on the way out, not left to a next run
