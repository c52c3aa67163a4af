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


# --- issue 21: calibration data is validated before any work --------------------------------

def _x(n: int = 8, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(dtype)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(graph, tmp_path, value, recwarn):
    x = _x()
    x[3, 0, 1, 2] = value
    with pytest.raises(BadInputError, match="NaN or infinite values in 1 of 8 samples "
                                            r"\(the first: sample 3\)"):
        load_calib(_save(tmp_path / "c.npz", inputs=x), graph)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_values_beyond_1e6_are_refused(graph, tmp_path):
    """1e38 is finite, but int8 ranges overflow float32 ("AssertionError: scale issue")."""
    x = _x()
    x[2, 0, 0, 0] = -1e38
    with pytest.raises(BadInputError, match=r"beyond \+-1e\+06 in 1 of 8 samples \(the first: "
                                            r"sample 2\)"):
        load_calib(_save(tmp_path / "c.npz", inputs=x), graph)
    x[2, 0, 0, 0] = -1e6    # the bound itself is fine
    assert len(load_calib(_save(tmp_path / "d.npz", inputs=x), graph)) == 8


@pytest.mark.parametrize("bad", [10, -1, 10**12])
def test_labels_outside_the_models_classes_are_refused(graph, tmp_path, bad):
    labels = np.zeros(8, np.int64)
    labels[6] = bad
    with pytest.raises(BadInputError, match=rf"0\.\.9 \(the model has 10 classes\); sample 6 "
                                            rf"has {bad}"):
        load_calib(_save(tmp_path / "c.npz", inputs=_x(), labels=labels), graph)


def test_labels_of_every_class_are_accepted(graph, tmp_path):
    labels = np.array([0, 9, 1, 8, 2, 7, 3, 6], np.uint8)
    calib = load_calib(_save(tmp_path / "c.npz", inputs=_x(), labels=labels), graph)
    assert calib.labels.dtype == np.int64 and calib.labels.tolist() == labels.tolist()


@pytest.mark.parametrize("n", [1, 7])
def test_fewer_than_eight_samples_are_refused(graph, tmp_path, n):
    with pytest.raises(BadInputError, match=f"{n} sample.*at least 8"):
        load_calib(_save(tmp_path / "c.npz", inputs=_x(n)), graph)


def test_at_least_the_models_batch(tmp_path):
    """A model with a fixed batch of 12 needs 12 samples (feeds() yields whole batches)."""
    graph = import_onnx(zoo.resnet(32, 10, 0.25, 10), input_shapes={"input": (12, 3, 32, 32)})
    with pytest.raises(BadInputError, match="10 sample.*at least 12"):
        load_calib(_save(tmp_path / "c.npz", inputs=_x(10)), graph)
    assert len(load_calib(_save(tmp_path / "d.npz", inputs=_x(12)), graph)) == 12


def test_float64_is_cast_to_float32_with_a_note(graph, tmp_path, caplog):
    x = _x(dtype=np.float64)
    calib = load_calib(_save(tmp_path / "c.npz", inputs=x), graph)
    assert calib.inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(calib.inputs["input"], x.astype(np.float32))
    assert "input 'input' is float64; cast to float32" in caplog.text


def test_npy_and_special_files_are_named(graph, tmp_path):
    np.save(tmp_path / "x.npy", _x())
    with pytest.raises(BadInputError, match=r"x\.npy: not a \.npz .*single \.npy array"):
        load_calib(tmp_path / "x.npy", graph)
    with pytest.raises(BadInputError, match="/dev/null: is a special file") as err:
        load_calib("/dev/null", graph)
    assert "no such" not in str(err.value)
    with pytest.raises(BadInputError, match="is a folder"):
        load_calib(tmp_path, graph)


def _npz_with(path, members: dict[str, bytes]):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(arr: np.ndarray, shape: tuple | None = None) -> bytes:
    """The .npy bytes of `arr`, its header declaring `shape` (a lie) when given."""
    import io

    header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False,
              "shape": shape or arr.shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + arr.tobytes()


def test_a_lying_npy_header_is_refused_before_any_allocation(graph, tmp_path):
    """A header declaring 10^10 samples over 8 bytes of data was a 7 TB MemoryError (exit 1)."""
    path = _npz_with(tmp_path / "c.npz", {"inputs.npy": _npy(np.zeros(2, np.float32),
                                                             (10**10, 3, 32, 32))})
    with pytest.raises(BadInputError, match=r"member 'inputs.npy': its header declares "
                                            r"\[10000000000, 3, 32, 32\] float32"):
        load_calib(path, graph)


def test_members_that_are_not_npy_arrays_are_refused(graph, tmp_path):
    x = _npy(_x())
    with pytest.raises(BadInputError, match=r"member 'notes.txt': not a .npy array"):
        load_calib(_npz_with(tmp_path / "c.npz", {"inputs.npy": x, "notes.txt": b"hi"}), graph)
    with pytest.raises(BadInputError, match="not a .npz calibration file"):
        load_calib(_npz_with(tmp_path / "d.npz", {"inputs.npy": b"garbage" * 20}), graph)
    assert len(load_calib(_npz_with(tmp_path / "e.npz", {"inputs.npy": x}), graph)) == 8
