"""Calibration-data cases: the base .npz of a model with NaN / Inf values, wrong shapes and
dtypes (float64 among them), one or no sample, labels out of range or of the wrong kind,
wrong keys, files that are not an .npz (text, a truncated zip, an .npy, a header that claims a
huge array) and paths that are not regular files; through rewrite with a plan that uses the
data (int8 / pruning) and, heavy, compile --calib or a fleet with `calib`."""
from __future__ import annotations

import io
import zipfile

import numpy as np

from tests.fuzzing.bases import (
    CLASSES,
    base_calib,
    base_fleet,
    base_plan,
    input_name,
    model_bytes,
    npz_bytes,
    to_json,
    to_toml,
)
from tests.fuzzing.cases import Case, pick

__all__ = ["calib_case", "mutate_arrays"]


def _values(a: dict, rng) -> tuple[str, bool | None]:
    x = a["inputs"]
    what, value = pick(rng, [("NaN", np.nan), ("+Inf", np.inf), ("-Inf", -np.inf),
                             ("all NaN", None), ("1e38", 1e38), ("zeros", 0.0)])
    if value is None:
        x[...] = np.nan
    elif what == "zeros":
        x[...] = 0.0
    else:
        x.flat[rng.integers(0, x.size, 5)] = value
    return f"inputs with {what}", what not in ("1e38", "zeros") or None


def _shape(a: dict, rng) -> tuple[str, bool | None]:
    x = a["inputs"]
    other = x[:, :1] if x.shape[1] > 1 else np.repeat(x, 2, axis=1)
    what, new, bad = pick(rng, [("no sample axis", x[0], True), ("other channels", other, True),
                                ("half size", x[:, :, ::2, ::2], True), ("rank 5", x[..., None],
                                                                         True),
                                ("zero samples", x[:0], True), ("one sample", x[:1], True),
                                ("two samples", x[:2], None)])
    a["inputs"] = np.ascontiguousarray(new)
    if what in ("zero samples", "one sample", "two samples"):
        a["labels"] = a["labels"][:len(new)]
    return f"inputs {what} {list(new.shape)}", bad


def _dtype(a: dict, rng) -> tuple[str, bool | None]:
    dtype = pick(rng, ["float64", "float16", "int32", "uint8", "bool", "complex64", "object",
                       "U3"])
    a["inputs"] = a["inputs"].astype(dtype)
    return f"inputs dtype {dtype}", None if dtype == "float64" else True  # float64: cast, noted


def _labels(a: dict, rng) -> tuple[str, bool | None]:
    n = len(a["labels"])
    what, new, bad = pick(rng, [
        ("class 10+", np.full(n, 10), True), ("-1", np.full(n, -1), True),
        ("1e12", np.full(n, 1e12), True), ("1.5", np.full(n, 1.5), True),
        ("one too many", np.zeros(n + 1, np.int64), True), ("2-D", np.zeros((n, 2), np.int64),
                                                            True),
        ("strings", np.array(["cat"] * n), True), ("bool", np.ones(n, bool), None),
        ("whole floats", a["labels"].astype(np.float32), None), ("missing", None, False)])
    if new is None:
        a.pop("labels")
    else:
        a["labels"] = new
    return f"labels {what}", bad


def _keys(a: dict, rng, model: str) -> tuple[str, bool | None]:
    how = pick(rng, ["renamed", "by input name", "extra", "empty", "labels only"])
    if how == "renamed":
        a["data"] = a.pop("inputs")
    elif how == "by input name":
        a[input_name(model)] = a.pop("inputs")
    elif how == "extra":
        a["junk"] = np.zeros(3)
    elif how == "empty":
        a.clear()
    else:
        a.pop("inputs")
    return f"keys: {how}", {"by input name": False, "extra": None}.get(how, True)


def mutate_arrays(a: dict, rng, model: str) -> tuple[str, bool | None]:
    change = pick(rng, [_values, _values, _shape, _dtype, _labels, _labels])
    return _keys(a, rng, model) if rng.random() < 0.15 else change(a, rng)


def _huge_header() -> bytes:
    """An .npz whose member's header claims a 10^10-sample array (8 data bytes follow)."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000, 3, 8, 8), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    member = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 8
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inputs.npy", member)
    return buf.getvalue()


def _file(case: Case, rng, arrays: dict) -> tuple[str, str, bool | None]:
    """Not an .npz, or not a regular file: (path given to --calib, what, invalid?)."""
    how = pick(rng, ["text", "empty", "truncated", "npy", "garbage member", "huge header",
                     "dir", "null", "fifo", "zero", "missing", "compressed"])
    path = "c.npz"
    if how in ("text", "empty", "truncated", "garbage member", "huge header", "compressed"):
        data = npz_bytes(arrays)
        case.files[path] = {"text": b"inputs,labels\n1,2\n", "empty": b"",
                            "truncated": data[:len(data) // 2],
                            "garbage member": _garbage_zip(), "huge header": _huge_header(),
                            "compressed": npz_bytes(arrays, compressed=True)}[how]
    elif how == "npy":
        path = "c.npy"
        buf = io.BytesIO()
        np.save(buf, arrays["inputs"])
        case.files[path] = buf.getvalue()
    elif how == "dir":
        case.dirs.append(path)
    elif how == "fifo":
        case.fifos.append(path)
    elif how in ("null", "zero"):
        case.links[path] = f"/dev/{how}"
    return path, f"calibration file: {how}", how != "compressed"


def _garbage_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inputs.npy", b"this is no array")
    return buf.getvalue()


def _command(case: Case, rng, model: str, calib: str, heavy: bool) -> None:
    if heavy and rng.random() < 0.7:
        case.args = ["compile", "m.onnx", "--target", "host-ort-1t", "--latency-ms", "100",
                     "--max-accuracy-drop", "5", "--calib", calib, "--no-measure", "-o", "out"]
        case.outputs, case.output_kind = ["out"], "compile"
    elif heavy:
        case.files["f.toml"] = to_toml(base_fleet("m.onnx", False, calib)).encode()
        case.args = ["fleet", "f.toml", "-o", "out"]
        case.outputs, case.output_kind = ["out"], "fleet"
    else:
        plan = base_plan(model)
        if model == "tiny" and rng.random() < 0.5:
            plan["kernels"] = {"conv": {"precision": "fp32", "width": 0.5}}
        case.files["p.json"] = to_json(plan).encode()
        case.args = ["rewrite", "m.onnx", "--plan", "p.json", "--calib", calib, "-o", "out.onnx"]
        case.outputs, case.output_kind = ["out.onnx"], "onnx"


def calib_case(rng, heavy: bool) -> Case:
    """Mutated calibration data for a tiny model or the digits fixture."""
    model = pick(rng, ("tiny", "small")) if heavy else pick(rng, ("tiny", "small", "tiny",
                                                                  "small", "digits"))
    case = Case(mutation="", args=[], files={"m.onnx": model_bytes(model)})
    arrays = base_calib(model, rng)
    if rng.random() < 0.2:
        calib, what, case.expect_bad = _file(case, rng, arrays)
    else:
        what, case.expect_bad = mutate_arrays(arrays, rng, model)
        calib = "c.npz"
        case.files[calib] = npz_bytes(arrays)
    case.mutation = f"{model} ({CLASSES[model]} classes): {what}"
    _command(case, rng, model, calib, heavy)
    return case
