"""Tuning with MetaSchedule (toolchain/measure/tuning.py) and the tuning database
(toolchain/tunedb.py): a handful of trials on one- and two-conv models."""
from __future__ import annotations

import logging
import threading

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from passes.emit_tvm import emit_tvm, tuning_module
from toolchain import tunedb
from toolchain.cli import cli
from toolchain.measure import tuning
from toolchain.target import load_target, parse_target

pytestmark = pytest.mark.xdist_group("tuning")


def convs(*layers: tuple[int, int]) -> onnx.ModelProto:
    """Conv (cout, k) + ReLU6 layers on a 1x8x16x16 input. ReLU6 is Clip with its bounds as
    initializers, as exporters write it: the build computes the bounds inside the fused conv,
    which MetaSchedule can tune only after `tunedb.inline_scalars`."""
    rng = np.random.default_rng(0)
    nodes, x, c = [], "input", 8
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("lo", 0.0), ("hi", 6.0))]
    for i, (cout, k) in enumerate(layers):
        w = rng.normal(0, 0.3, (cout, c, k, k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[k // 2] * 4,
                                   kernel_shape=[k, k], name=f"conv{i}"),
                  helper.make_node("Clip", [f"c{i}", "lo", "hi"], [f"r{i}"], name=f"relu6{i}")]
        x, c = f"r{i}", cout
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tuning, "POPULATION", 32)    # a handful of trials needs no more
    return tmp_path / "home"


def _target(mattr: list[str] | None = None, cores: int = 1):
    spec = {"kind": "llvm", "mcpu": "native", "num-cores": cores}
    if mattr is not None:
        spec["mattr"] = mattr
    return parse_target({"name": "t", "description": "", "precisions": ["fp32"],
                         "predictor": "host-tvm", "tvm_target": spec,
                         "measure": {"kind": "local-tvm", "threads": 1}})


def test_database_key_is_the_code_generation_target(home):
    neon = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}
    import tvm

    plain = tvm.target.Target({**neon, "mattr": ["+neon"]})
    dotprod = tvm.target.Target({**neon, "mattr": ["+neon", "+dotprod"]})
    reordered = tvm.target.Target({**neon, "mattr": ["+dotprod", "+neon"], "num-cores": 4})
    assert tunedb.database_dir(plain) != tunedb.database_dir(dotprod)
    assert tunedb.database_dir(dotprod) == tunedb.database_dir(reordered)
    assert tunedb.database_dir(plain).parent == home / "tuning"
    # The host target names no triple: this machine's is part of its key.
    assert tunedb.codegen_key(_target().tvm())["mtriple"]
    assert tunedb.database_dir(_target(cores=1).tvm()) == tunedb.database_dir(
        _target(cores=4).tvm())


def test_tune_reuse_and_apply(home, caplog):
    """A is tuned; B = A + one more conv tunes only the new workload; B's build takes both
    functions from the database and still matches onnxruntime; another feature set gets none."""
    target = load_target("host-tvm")
    a = tuning.tune_model(convs((8, 3)), target, trials=3)
    assert (a.workloads, a.reused, a.tuned, a.trials, a.failed) == (1, 0, 1, 3, 0)
    db = tunedb.load_database(target.tvm())
    assert tunedb.count_records(db) == (1, 3)

    model_b = convs((8, 3), (16, 1))
    path = home.parent / "b.onnx"
    onnx.save(model_b, str(path))
    out = CliRunner().invoke(cli, ["tune", str(path), "-t", "host-tvm", "--trials", "3"])
    assert out.exit_code == 0, out.output
    assert "2 workloads: 1 from the database, 1 tuned (3 trials, 0 failed" in out.output
    assert "1 already in the database" in out.output          # the log line

    with caplog.at_level(logging.INFO, logger="toolchain.tunedb"):
        built = emit_tvm(model_b, target, home.parent / "out")
    assert built.checked
    assert "2 of 2 functions scheduled from records" in caplog.text
    other = _target(["+avx2"]).tvm()
    _, hits, total = tunedb.apply_database(tuning_module(model_b, other), other)
    assert (hits, total) == (0, 0)          # no database for that feature set


def test_concurrent_writers_keep_every_record(home):
    """Writers merging into one database at once lose nothing (flock + rename)."""
    target = load_target("host-tvm")
    tuning.tune_model(convs((8, 3)), target, trials=4)
    records = tunedb.load_database(target.tvm()).get_all_tuning_records()
    shared = home / "shared"
    groups = [records[i::4] for i in range(4)]
    threads = [threading.Thread(target=tunedb.save_records, args=(target.tvm(), g, shared))
               for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = tunedb.load_database(target.tvm(), shared)
    assert tunedb.count_records(merged) == (1, 4)
    assert not list(shared.glob(".merge-*"))


def test_tune_usage_errors(home):
    runner = CliRunner()
    for args in (["--trials", "2", "--minutes", "1"], [], ["--trials", "0"]):
        out = runner.invoke(cli, ["tune", "m.onnx", "-t", "host-tvm", *args])
        assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    out = runner.invoke(cli, ["tune", str(home.parent / "none.onnx"), "-t", "host-tvm",
                              "--trials", "2"])
    assert out.exit_code == 2 and "no such file" in out.output
    assert not (home / "tuning").exists()


def test_rpc_target_is_tuned_on_the_device(home):
    """An RPC target's candidates run on the device server (the loopback farm)."""
    from toolchain.measure.rpc import start_farm

    with start_farm({"tune-1t": 1}) as farm:
        target = parse_target({
            "name": "remote", "description": "", "precisions": ["fp32"],
            "predictor": "host-tvm", "tvm_target": {"kind": "llvm", "num-cores": 1},
            "measure": {"kind": "rpc", "rpc_key": "tune-1t", "tracker": farm.address,
                        "timeout_s": 60}})
        result = tuning.tune_model(convs((8, 3)), target, trials=2)
    assert (result.tuned, result.trials, result.failed) == (1, 2, 0)
    assert tunedb.count_records(tunedb.load_database(target.tvm())) == (1, 2)
