"""TVM RPC: a real tracker and device server on 127.0.0.1, timing through them, timeouts."""
from __future__ import annotations

import time

import pytest

from toolchain.measure.probe import build_probe
from toolchain.measure.rpc import DeviceUnreachableError, start_farm, time_rpc, tracker_keys
from toolchain.measure.timing import TimingConfig
from toolchain.measure.tvm_backend import compile_relax, input_arrays, time_vm
from toolchain.target import load_target

CONFIG = TimingConfig(warmup=2, repeats=9, min_sample_ms=5.0, max_seconds=3.0)


@pytest.fixture(scope="module")
def farm():
    with start_farm({"host-1t": 1}) as running:
        yield running


@pytest.mark.xdist_group("timing")
def test_rpc_timing_agrees_with_local(farm):
    """The same compiled module timed on the loopback device and here agree within noise."""
    import tvm

    model = build_probe("conv-32-32-3-1-56-1-relu-fp32")
    target = load_target("host-tvm").tvm()
    executable = compile_relax(model, target)
    remote = time_rpc(model, target, "host-1t", farm.address, timeout_s=60, config=CONFIG,
                      executable=executable)
    from toolchain.measure.timing import pick_cpus, pinned
    from toolchain.measure.tvm_backend import set_tvm_threads
    # the device runs one thread; default schedules are parallel, so size this pool alike
    # (else the local run used both cores: 1.25 vs 2.14 ms idle)
    set_tvm_threads(1)
    with pinned(pick_cpus(1)):
        local = time_vm(executable, tvm.cpu(), input_arrays(model), CONFIG)
    # Noise bound: the larger of 35% and three times the two runs' spreads. Compared on the
    # fastest sample (the estimator docs/measure.md keeps): the other xdist worker can slow a
    # whole run of one side 2x (a clean-clone CI run: remote median 49.1 ms, spread 2%, fastest
    # 25.0 ms; local 24.9 ms).
    tolerance = max(0.35, 3 * (remote.spread_pct + local.spread_pct) / 100)
    assert abs(remote.min_ms / local.min_ms - 1) < tolerance, (remote, local)
    assert remote.median_ms > 0 and remote.repeats >= 3


def test_unknown_key_and_unreachable_tracker_fail_fast(farm):
    assert tracker_keys(farm.address) == {"host-1t": 1}
    model = build_probe("op-relu-32-112-fp32")
    with pytest.raises(DeviceUnreachableError, match="no device registered under key 'rpi9'"):
        time_rpc(model, "llvm", "rpi9", farm.address, timeout_s=5)
    start = time.monotonic()
    with pytest.raises(DeviceUnreachableError, match="no answer within 2 s"):
        time_rpc(model, "llvm", "host-1t", "127.0.0.1:9", timeout_s=2)
    assert time.monotonic() - start < 10


@pytest.mark.xdist_group("timing")
def test_profile_rpc_target_through_the_farm(farm, tmp_path, monkeypatch):
    """A user target measured over RPC: `profile` compiles here, times on the device server,
    and writes a resumable row with energy from the target's power figure."""
    from toolchain.measure.profile import profile
    from toolchain.measure.records import read_measurements

    monkeypatch.setenv("FLEETC_HOME", str(tmp_path))
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "board.toml").write_text(
        'name = "board"\ntvm_target = {kind = "llvm", mcpu = "native"}\nprecisions = ["fp32"]\n'
        f'power_w = 2.0\n[measure]\nkind = "rpc"\nrpc_key = "host-1t"\n'
        f'tracker = "{farm.address}"\ntimeout_s = 60\n')
    target = load_target("board")
    out = tmp_path / "board.csv"
    name = "op-relu-32-112-fp32"
    result = profile(target, [(name, lambda: build_probe(name))], out, CONFIG)
    assert result.measured == 1
    row = read_measurements(out)[0]
    assert dict(row.extra)["backend"] == "tvm-rpc"
    assert row.energy_mj == pytest.approx(2.0 * row.latency_ms, rel=1e-3)
