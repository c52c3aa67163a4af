"""Plan (JSON), fleet file (TOML) and user target (TOML) cases: the base document of
bases.py with one mutation - a value of the wrong type or out of range at a chosen or random
place, a key removed or added, text-level damage (truncation, bad UTF-8, deep nesting, huge
numbers) - or, for fleets, odd names, missing and special files, bad CSVs and output paths."""
from __future__ import annotations

import copy

import numpy as np

from tests.fuzzing.bases import (
    Raw,
    base_calib,
    base_fleet,
    base_plan,
    base_target,
    input_name,
    model_bytes,
    npz_bytes,
    probe_csv,
    to_json,
    to_toml,
)
from tests.fuzzing.cases import WEIRD, Case, delete_path, doc_paths, pick, set_path

__all__ = ["plan_case", "fleet_case", "target_case", "mutate_doc", "damage_text"]

DEEP = Raw("[" * 100_000 + "]" * 100_000)
HUGE_INT = Raw("9" * 5000)
NAN, INF = float("nan"), float("inf")


def mutate_doc(doc, rng, targeted: list, weird: list) -> tuple[object, str, bool | None]:
    """One mutation of `doc`: a targeted (path, value, invalid?) from the list, or a random
    value / removal / unknown key at a random place."""
    how = rng.random()
    if how < 0.55 and targeted:
        path, value, bad = pick(rng, targeted)
        return set_path(doc, path, copy.deepcopy(value)), f"{_where(path)} = {_show(value)}", bad
    paths = doc_paths(doc)
    path = pick(rng, paths)
    if how < 0.8:
        value = pick(rng, weird)
        return set_path(doc, path, value), f"{_where(path)} = {_show(value)}", None
    if how < 0.9 and len(path):
        delete_path(doc, path)
        return doc, f"{_where(path)} removed", None
    dicts = [p for p in paths if isinstance(_get(doc, p), dict)]
    path = pick(rng, dicts) if dicts else ()
    if isinstance(_get(doc, path), dict):
        _get(doc, path)["unknown_key"] = 1
    return doc, f"unknown key in {_where(path)}", True if path == () else None


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def _where(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "(root)"


def _show(value) -> str:
    text = value.text if isinstance(value, Raw) else repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} chars)"


def damage_text(text: str, rng) -> tuple[bytes, str]:
    """Text-level damage to a JSON or TOML document (every variant is invalid)."""
    data = text.encode()
    how = pick(rng, ["truncate", "utf8", "nul", "empty", "bracket", "garbage"])
    if how == "truncate":
        cut = int(rng.integers(1, max(2, len(data) - 1)))
        return data[:cut], f"truncated to {cut} bytes"
    if how == "utf8":
        cut = int(rng.integers(len(data)))
        return data[:cut] + b"\xff\xfe\xc3" + data[cut:], "invalid UTF-8 inside"
    if how == "nul":
        return data.replace(b"\n", b"\x00\n", 1), "a NUL byte"
    if how == "empty":
        return b"", "empty file"
    if how == "bracket":
        return b"[" + data, "an unbalanced bracket in front"
    return bytes(np.random.default_rng(int(rng.integers(1 << 30))).integers(0, 256, 2000,
                                                                            dtype=np.uint8)), \
        "2000 random bytes"


# --- plans ---------------------------------------------------------------------------------

def _plan_targets(doc: dict, model: str) -> list:
    k = next(iter(doc["kernels"]))
    inp = input_name(model)
    return [(("kernels",), "x", True), (("skip_blocks",), 1, True),
            (("target",), ["host-ort-1t"], True), (("model", "input_shape", inp),
                                                   [1, 3, "a", 8], True),
            (("kernels", k, "precision"), "int4", True), (("kernels", k, "width"), NAN, True),
            (("kernels", k, "width"), 0.33, True), (("kernels", k, "kernel_size"), 4, True),
            (("version",), 2, True), (("version",), "1", True), (("target",), "nope", None),
            (("kernels", "ghost"), {"precision": "fp32"}, True),
            (("skip_blocks",), ["ghost"], True),
            (("model", "input_shape", inp), [1, 3, 10 ** 12, 10 ** 12], True),
            (("kernels", k, "width"), True, True), ((), [], True), ((), {}, True),
            (("kernels", k), None, True), (("kernels", k, "width"), HUGE_INT, True),
            (("kernels", k), DEEP, True), (("kernels", k, "precision"), "x" * 300_000, True),
            (("target",), "host-ort-1t", False), (("kernels", k, "width"), 1e308, True),
            (("model",), {"input_shape": {inp: [1, 3, 16]}}, True)]


