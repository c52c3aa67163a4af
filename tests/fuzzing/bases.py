"""The valid inputs the fuzzer starts from: tiny models built in code and the digits fixture,
a plan, a calibration file, a fleet file and a user target for each, and the writers (npz,
TOML, JSON with raw tokens) that turn mutated documents into bytes."""
from __future__ import annotations

import functools
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["MODEL_NAMES", "Raw", "model_proto", "model_bytes", "base_plan", "base_calib",
           "base_fleet", "base_target", "probe_csv", "npz_bytes", "to_json", "to_toml",
           "FIXTURES", "CLASSES", "input_name"]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL_NAMES = ("tiny", "small", "digits")
CLASSES = {"tiny": 4, "small": 4, "digits": 10}


@dataclass(frozen=True)
class Raw:
    """A token written as it is (a 5000-digit number, 100k nested brackets): what the JSON and
    TOML writers cannot produce from Python values."""

    text: str


def _init(rng, name: str, shape) -> TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)


def _tiny() -> onnx.ModelProto:
    """Conv 3->8 3x3 + Relu, global pool, Gemm to 4 classes: kernels `conv` (widths legal)
    and `fc`, input `x` 1x3x8x8."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    inits = [_init(rng, "w", (8, 3, 3, 3)), _init(rng, "b", (8,)), _init(rng, "fw", (4, 8)),
             _init(rng, "fb", (4,))]
    return _model(nodes, inits)


def _small() -> onnx.ModelProto:
    """Conv + BatchNormalization + Relu, a residual block around a 5x5 conv (skippable block
    `add`, kernel shrink), global pool, Gemm: kernels `c1`, `c2`, `fc`."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"],
                              name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Add", ["r1", "r2"], ["a"], name="add"),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    var = numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var")
    inits = [_init(rng, "w1", (8, 3, 3, 3)), _init(rng, "s", (8,)), _init(rng, "bb", (8,)),
             _init(rng, "mu", (8,)), var, _init(rng, "w2", (8, 8, 5, 5)), _init(rng, "b2", (8,)),
             _init(rng, "fw", (4, 8)), _init(rng, "fb", (4,))]
    return _model(nodes, inits)


def _model(nodes, inits) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "fuzz", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@functools.cache
def model_bytes(name: str) -> bytes:
    """The serialized base model `name` (one of MODEL_NAMES)."""
    if name == "digits":
        return (FIXTURES / "digits_mbv2.onnx").read_bytes()
    return {"tiny": _tiny, "small": _small}[name]().SerializeToString()


def model_proto(name: str) -> onnx.ModelProto:
    """A fresh copy of the base model (callers mutate it)."""
    return onnx.ModelProto.FromString(model_bytes(name))


def input_name(model: str) -> str:
    return "input" if model == "digits" else "x"


def base_plan(model: str) -> dict:
    """A legal plan using every kind of choice the model has."""
    doc = {"version": 1, "target": None, "model": {"input_shape": {}}, "kernels": {},
           "skip_blocks": []}
    if model == "tiny":
        doc["kernels"] = {"conv": {"precision": "int8", "width": 0.75},
                          "fc": {"precision": "fp32"}}
    elif model == "small":
        doc["kernels"] = {"c1": {"precision": "int8"}, "c2": {"precision": "fp32",
                                                             "kernel_size": 3}}
        doc["skip_blocks"] = ["add"]
    else:
        doc["model"]["input_shape"] = {"input": [1, 1, 48, 48]}
        doc["kernels"] = {"/0/0.0/Conv": {"precision": "int8", "width": 0.75},
                          "/18/Gemm": {"precision": "int8"}}
        doc["skip_blocks"] = ["/3/Add"]
    return doc


@functools.cache
def _digits_calib() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FIXTURES / "digits_calib.npz")
    return data["inputs"][:16].copy(), data["labels"][:16].copy()


def base_calib(model: str, rng) -> dict[str, np.ndarray]:
    """16 labelled samples shaped for the model (the digits fixture's first 16 for digits)."""
    if model == "digits":
        inputs, labels = _digits_calib()
        return {"inputs": inputs.copy(), "labels": labels.copy()}
    inputs = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    return {"inputs": inputs, "labels": rng.integers(0, CLASSES[model], 16).astype(np.int64)}


def npz_bytes(arrays: dict, compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def probe_csv(rng, n: int = 8) -> str:
    """A few-shot measurement CSV of fingerprint probes (plausible, made-up latencies)."""
    from toolchain.measure.probe import probe_set

    names = [p.name for p in probe_set(("fp32", "int8"), "fingerprint")][:n]
    rows = "".join(f"{name},{rng.uniform(0.5, 20):.4f}\n" for name in names)
    return "design,latency_ms\n" + rows


def base_fleet(model_file: str, fewshot: bool, calib: str | None) -> dict:
    """One device profiled here (host-ort-1t), optionally a few-shot Raspberry Pi."""
    doc: dict = {"model": model_file}
    if calib:
        doc["calib"] = calib
    doc["max_accuracy_drop"] = 5.0
    doc["device"] = [{"name": "host", "target": "host-ort-1t", "latency_ms": 100.0}]
    if fewshot:
        doc["device"].append({"name": "pi", "target": "rpi4", "latency_ms": 100.0,
                              "proxy": "host-ort-1t", "measurements": "pi.csv"})
    return doc


def base_target(name: str = "mydev") -> dict:
    """A user target like host-ort-1t, priced by host-ort-1t's shipped predictor."""
    return {"name": name, "description": "a fuzzed user target", "precisions": ["fp32", "int8"],
            "predictor": "host-ort-1t", "power_w": 5.0,
            "tvm_target": {"kind": "llvm", "mcpu": "native"},
            "measure": {"kind": "local-ort", "threads": 1, "timeout_s": 60.0},
            "features": {"arch": "x86_64", "cores": 1, "freq_ghz": 2.6, "simd_bits": 512,
                         "int8_dot": True, "fp16_simd": False, "memory_gb": 8}}


# --- writers -------------------------------------------------------------------------------

def _raw_tokens(doc, raws: list[str]):
    """`doc` with every Raw replaced by a placeholder string (its text kept in `raws`)."""
    if isinstance(doc, Raw):
        raws.append(doc.text)
        return f"\x00raw{len(raws) - 1}\x00"
    if isinstance(doc, dict):
        return {k: _raw_tokens(v, raws) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_raw_tokens(v, raws) for v in doc]
    return doc


def to_json(doc) -> str:
    """JSON text; NaN / Infinity as Python's json writes them, Raw tokens as they are."""
    raws: list[str] = []
    text = json.dumps(_raw_tokens(doc, raws), indent=1)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw)
    return text + "\n"


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))  # None and anything else TOML has no word for


def _is_tables(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(doc: dict) -> str:
    """TOML text: top-level values first, then a [table] per dict and [[table]] per list of
    dicts (the fleet's devices); deeper dicts inline. NaN and inf as TOML spells them. A
    root that is not a table (a mutation replaced it) is written as a bare value."""
    if not isinstance(doc, dict):
        return _value(doc) + "\n"
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not _is_tables(v)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(str(a))} = {_value(b)}" for a, b in v.items()]
        elif _is_tables(v):
            for table in v:
                lines += ["", f"[[{_key(k)}]]"]
                lines += [f"{_key(str(a))} = {_value(b)}" for a, b in table.items()]
    return "\n".join(lines) + "\n"
