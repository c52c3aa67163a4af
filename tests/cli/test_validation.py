"""One validation layer at the edge (issue 21): plans, fleet files, user targets, calibration
data, models and options are checked before any work; every problem is exit 2 and one line
`fleetc: error: ...` naming the file, the key and the value, cut to 200 characters, with no
traceback. Each case here was exit 1 (a bug), exit 0 or a late failure on 81f5e06.

The model is a tiny classifier built in code (conv -> global pool -> gemm, 10 classes), so a
case that gets past validation by mistake still ends in seconds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import cli

KERNEL = "conv"     # the classifier's first compute kernel (node names are kept)


def _classifier(x_type=TensorProto.FLOAT, x_shape=("N", 3, 8, 8), pads=(1, 1, 1, 1),
                bn_len=4, opset=17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", x_type, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             *[numpy_helper.from_array(np.ones(bn_len, np.float32), k) for k in "sbmv"],
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fw"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=list(pads)),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "classifier", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    onnx.save(_classifier(), tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", inputs=x, labels=np.arange(16) % 10)
    (tmp_path / "int8.json").write_text(json.dumps(
        {"version": 1, "kernels": {KERNEL: {"precision": "int8"}}}))
    return tmp_path


def _run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _error(result, *words: str) -> str:
    """Exit 2, no traceback, exactly one `fleetc:` line on stderr and it is the error; returns
    it after checking that it holds `words`."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("fleetc:")]
    assert len(lines) == 1 and lines[0].startswith("fleetc: error: "), result.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- plans ------------------------------------------------------------------------------------