def _mutated_plan(model: str, rng) -> tuple[bytes, str, bool | None]:
    doc = base_plan(model)
    if rng.random() < 0.15:
        data, what = damage_text(to_json(doc), rng)
        return data, what, True
    doc, what, bad = mutate_doc(doc, rng, _plan_targets(doc, model), [*WEIRD, None])
    return to_json(doc).encode(), what, bad


def plan_case(rng, heavy: bool) -> Case:
    """A mutated plan for a tiny model or the digits fixture, through rewrite or predict."""
    model = pick(rng, ("tiny", "small", "tiny", "small", "digits"))
    data, what, bad = _mutated_plan(model, rng)
    case = Case(mutation=f"{model}: plan {what}", args=[], expect_bad=bad,
                files={"m.onnx": model_bytes(model), "p.json": data})
    if rng.random() < 0.2:
        case.args = ["predict", "m.onnx", "-t", "host-ort-1t", "--plan", "p.json"]
        return case
    case.args = ["rewrite", "m.onnx", "--plan", "p.json", "-o", "out.onnx"]
    case.outputs, case.output_kind = ["out.onnx"], "onnx"
    if rng.random() < 0.3:
        case.files["c.npz"] = npz_bytes(base_calib(model, rng))
        case.args += ["--calib", "c.npz"]
    if rng.random() < 0.2:
        case.args += ["--target", "host-ort-1t"]
    return case


# --- fleet files ---------------------------------------------------------------------------

NAMES = [("host\n", True), ("fleet.json", True), ("../x", True), ("..", True), (".", True),
         ("a/b", True), ("", True), ("x" * 65, True), ("héllo", True), (".hidden", True),
         ("-x", True), ("x ", True), ("host\x00", True), ("CON", None), ("a" * 64, False)]
FLEET_FIELDS = [("latency_ms", INF, True), ("latency_ms", NAN, True), ("latency_ms", -INF, True),
                ("latency_ms", -1, True), ("latency_ms", 0, True), ("latency_ms", "fast", True),
                ("latency_ms", True, True), ("latency_ms", HUGE_INT, True),
                ("proxy", ["host-ort-1t"], True), ("proxy", "nope", True),
                ("target", "nope", True), ("target", 5, True), ("target", "", True),
                ("target", DEEP, True), ("measurements", "missing.csv", True),
                ("measurements", "/dev/null", True), ("measurements", ".", True),
                ("measurements", "/etc/passwd", True), ("name", 5, True),
                ("energy_mj", NAN, True), ("max_accuracy_drop", -1, True)]
TOP_FIELDS = [("model", 5, True), ("model", [], True), ("model", "", True), ("calib", 5, True),
              ("max_accuracy_drop", "x", True), ("max_accuracy_drop", NAN, True),
              ("max_accuracy_drop", INF, True), ("device", "x", True), ("device", [], True),
              ("device", [1, 2], True), ("model", "missing.onnx", True), ("model", ".", True),
              ("model", "/dev/zero", True), ("model", "/dev/null", True),
              ("model", "fifo.onnx", True), ("model", "/etc/passwd", True),
              ("calib", "/dev/null", True), ("calib", "missing.npz", True),
              ("calib", ".", True), ("calib", "c.npy", True), ("modle", "m.onnx", True)]
