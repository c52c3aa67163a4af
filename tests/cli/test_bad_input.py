"""Bad input: one line on stderr naming the file and the problem, exit 2, no traceback."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import LIGHT_MODELS
from toolchain.cli import cli


def _conv_model(batch="N", h=8):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, h, h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, h, h])
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _external(tmp_path, keep_data: bool):
    path = tmp_path / "ext.onnx"
    model = _conv_model()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)
    if not keep_data:
        (tmp_path / "ext.bin").unlink()
    return path


def _case(name, tmp_path):
    if name == "missing":
        return tmp_path / "nope.onnx", "no such file"
    if name == "not-onnx":
        p = tmp_path / "notes.onnx"
        p.write_text("this is not a model\n" * 20)
        return p, "not an ONNX model"
    if name == "empty":
        p = tmp_path / "empty.onnx"
        p.write_bytes(b"")
        return p, "not an ONNX model"
    if name == "truncated":
        p = tmp_path / "trunc.onnx"
        p.write_bytes(LIGHT_MODELS[-1].read_bytes()[:3000])
        return p, "not an ONNX model"
    if name == "external-missing":
        return _external(tmp_path, keep_data=False), "external data"
    if name == "invalid":
        model = _conv_model()
        model.graph.node[0].input[1] = "no_such_weight"
        p = tmp_path / "invalid.onnx"
        p.write_bytes(model.SerializeToString())
        return p, "invalid model"
    if name == "directory":
        return tmp_path, "directory"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["missing", "not-onnx", "empty", "truncated",
                                  "external-missing", "invalid", "directory"])
def test_bad_model_files(tmp_path, name):
    path, words = _case(name, tmp_path)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert words in err and str(path.name) in err
    assert "Traceback" not in result.output


def test_external_data_present_loads(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", "--json", str(_external(tmp_path, True))])
    assert result.exit_code == 0, result.output


def test_debug_shows_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "inspect", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_symbolic_spatial_dims_need_input_shape(tmp_path):
    p = tmp_path / "sym.onnx"
    onnx.save(_conv_model(batch="N", h="H"), str(p))
    result = CliRunner().invoke(cli, ["inspect", str(p)])
    assert result.exit_code == 2
    assert "--input-shape" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    ok = CliRunner().invoke(cli, ["inspect", str(p), "--input-shape", "x=1x3x16x16", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"macs": 3072' in ok.stdout.replace("\n", "").replace("  ", " ") or \
        '"macs":3072' in ok.stdout.replace(" ", "").replace("\n", "")


@pytest.mark.parametrize("arg", ["x=1x3x0x16", "x", "=1x3", "x=ax3", "y=1x3x8x8"])
def test_bad_input_shape_option(tmp_path, arg):
    p = tmp_path / "m.onnx"
    onnx.save(_conv_model(), str(p))
    result = CliRunner().invoke(cli, ["inspect", str(p), "--input-shape", arg])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_batch_note_is_shown(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(_conv_model(), str(p))
    result = CliRunner().invoke(cli, ["inspect", str(p)])
    assert result.exit_code == 0
    assert "symbolic batch dimension 'N' taken as 1" in result.stdout



@pytest.mark.parametrize("device, typo, meant", [
    ('target = "rpi-4"', "'rpi-4' as its target", "'rpi4'"),
    ('target = "rpi4"\nproxy = "host-ort1t"\nmeasurements = "pi.csv"',
     "'host-ort1t' as its proxy", "'host-ort-1t'"),
])
def test_a_fleet_file_target_typo_names_the_file_the_device_and_the_closest(tmp_path, device,
                                                                           typo, meant):
    from tests.fuzzing.bases import probe_csv

    (tmp_path / "m.onnx").write_bytes(_conv_model().SerializeToString())
    (tmp_path / "pi.csv").write_text(probe_csv(np.random.default_rng(0)))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'model = "m.onnx"\nlatency_ms = 5\n[[device]]\nname = "host"\n'
                     f'target = "host-ort-1t"\n[[device]]\nname = "pi4"\n{device}\n')
    result = CliRunner().invoke(cli, ["fleet", str(fleet), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert f"fleet.toml: device pi4: unknown target {typo} (did you mean {meant}?)" in lines[0]
    assert not (tmp_path / "out").exists()
