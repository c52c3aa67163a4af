"""apply_plan and `fleetc rewrite`: exact fp32 rewrites, plan checks, files and exit codes."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from passes import load_and_analyze
from tests.helpers import random_feeds, run_ort
from toolchain.cli import cli
from toolchain.compile.rewrite import apply_plan, rewrite
from toolchain.errors import BadInputError
from toolchain.measure import zoo


def _plan(kernels=None, skip=(), shape=None, target=None):
    return {"version": 1, "target": target, "model": {"input_shape": shape or {}},
            "kernels": kernels or {}, "skip_blocks": list(skip)}


@pytest.fixture(scope="module")
def mbv2():
    return zoo.mobilenet_v2(32, 0.25, 10, se=True, hard_swish=True,
                            kernel_sizes=[3, 3, 5, 5, 5, 3, 3])


def test_all_fp32_plan_reproduces_outputs(mbv2):
    space = load_and_analyze(mbv2).space
    plan = _plan({k: {"precision": "fp32"} for k in space.options})
    out = apply_plan(mbv2, plan)
    feeds = random_feeds(mbv2)
    np.testing.assert_allclose(run_ort(out, feeds)[0], run_ort(mbv2, feeds)[0], atol=1e-5)


def test_skipping_a_zeroed_block_reproduces_outputs():
    model = zoo.mobilenet_v2(32, 0.25, 10)
    for init in model.graph.initializer:  # f(x) == 0 in block5: BN scale and shift zero
        if init.name in ("block5.project.bn.scale", "block5.project.bn.bias"):
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(init.dims[0], np.float32),
                                                       init.name))
    result = rewrite(model, _plan({"block5.expand.conv": {"precision": "int8"}},
                                  skip=["block5.add"]))
    assert result.dropped == ("block5.expand.conv",)  # the kernel went with its block
    assert "block5.expand.conv" not in result.after and "block4.expand.conv" in result.after
    feeds = random_feeds(model)
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0],
                               atol=1e-5)


def test_source_model_is_not_modified(mbv2):
    before = mbv2.SerializeToString()
    rewrite(mbv2, _plan({"last.conv": {"precision": "int8", "width": 0.5}}))
    assert mbv2.SerializeToString() == before


def test_costs_before_and_after():
    model = zoo.mobilenet_v2(32, 0.5, 10)
    result = rewrite(model, _plan({"block3.expand.conv": {"precision": "int8", "width": 0.5},
                                   "last.conv": {"precision": "fp16"}}))
    b, a = result.before["block3.expand.conv"], result.after["block3.expand.conv"]
    assert a.precision == "int8" and a.macs * 2 == b.macs
    assert a.param_bytes < b.param_bytes / 4  # half the channels, a quarter of the bytes each
    assert result.after["last.conv"].precision == "fp16"
    assert result.after["last.conv"].param_bytes < result.before["last.conv"].param_bytes * 0.6
    assert result.after["block3.project.conv"].macs * 2 == result.before["block3.project.conv"].macs


@pytest.mark.parametrize(("plan", "target", "match"), [
    (_plan({"nope": {"precision": "int8"}}), None, "no choices for"),
    (_plan({"head.fc": {"precision": "fp32", "width": 0.5}}), None, "width 0.5 is not legal"),
    (_plan({"last.conv": {"precision": "fp16"}}), "rpi4", "precision fp16 is not legal"),
    (_plan({"last.conv": {"precision": "fp16"}}, target="rpi4"), None, "not legal"),
    (_plan(skip=["block1.add"]), None, "not a skippable residual block"),
    (_plan(shape={"input": [1, 3, 20, 20]}), None, "input shape"),
    ({"version": 2}, None, "version"),
])
def test_illegal_plans(mbv2, plan, target, match):
    with pytest.raises(BadInputError, match=match):
        apply_plan(mbv2, plan, target=target)


# --- the command ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rewrite")
    model = zoo.mobilenet_v2(32, 0.25, 10)
    onnx.save(model, d / "m.onnx")
    x = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)  # the least
    np.savez_compressed(d / "calib.npz", inputs=x, labels=np.arange(8))
    np.savez_compressed(d / "bad.npz", inputs=x[:, :, :16, :16])
    return d


def _invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_command_writes_a_checked_model_and_prints_costs(files):
    plan = files / "p.json"
    plan.write_text(json.dumps(_plan({"block3.expand.conv": {"precision": "int8",
                                                             "width": 0.5}})))
    before = (files / "m.onnx").read_bytes()
    res = _invoke("rewrite", files / "m.onnx", "--plan", plan, "-o", files / "out.onnx",
                  "--calib", files / "calib.npz", "--target", "rpi4")
    assert res.exit_code == 0, res.output
    assert "block3.expand.conv" in res.stdout and "fp32->int8" in res.stdout
    assert "total" in res.stdout and "UNMEASURED" not in res.stdout
    assert (files / "m.onnx").read_bytes() == before
    out = onnx.load(files / "out.onnx")
    onnx.checker.check_model(out)
    assert [p.name for p in (files).iterdir() if p.name.startswith(".out.onnx")] == []


@pytest.mark.parametrize(("extra", "match"), [
    (["--calib", "bad.npz"], "expects N x 3 x 32 x 32"),
    (["--target", "jetson-nano"], "precision int8 is not legal"),
    (["--calib", "missing.npz"], "no such calibration file"),
])
def test_command_bad_input_writes_nothing(files, extra, match):
    plan = files / "p2.json"
    plan.write_text(json.dumps(_plan({"block3.expand.conv": {"precision": "int8"}})))
    extra = [str(files / e) if e.endswith(".npz") else e for e in extra]
    res = _invoke("rewrite", files / "m.onnx", "--plan", plan, "-o", files / "never.onnx", *extra)
    assert res.exit_code == 2, res.output
    assert match in res.output and "Traceback" not in res.output
    assert not (files / "never.onnx").exists()


def test_command_refuses_to_overwrite_its_input(files):
    plan = files / "p3.json"
    plan.write_text(json.dumps(_plan()))
    res = _invoke("rewrite", files / "m.onnx", "--plan", plan, "-o", files / "m.onnx")
    assert res.exit_code == 2 and "refusing to overwrite" in res.output