CSVS = [(b"", True), (b"design,latency_ms\n", True), (b"name,ms\nconv-a,1.0\n", True),
        (b"design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,fast\n", True),
        (b"design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,-1\n", True),
        (b"design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,0\n", True),
        (b"design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,nan\n", True),
        (b"design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,inf\n", True),
        (b"design,latency_ms\nx,1\nx,2\n", True), (b"\x00\xff" * 500, True),
        (b"design,latency_ms\n" + b"a" * 1_000_000 + b",1\n", True),
        (b"design,latency_ms\nno-such-probe,1.0\nother,2.0\n", True),
        (b"design,latency_ms\n\xe9t\xe9,1.0\n", True)]
OUTPUTS = [(["-o", "."], True), (["-o", "m.onnx"], True), (["-o", "f.toml"], True),
           (["-o", "notes"], True), (["-o", "fifo"], True), (["-o", ""], True),
           (["-o", "link"], True), (["-o", "out", "--depfile", "m.onnx"], True),
           (["-o", "out", "--depfile", "f.toml"], True), (["-o", "out", "--depfile", "."], True),
           (["-o", "out", "--depfile", "out"], True),
           (["-o", "dirlink"], False), (["-o", "out", "--depfile", "deps/x.d"], False)]


def _fleet_base(case: Case, rng, fewshot: bool) -> dict:
    calib = "calib.npz" if rng.random() < 0.4 else None
    case.files["m.onnx"] = model_bytes("tiny")
    if calib:
        case.files[calib] = npz_bytes(base_calib("tiny", rng))
    if fewshot:
        case.files["pi.csv"] = probe_csv(rng).encode()
    return base_fleet("m.onnx", fewshot, calib)


def _fleet_doc_mutation(case: Case, doc: dict, rng) -> tuple[dict, str, bool | None]:
    """Mutations of the fleet document (names, fields, keys, structure)."""
    how = pick(rng, ["name", "field", "top", "dupe", "missing", "generic", "both", "half"])
    dev = doc["device"][0]
    if how == "name":
        dev["name"], bad = pick(rng, NAMES)
        return doc, f"device name {dev['name'][:20]!r}", bad
    if how in ("field", "top"):
        key, value, bad = pick(rng, FLEET_FIELDS if how == "field" else TOP_FIELDS)
        (dev if how == "field" else doc)[key] = value
        _lay_out_path(case, value)
        return doc, f"{'device.' if how == 'field' else ''}{key} = {_show(value)}", bad
    if how == "dupe":
        doc["device"].append(dict(dev))
        return doc, "two devices with one name", True
    if how == "missing":
        key = pick(rng, ["name", "target", "budgets"])
        if key == "budgets":
            dev.pop("latency_ms")
            doc.pop("max_accuracy_drop")
        else:
            dev.pop(key)
        return doc, f"device without {key}", True
    if how == "both":
        case.files["pi.csv"] = probe_csv(rng).encode()
        dev.update(proxy="host-ort-1t", measurements="pi.csv", fingerprint="pi.csv")
        return doc, "device with measurements and a fingerprint", True
    if how == "half":
        dev.update(pick(rng, [{"proxy": "host-ort-1t"}, {"measurements": "m.onnx"}]))
        return doc, "few-shot device with only one of proxy / measurements", True
    return mutate_doc(doc, rng, [], [w for w in WEIRD if w is not None])


def _lay_out_path(case: Case, value) -> None:
    if value == "fifo.onnx":
        case.fifos.append(value)
    elif value == "c.npy":
        case.files[value] = b"\x93NUMPY not really"


def _light_fleet(case: Case, rng) -> str:
    """A fleet file mutated to be invalid, or odd -o / --depfile paths, or bad CSV contents."""
    how = rng.random()
    fewshot = how < 0.25
    doc = _fleet_base(case, rng, fewshot)
    if fewshot:
        case.files["pi.csv"], case.expect_bad = pick(rng, CSVS)
        case.files["f.toml"] = to_toml(doc).encode()
        return f"few-shot measurements CSV: {_show(case.files['pi.csv'])}"
    if how < 0.4:
        args, case.expect_bad = pick(rng, OUTPUTS)
        _fleet_outputs(case, args)
        case.files["f.toml"] = to_toml(doc).encode()
        return f"outputs {' '.join(args)!r}"
    if how < 0.5:
        case.files["f.toml"], what = damage_text(to_toml(doc), rng)
        case.expect_bad = True
        return f"fleet file {what}"
    doc, what, case.expect_bad = _fleet_doc_mutation(case, doc, rng)
    case.files["f.toml"] = to_toml(doc).encode()
    return what