PLANS = {   # name: (plan JSON text, words the error names)
    "kernels-string": ('{"version": 1, "kernels": "x"}', ["kernels", "'x'"]),
    "skip-blocks-int": ('{"version": 1, "skip_blocks": 1}', ["skip_blocks", "1"]),
    "target-list": ('{"version": 1, "target": ["host-ort-1t"]}', ["target", "['host-ort-1t']"]),
    "shape-non-numeric": ('{"version": 1, "model": {"input_shape": {"x": ["a", 3, 8, 8]}}}',
                          ["model.input_shape.x", "'a'"]),
    "shape-string": ('{"version": 1, "model": {"input_shape": {"x": "1x3x8x8"}}}',
                     ["model.input_shape.x", "'1x3x8x8'"]),
    "model-list": ('{"version": 1, "model": [1]}', ["model", "[1]"]),
    "choice-list": ('{"version": 1, "kernels": {"conv": ["int8"]}}', ["kernels.conv"]),
    "kernel-size-bool": ('{"version": 1, "kernels": {"conv": {"kernel_size": true}}}',
                         ["kernel_size", "True"]),
    "version-true": ('{"version": true}', ["version"]),
    "nested": ("[" * 200_000 + "]" * 200_000, ["nested deeper than 32"]),
    "nested-objects": ('{"a":' * 40 + "1" + "}" * 40, ["nested deeper than 32"]),
    "long-integer": ('{"version": 1' + "0" * 5000 + "}", ["5001 characters"]),
    "long-width": ('{"version": 1, "kernels": {"conv": {"width": 0.' + "5" * 5000 + "}}}",
                   ["characters"]),
    "infinite-width": ('{"version": 1, "kernels": {"conv": {"width": 1e999}}}',
                       ["kernels.conv.width", "inf"]),
    "nan-width": ('{"version": 1, "kernels": {"conv": {"width": NaN}}}', ["NaN"]),
    "not-utf8": ("\udcff", ["not UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(PLANS))
def test_bad_plans_are_exit_2_naming_file_and_key(work, case):
    text, words = PLANS[case]
    plan = work / "plan.json"
    plan.write_bytes(text.encode("utf-8", "surrogateescape"))
    result = _run("rewrite", work / "m.onnx", "--plan", plan, "-o", work / "out.onnx")
    _error(result, "plan.json", *words)
    assert not (work / "out.onnx").exists()


def test_a_plan_that_is_a_special_file(work):
    _error(_run("rewrite", work / "m.onnx", "--plan", "/dev/zero", "-o", work / "o.onnx"),
           "/dev/zero", "special file")


# --- fleet files: exit 2 before the shared work and before anything is written under
# $FLEETC_HOME ----------------------------------------------------------------------------------

DEVICE = '[[device]]\nname = "{name}"\ntarget = "host-ort-1t"\nlatency_ms = {latency}\n'
PROBES = ("design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,0.2\n"
          "conv-3-16-3-2-224-1-relu-fp16,0.15\nconv-3-16-3-2-224-1-relu-int8,0.1\n")
FLEETS = {   # name: (device table(s), words the error names)
    "latency-inf": (DEVICE.format(name="a", latency="inf"), ["device[0].latency_ms", "inf"]),
    "latency-nan": (DEVICE.format(name="a", latency="nan"), ["latency_ms", "nan"]),
    "latency-huge": (DEVICE.format(name="a", latency="1" + "0" * 30), ["latency_ms", "64 bits"]),
    "latency-5000-digits": (DEVICE.format(name="a", latency="1" + "0" * 5000), ["4300 digits"]),
    "latency-nested": (DEVICE.format(name="a", latency="[" * 200_000 + "]" * 200_000),
                       ["nested deeper than 32"]),
    "name-fleet.json": (DEVICE.format(name="fleet.json", latency=5), ["'fleet.json'", "reserved"]),
    "name-FLEET.JSON": (DEVICE.format(name="FLEET.JSON", latency=5), ["reserved"]),
    "name-newline": (DEVICE.format(name="host\\n", latency=5), ["name", "'host\\n'"]),
    "proxy-list": (DEVICE.format(name="a", latency=5) + 'proxy = ["host-ort-1t"]\n'
                   'measurements = "probes.csv"\n', ["device 'a'", "proxy", "['host-ort-1t']"]),
    "target-table": ('[[device]]\nname = "a"\ntarget = {kind = "llvm"}\nlatency_ms = 5\n',
                     ["target", "{'kind': 'llvm'}"]),
    "measurements-garbled": (DEVICE.format(name="a", latency=5) + 'proxy = "host-ort-1t"\n'
                             'measurements = "garbled.csv"\n',
                             ["device 'a'", "measurements 'garbled.csv'",
                              "line 3: latency_ms 'fast'"]),
    "fingerprint-garbled": (DEVICE.format(name="a", latency=5) + 'fingerprint = "garbled.csv"\n',
                            ["device 'a'", "fingerprint", "'fast'"]),
    "fingerprint-no-header": (DEVICE.format(name="a", latency=5) + 'fingerprint = "m.onnx"\n',
                              ["fingerprint 'm.onnx': missing column(s)"]),
    "fingerprint-unknown-designs": (DEVICE.format(name="a", latency=5)
                                    + 'fingerprint = "unknown.csv"\n',
                                    ["fingerprint", "0 usable designs", "at least 3"]),
    "fingerprint-special-file": (DEVICE.format(name="a", latency=5)
                                 + 'fingerprint = "/dev/null"\n', ["special file"]),
    "calib-folder": (DEVICE.format(name="a", latency=5), ["calib", "is a folder"]),
}


def _fleet_home_files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", sorted(FLEETS))
def test_bad_fleet_files_are_exit_2_before_any_work(work, case, monkeypatch, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FLEETC_HOME", str(home))
    devices, words = FLEETS[case]
    (work / "probes.csv").write_text(PROBES)
    (work / "garbled.csv").write_text(PROBES.replace("0.15", "fast"))
    (work / "unknown.csv").write_text("design,latency_ms\na,1\nb,2\nc,3\n")
    (work / "folder.npz").mkdir()
    calib = "folder.npz" if case == "calib-folder" else "calib.npz"
    (work / "fleet.toml").write_text(f'model = "m.onnx"\ncalib = "{calib}"\n' + devices)
    result = _run("fleet", work / "fleet.toml", "-o", work / "out")
    _error(result, "fleet.toml", *words)
    assert "shared work" not in result.stderr
    assert _fleet_home_files(home) == []        # nothing cached, nothing measured
    assert not (work / "out" / "fleet.json").exists()


def test_fleet_file_that_is_a_special_file(work):
    _error(_run("fleet", "/dev/zero", "-o", work / "out"), "/dev/zero", "special file")


# --- user targets -----------------------------------------------------------------------------

TARGET = 'name = "{name}"\ntvm_target = "llvm"\n{top}[measure]\nkind = "local-ort"\n{measure}'
TARGETS = {   # name: (top-level lines, [measure] lines, words the error names)
    "precisions-int": ("precisions = 5\n", "", ["precisions", "5"]),
    "precisions-dupes": ('precisions = ["fp32", "fp32"]\n', "", ["precisions"]),
    "threads-100000": ("", "threads = 100000\n", ["threads", "0..1024", "100000"]),
    "threads-float": ("", "threads = 2.5\n", ["threads", "2.5"]),
    "power-nan": ("power_w = nan\n", "", ["power_w", "nan"]),
    "power-bool": ("power_w = true\n", "", ["power_w", "True"]),
    "timeout-inf": ("", "timeout_s = inf\n", ["timeout_s", "inf"]),
    "tracker-no-port": ("", 'tracker = "localhost"\n', ["tracker", "'localhost'"]),
    "features-table": ("features = {a = {b = 1}}\n", "", ["[features] a"]),
    "description-list": ("description = [1]\n", "", ["description", "[1]"]),
    "predictor-path": ('predictor = "../x"\n', "", ["predictor", "'../x'"]),
    "kind-list": ("", "", ["kind"]),
    "nested": ("description = " + "[" * 200_000 + "]" * 200_000 + "\n", "",
               ["nested deeper than 32"]),
}


def _user_target(home: Path, name: str, text: str) -> Path:
    (home / "targets").mkdir(exist_ok=True)
    path = home / "targets" / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(TARGETS))
def test_bad_user_targets_are_exit_2_and_listed_as_broken(case, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETC_HOME", str(tmp_path))
    top, measure, words = TARGETS[case]
    text = TARGET.format(name="mine", top=top, measure=measure)
    if case == "kind-list":
        text = text.replace('kind = "local-ort"', 'kind = ["local-ort"]')
    _user_target(tmp_path, "mine", text)
    _error(_run("targets", "show", "mine"), "mine.toml", *words)
    listed = _run("targets")        # the other targets are still listed; this one as BROKEN
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "BROKEN" in rows["mine"] and "host-ort-1t" in rows and "rpi4" in rows
    assert "BROKEN" not in rows["host-ort-1t"]


def test_a_broken_user_target_is_left_out_of_measurable_targets(monkeypatch, tmp_path, caplog):
    """measurable_targets() (fleet cache keys, fingerprint pricing) leaves it out, warning."""
    from toolchain.target import measurable_targets

    monkeypatch.setenv("FLEETC_HOME", str(tmp_path))
    _user_target(tmp_path, "mine", TARGET.format(name="mine", top="precisions = 5\n",
                                                 measure=""))
    names = [t.name for t in measurable_targets()]
    assert "host-ort-1t" in names and "mine" not in names
    assert "mine.toml" in caplog.text and "left out" in caplog.text


# --- calibration data -------------------------------------------------------------------------

def _calib(work: Path, name: str, **arrays) -> Path:
    path = work / name
    np.savez(path, **arrays)
    return path


def _x(n: int = 16) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _with(value: float) -> np.ndarray:
    x = _x()
    x[5, 1, 2, 3] = value
    return x


CALIBS = {   # name: (arrays, words the error names)
    "nan": ({"inputs": _with(np.nan)}, ["NaN or infinite", "sample 5"]),
    "inf": ({"inputs": _with(np.inf)}, ["NaN or infinite", "sample 5"]),
    "float64-beyond-float32": ({"inputs": _x().astype(np.float64) * 1e300},
                               ["NaN or infinite"]),
    "1e38": ({"inputs": _with(1e38)}, ["beyond +-1e+06", "sample 5", "overflow"]),
    "label-10": ({"inputs": _x(), "labels": np.r_[np.zeros(15, int), 10]},
                 ["labels", "0..9", "sample 15 has 10"]),
    "label-minus-1": ({"inputs": _x(), "labels": np.r_[-1, np.zeros(15, int)]},
                      ["labels", "sample 0 has -1"]),
    "label-1e12": ({"inputs": _x(), "labels": np.r_[np.zeros(15, int), 10**12]},
                   ["1000000000000"]),
    "one-sample": ({"inputs": _x(1), "labels": np.zeros(1, int)}, ["1 sample", "at least 8"]),
    "seven-samples": ({"inputs": _x(7)}, ["7 sample", "at least 8"]),
}


@pytest.mark.parametrize("case", sorted(CALIBS))
def test_bad_calibration_data_is_exit_2(work, case, recwarn):
    arrays, words = CALIBS[case]
    calib = _calib(work, "bad.npz", **arrays)
    result = _run("rewrite", work / "m.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx", "--calib", calib)
    _error(result, "bad.npz", *words)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]   # numpy's


def test_calib_with_a_lying_header_is_refused_before_reading(work):
    """A .npy header declaring 10^10 samples over 8 bytes was MemoryError, exit 1."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (10**10, 3, 8, 8)})
    with zipfile.ZipFile(work / "lying.npz", "w") as zf:
        zf.writestr("inputs.npy", buf.getvalue() + np.zeros(2, np.float32).tobytes())
    result = _run("rewrite", work / "m.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx", "--calib", work / "lying.npz")
    _error(result, "lying.npz", "header declares [10000000000, 3, 8, 8]")


def test_calib_npy_file_is_named(work):
    np.save(work / "x.npy", _x())
    result = _run("rewrite", work / "m.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx", "--calib", work / "x.npy")
    _error(result, "x.npy", ".npy array", "np.savez")


@pytest.mark.parametrize("path, words", [("/dev/null", ["special file"]),
                                         ("missing.npz", ["no such calibration file"])])
def test_calib_path_messages_say_what_it_is(work, path, words):
    calib = path if path.startswith("/") else work / path
    result = _run("rewrite", work / "m.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx", "--calib", calib)
    line = _error(result, *words)
    assert path != "/dev/null" or "no such" not in line


def test_float64_calibration_is_cast_with_a_note(work, caplog):
    calib = _calib(work, "f64.npz", inputs=_x().astype(np.float64),
                   labels=np.arange(16) % 10)
    result = _run("rewrite", work / "m.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx", "--calib", calib)
    assert result.exit_code == 0, result.output
    assert "f64.npz: input 'x' is float64; cast to float32" in caplog.text
    assert (work / "out.onnx").is_file()


# --- models -----------------------------------------------------------------------------------

def _mutant(case: str) -> onnx.ModelProto:
    """Models that onnx's full check (strict shape and type inference) or an onnxruntime session
    refuses; 81f5e06's `inspect` printed a report for them (exit 0) or failed with exit 1."""
    if case == "conv-rank-3-input":
        return _classifier(x_shape=("N", 3, 8))
    if case == "negative-pads":
        return _classifier(pads=(-1, -1, -1, -1))
    if case == "batchnorm-wrong-length":
        return _classifier(bn_len=3)
    if case == "int64-input":
        return _classifier(x_type=TensorProto.INT64)
    if case == "string-input":
        return _classifier(x_type=TensorProto.STRING)
    model = _classifier()
    if case == "opset-1000000":
        model.opset_import[0].version = 1_000_000
    elif case == "initializer-dtype-77":
        model.graph.initializer[0].data_type = 77
    elif case == "initializer-dtype-float16":     # raw data twice the size: "cannot reshape"
        model.graph.initializer[0].data_type = TensorProto.FLOAT16
    elif case == "initializer-dims-vs-data":      # 3x2 kernels, data for 3x3: "cannot reshape"
        model.graph.initializer[0].dims[3] = 2
    return model


MUTANTS = {"conv-rank-3-input": "invalid model", "negative-pads": "invalid model",
           "batchnorm-wrong-length": "invalid model", "int64-input": "invalid model",
           "string-input": "invalid model",
           "opset-1000000": "opset 1000000 of the default ONNX domain is not supported",
           "initializer-dtype-77": "type 77",
           "initializer-dtype-float16": "W has inconsistent type",
           "initializer-dims-vs-data": "initializer 'w' (data type 1, dims [4, 3, 3, 2]) cannot"}


@pytest.mark.parametrize("case", sorted(MUTANTS))
@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_refuses_models_that_fail_the_full_check_or_onnxruntime(tmp_path, case, as_json):
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(_mutant(case).SerializeToString())
    result = _run("inspect", *(["--json"] if as_json else []), path)
    _error(result, f"{case}.onnx", MUTANTS[case])
    assert result.stdout == ""


def test_inspect_still_accepts_the_valid_model_and_a_custom_domain(tmp_path):
    """The session load is skipped for a custom op domain (onnxruntime would not know it)."""
    onnx.save(_classifier(), tmp_path / "ok.onnx")
    assert _run("inspect", "--json", tmp_path / "ok.onnx").exit_code == 0
    model = _classifier()
    relu = model.graph.node[2]
    relu.op_type, relu.domain = "MyRelu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, tmp_path / "custom.onnx")
    result = _run("inspect", "--json", tmp_path / "custom.onnx")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unknown_ops"][0]["op_type"] == "MyRelu"


def test_every_command_refuses_a_model_that_fails_the_full_check(work):
    """Pads of the wrong length pass onnx's plain checker; rewrite found out only after the
    rewrite (RuntimeError, exit 1). load_model runs the full check for every command."""
    model = _classifier()
    attr = model.graph.node[0].attribute[0]
    del attr.ints[:]
    attr.ints.extend([1] * 6)
    onnx.save(model, work / "pads.onnx")
    result = _run("rewrite", work / "pads.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx")
    _error(result, "pads.onnx", "invalid model", "pads")


def test_a_stale_declared_shape_is_checked_by_inspect_only(work):
    """Exporters leave stale declared shapes: the import infers its own, so every command but
    inspect (onnx's full check as it is) takes the model, and the file is left as it was."""
    model = _classifier()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7   # 10 classes, in fact
    onnx.save(model, work / "stale.onnx")
    before = (work / "stale.onnx").read_bytes()
    _error(_run("inspect", work / "stale.onnx"), "stale.onnx", "onnx full check")
    result = _run("rewrite", work / "stale.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx", "--calib", work / "calib.npz")
    assert result.exit_code == 0, result.output
    assert (work / "stale.onnx").read_bytes() == before


@pytest.mark.parametrize("key, value", [("length", "-1"), ("offset", "-5")])
def test_a_negative_external_data_entry_is_bad_input(tmp_path, key, value):
    model = _classifier()
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    model = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    entry = model.graph.initializer[0].external_data.add()
    entry.key, entry.value = key, value
    onnx.save_model(model, tmp_path / "ext.onnx")
    _error(_run("inspect", tmp_path / "ext.onnx"), "ext.onnx", "external data", value)


def test_a_graph_without_outputs_is_refused_by_every_command(work):
    """compile found out in the fp32 scoring (IndexError, exit 1; benchmarks/fuzz.py)."""
    model = _classifier()
    del model.graph.output[:]
    onnx.save(model, work / "none.onnx")
    for args in (["inspect"], ["compile", "--target", "host-ort-1t", "--latency-ms", 100,
                               "--no-measure", "-o", work / "out"]):
        _error(_run(args[0], work / "none.onnx", *args[1:]), "none.onnx", "no outputs")


def test_a_declared_input_dimension_beyond_int32_is_exit_2(work):
    """rewrite of a model whose input declares 2^62 rows: `array is too big` (exit 1)."""
    onnx.save(_classifier(x_shape=("N", 3, 1 << 62, 8)), work / "huge.onnx")
    result = _run("rewrite", work / "huge.onnx", "--plan", work / "int8.json", "-o",
                  work / "out.onnx")
    _error(result, "huge.onnx", "input 'x' has a dimension above 2147483647")


def test_model_must_be_a_regular_file(tmp_path):
    _error(_run("inspect", "--json", "/dev/zero"), "/dev/zero", "special file")
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)      # opening it for reading would block for ever
    _error(_run("inspect", fifo), "fifo.onnx", "special file")


# --- options and the error line ---------------------------------------------------------------

@pytest.mark.parametrize("dims", ["1x3x" + "9" * 21 + "x8", "1x3x2147483648x8"])
def test_an_input_shape_beyond_int32_is_exit_2(work, dims):
    """A 21-digit dimension was `ValueError: Value out of range` in the export (exit 1)."""
    _error(_run("inspect", work / "m.onnx", "--input-shape", f"x={dims}"), "--input-shape x",
           "2147483647")


def test_a_30_mb_target_string_comes_back_as_a_short_line(work):
    huge = "t" * (30 << 20)
    result = _run("compile", work / "m.onnx", "--target", huge, "--latency-ms", 1, "-o",
                  work / "out")
    line = _error(result, "unknown target")
    assert len(line) <= 250


def test_an_internal_error_is_cut_too(work, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("x\n" + "y" * 1_000_000)

    monkeypatch.setattr("toolchain.cli.inspect.inspect", boom)
    result = _run("inspect", work / "m.onnx")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 300 and "internal error: RuntimeError" in lines[0]


def test_a_usage_error_is_cut_too(work):
    result = _run("fleet", work / "fleet.toml", "-o", work / "o", "--jobs", "9" * 100_000)
    assert result.exit_code == 2
    assert max(map(len, result.stderr.splitlines())) <= 300


def test_a_long_error_keeps_the_file_name_and_the_reason():
    from toolchain.cli import MAX_ERROR_CHARS, _line

    deep = "/tmp/" + "/".join(["pytest-of-someone-with-a-long-name"] * 6) + "/fleet.toml"
    line = _line(f"{deep}: calib 'c.npz': {deep[:-10]}c.npz: is a folder, not a calib file")
    assert len(line) <= MAX_ERROR_CHARS
    assert line.startswith(".../fleet.toml: calib 'c.npz'") and line.endswith("is a folder, "
                                                                             "not a calib file")
    huge = _line("unknown target " + "x" * 10_000_000 + " (see fleetc targets)")
    assert len(huge) <= MAX_ERROR_CHARS and huge.endswith("(see fleetc targets)")
