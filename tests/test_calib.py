"""Calibration data: the npz format, validation against the model inputs, the fallback."""
from __future__ import annotations

import numpy as np
import pytest

from passes.import_onnx import import_onnx
from toolchain.calib import feeds, load_calib, synthetic_calib
from toolchain.errors import BadInputError
from toolchain.measure import zoo


@pytest.fixture(scope="module")
def graph():
    return import_onnx(zoo.resnet(32, 10, 0.25, 10))


def _save(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def test_inputs_and_labels(graph, tmp_path):
    x = np.zeros((8, 3, 32, 32), np.float32)
    calib = load_calib(_save(tmp_path / "c.npz", inputs=x, labels=np.arange(8)), graph)
    assert len(calib) == 8 and calib.labels.tolist() == list(range(8))
    assert set(calib.inputs) == {"input"} and not calib.synthetic
    assert [f["input"].shape for f in feeds(calib, graph)] == [(1, 3, 32, 32)] * 8
    assert len(calib.take(2)) == 2 and calib.take(2).labels.tolist() == [0, 1]


def test_one_key_per_input_name(graph, tmp_path):
    calib = load_calib(_save(tmp_path / "c.npz", input=np.ones((8, 3, 32, 32), np.float32)), graph)
    assert calib.labels is None and calib.inputs["input"].shape == (8, 3, 32, 32)


@pytest.mark.parametrize(("arrays", "match"), [
    ({"inputs": np.zeros((4, 3, 16, 16), np.float32)}, "expects N x 3 x 32 x 32"),
    ({"inputs": np.zeros((4, 3, 32), np.float32)}, "expects N x 3 x 32 x 32"),
    ({"inputs": np.zeros((8, 3, 32, 32), np.int32)}, "dtype int32"),
    ({"other": np.zeros((4, 3, 32, 32), np.float32)}, "no data for model input"),
    ({"inputs": np.zeros((0, 3, 32, 32), np.float32)}, "non-zero number of samples"),
    ({"inputs": np.zeros((8, 3, 32, 32), np.float32), "labels": np.zeros(3, np.int64)},
     "'labels' must be 8 integers"),
    ({"inputs": np.zeros((8, 3, 32, 32), np.float32), "labels": np.zeros(8, np.float32)},
     "'labels' must be 8 integers"),
])
def test_bad_calibration_files(graph, tmp_path, arrays, match):
    with pytest.raises(BadInputError, match=match):
        load_calib(_save(tmp_path / "c.npz", **arrays), graph)


def test_missing_and_garbage_files(graph, tmp_path):
    with pytest.raises(BadInputError, match="no such calibration file"):
        load_calib(tmp_path / "missing.npz", graph)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a .npz"):
        load_calib(tmp_path / "bad.npz", graph)


def test_synthetic_fallback_warns_loudly(graph, capsys):
    calib = synthetic_calib(graph, n=3)
    assert calib.synthetic and calib.labels is None
    assert calib.inputs["input"].shape == (3, 3, 32, 32)
    assert "UNMEASURED" in capsys.readouterr().err
    again = synthetic_calib(graph, n=3, warn=False)
    np.testing.assert_array_equal(again.inputs["input"], calib.inputs["input"])