def _fleet_outputs(case: Case, args: list[str]) -> None:
    case.args[2:4] = []
    case.args += args
    case.outputs = [a for i, a in enumerate(args) if i % 2]
    for path in case.outputs:
        if path == "notes":
            case.files["notes/thesis.tex"] = b"my thesis\n"
        elif path == "fifo":
            case.fifos.append("fifo")
        elif path == "link":
            case.links["link"] = "m.onnx"
        elif path == "dirlink":
            case.dirs.append("empty")
            case.links["dirlink"] = "empty"


def _heavy_fleet(case: Case, rng) -> str:
    """A valid fleet (or one valid variation) that builds."""
    fewshot = rng.random() < 0.5
    doc = _fleet_base(case, rng, fewshot)
    how = pick(rng, ["plain", "crlf", "column", "jobs", "depfile", "dirlink", "infeasible",
                     "two"])
    case.expect_bad = False
    if how == "crlf" and fewshot:
        case.files["pi.csv"] = case.files["pi.csv"].replace(b"\n", b"\r\n")
    elif how == "column" and fewshot:
        lines = case.files["pi.csv"].decode().splitlines()
        case.files["pi.csv"] = "\n".join([lines[0] + ",note"] + [ln + ",x" for ln in lines[1:]]
                                         ).encode() + b"\n"
    elif how == "jobs":
        case.args += ["--jobs", "2"]
    elif how == "depfile":
        _fleet_outputs(case, ["-o", "out", "--depfile", "deps.d"])
    elif how == "dirlink":
        _fleet_outputs(case, ["-o", "dirlink"])
    elif how == "infeasible":
        doc["device"][0]["latency_ms"] = 1e-6
    elif how == "two":
        doc["device"].append({"name": "host2", "target": "host-ort-1t", "latency_ms": 50.0})
    case.files["f.toml"] = to_toml(doc).encode()
    return f"valid fleet ({how}{', few-shot' if fewshot else ''})"


def fleet_case(rng, heavy: bool) -> Case:
    """`fleetc fleet f.toml -o out` on the tiny model with a mutated fleet file."""
    case = Case(mutation="", args=["fleet", "f.toml", "-o", "out"], outputs=["out"],
                output_kind="fleet")
    if heavy and rng.random() < 0.7:
        case.mutation = _heavy_fleet(case, rng)
    else:
        case.mutation = _light_fleet(case, rng)
    special = rng.random() < 0.05
    if special:
        case.files.pop("f.toml", None)
        how = pick(rng, ["dir", "fifo", "zero", "missing"])
        {"dir": lambda: case.dirs.append("f.toml"), "fifo": lambda: case.fifos.append("f.toml"),
         "zero": lambda: case.links.update({"f.toml": "/dev/zero"}),
         "missing": lambda: None}[how]()
        case.mutation, case.expect_bad = f"fleet file path: {how}", True
    return case


# --- user targets --------------------------------------------------------------------------

TARGET_FIELDS = [
    (("precisions",), 5, True), (("precisions",), "fp32", True), (("precisions",), [], True),
    (("precisions",), ["int4"], True), (("precisions",), [1], True),
    (("measure", "threads"), 100_000, True), (("measure", "threads"), -1, True),
    (("measure", "threads"), 1.5, True), (("measure", "threads"), "4", True),
    (("measure", "threads"), 2 ** 63, True), (("measure", "threads"), True, True),
    (("measure", "threads"), 0, False), (("power_w",), NAN, True), (("power_w",), INF, True),
    (("power_w",), -1, True), (("power_w",), 0, True), (("power_w",), "x", True),
    (("power_w",), True, True), (("measure", "timeout_s"), 0, True),
    (("measure", "timeout_s"), NAN, True), (("measure", "timeout_s"), INF, True),
    (("measure", "timeout_s"), "x", True), (("measure", "kind"), "gpu", True),
    (("measure", "kind"), 5, True), (("measure", "kind"), "rpc", True),
    (("measure", "tracker"), 5, True), (("tvm_target",), 5, True), (("tvm_target",), "", True),
    (("tvm_target",), "llvm -mtriple=aarch64-linux-gnu", True), (("tvm_target",), {}, True),
    (("tvm_target",), {"kind": "nonsense"}, True), (("tvm_target",), [], True),
    (("tvm_target",), {"kind": "llvm", "mcpu": 5}, True), (("name",), "other", True),
    (("name",), 5, True), (("name",), "", True), (("predictor",), 5, True),
    (("predictor",), "../../etc", True), (("predictor",), "", True),
    (("description",), 5, True), (("cross_compiler",), 5, True), (("features",), "x", True),
    (("features", "deep"), DEEP, True), (("measure",), "x", True), (("unknown_key",), 1, True),
    (("features", "cores"), NAN, None), (("description",), "d" * 1_000_000, None),
    (("predictor",), "nope", None), (("precisions",), ["fp16"], None)]


def _target_file(case: Case, rng) -> tuple[str, str, bool | None]:
    """home/targets/<name>.toml: a mutated document, damaged text or an odd file."""
    doc = base_target("mydev")
    how = rng.random()
    path = "home/targets/mydev.toml"
    if how < 0.1:
        case.files[path], what = damage_text(to_toml(doc), rng)
        return "mydev", f"target file {what}", True
    if how < 0.18:
        kind = pick(rng, ["dir", "fifo", "zero", "loop"])
        {"dir": lambda: case.dirs.append(path), "fifo": lambda: case.fifos.append(path),
         "zero": lambda: case.links.update({path: "/dev/zero"}),
         "loop": lambda: case.links.update({path: "mydev.toml"})}[kind]()
        return "mydev", f"target file is a {kind}", True
    if how < 0.24:
        name = pick(rng, ["my\ndev", "host-ort-1t", "fleet.json"])
        doc = base_target(name)
        doc["measure"]["threads"] = 100_000 if name == "host-ort-1t" else 1
        case.files[f"home/targets/{name}.toml"] = to_toml(doc).encode()
        return name, f"user target named {name!r}", name != "fleet.json" or None
    if how < 0.35:
        key = pick(rng, ["name", "tvm_target", "measure", "precisions", "predictor"])
        doc.pop(key)
        case.files[path] = to_toml(doc).encode()
        return "mydev", f"key {key} removed", key in ("name", "tvm_target", "measure") or None
    doc, what, bad = mutate_doc(doc, rng, TARGET_FIELDS, [w for w in WEIRD if w is not None])
    case.files[path] = to_toml(doc).encode()
    return "mydev", f"target {what}", bad


def target_case(rng, heavy: bool) -> Case:
    """A user target under $FLEETC_HOME/targets, through targets / show / predict (heavy:
    compile or a fleet on it)."""
    case = Case(mutation="", args=[])
    name, case.mutation, case.expect_bad = _target_file(case, rng)
    case.files["m.onnx"] = model_bytes("tiny")
    if heavy and rng.random() < 0.5:
        case.args = ["compile", "m.onnx", "-t", name, "--latency-ms", "100", "--no-measure",
                     "-o", "out"]
        case.outputs, case.output_kind = ["out"], "compile"
    elif heavy:
        doc = base_fleet("m.onnx", False, None)
        doc["device"][0]["target"] = name
        case.files["f.toml"] = to_toml(doc).encode()
        case.args = ["fleet", "f.toml", "-o", "out"]
        case.outputs, case.output_kind = ["out"], "fleet"
    else:
        case.args = pick(rng, [["targets"], ["targets"], ["targets", "show", name],
                               ["targets", "show", name, "--json"],
                               ["predict", "m.onnx", "-t", name]])
    if case.args == ["targets"]:
        case.expect_bad = None   # the list may skip a broken target with a warning
    return case

