"""Benchmark: `fleetc compile` on the nine light models of the onnx package (issue 22's table).
Prints; asserts nothing.

For each model, as shipped (opset 9, constant-fill weights: the fp32 output does not depend on
the input) and again with its weights re-initialized (seeded random normal, He scale for
every weight of rank >= 2, zero biases, identity batch norms, so the output depends on the
input; `reinitialized`):
1. the fp32 latency in onnxruntime, 1 thread, median (the toolchain's own timer);
2. `fleetc compile MODEL -t host-ort-1t --latency-ms <0.7 x that> --calib <16 random inputs>`
   in a fresh process with an empty FLEETC_HOME; its wall time and the peak RSS of its whole
   process tree (sampled every 0.2 s with psutil);
3. from the manifest: plan summary, predicted / measured latency, budget met (compile's own
   `budget_met` when the manifest has it, else measured <= 1.05 x budget); stderr lines (and
   how many are onnxruntime error lines; kept in OUT/<model>_<weights>.stderr); exit code.

    .venv/bin/python benchmarks/bench_real_models.py [--models resnet50,inception_v1]
        [--weights shipped,random] [--out build/bench_real_models] [--ratio 0.7]

Run under the exclusive CPU lock on a quiet machine: the times are the figures reported.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
BN_SCALE = 0.5   # batch-norm scale of re-initialized models: keeps residual sums (ResNet,
#                  ShuffleNet, DenseNet) from saturating the final softmax
MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512")


def reinitialized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy whose float weights are seeded random normal: every weight of rank >= 2 (Conv /
    Gemm weights, also those reshaped before use) at He scale for its fan-in, 1-D weights
    (biases) 0, batch norms (also when written as Mul / Add) scale BN_SCALE, bias 0, mean 0,
    variance 1; ConstantOfShape
    weights become initializers (in their place among the initializers, none left as a node; their
    shape inputs, now unused, are dropped: onnxruntime warns once per unused initializer)."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = max(model.ir_version, 4)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    shapes = {i.name: tuple(i.dims) for i in g.initializer
              if i.data_type == onnx.TensorProto.FLOAT}
    for node in list(g.node):
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shapes[node.output[0]] = tuple(numpy_helper.to_array(inits[node.input[0]])
                                           .astype(int).tolist())
            g.node.remove(node)
    bn = {}
    for node in g.node:
        if node.op_type == "BatchNormalization":
            for name, r in zip(node.input[1:5], (BN_SCALE, 0.0, 0.0, 1.0), strict=False):
                bn[name] = r
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for t in node.input:
            users.setdefault(t, []).append(node)

    def scales(t: str) -> bool:   # multiplies activations (through Unsqueeze / Reshape)
        return any(u.op_type == "Mul" or (u.op_type in ("Unsqueeze", "Reshape")
                                          and scales(u.output[0])) for u in users.get(t, ()))
    new = []
    for name, shape in shapes.items():
        if name in bn:
            value = np.full(shape, bn[name])
        elif len(shape) < 2 and scales(name):   # a batch norm written as Mul / Add
            value = np.full(shape, BN_SCALE)
        elif len(shape) >= 2:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / max(int(np.prod(shape[1:])), 1))
        else:
            value = np.zeros(shape)
        new.append(numpy_helper.from_array(value.astype(np.float32), name))
    used = {t for node in g.node for t in node.input}   # the removed nodes' shape inputs go
    kept = [i for i in g.initializer if i.name not in shapes and i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept + new)
    inputs = [i for i in g.input if i.name not in shapes]
    del g.input[:]
    g.input.extend(inputs)
    onnx.checker.check_model(model)
    return model


def _input(model: onnx.ModelProto) -> tuple[str, list[int]]:
    inits = {i.name for i in model.graph.initializer}
    vi = next(v for v in model.graph.input if v.name not in inits)
    return vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim]


def fp32_latency_ms(path: Path) -> float:
    from passes.import_onnx import load_model
    from toolchain.measure.ort_backend import time_ort

    return time_ort(load_model(path), threads=1).median_ms


def _tree_rss(proc) -> int:
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_compile(model: Path, calib: Path, budget: float, out: Path, home: Path,
                log: Path) -> dict:
    import psutil

    cmd = [str(ROOT / ".venv" / "bin" / "fleetc"), "compile", str(model), "-t", "host-ort-1t",
           "--latency-ms", f"{budget:.4f}", "--calib", str(calib), "-o", str(out)]
    env = {**os.environ, "FLEETC_HOME": str(home), "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    with open(log, "w+b") as err, tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=err, env=env)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(ps))
            time.sleep(0.2)
        seconds = time.monotonic() - start
        err.seek(0)
        lines = err.read().decode(errors="replace").splitlines()
    return {"exit": proc.returncode, "seconds": seconds, "peak_rss_gb": peak / 1e9,
            "stderr_lines": len(lines),
            "ort_error_lines": sum("[E:onnxruntime" in ln for ln in lines),
            "last_error": next((ln for ln in reversed(lines) if "error" in ln.lower()), "")}


def _summary(plan: dict) -> str:
    kernels = plan.get("kernels", {})
    int8 = sum(1 for c in kernels.values() if c.get("precision") == "int8")
    pruned = sum(1 for c in kernels.values() if c.get("width", 1.0) < 1.0)
    parts = [f"int8 {int8}", f"pruned {pruned}", f"skip {len(plan.get('skip_blocks', []))}"]
    if plan.get("input_shape"):
        parts.append("res " + ",".join(str(s[2]) for s in plan["input_shape"].values()))
    return " ".join(parts)


def bench(name: str, weights: str, folder: Path, ratio: float) -> dict:
    src = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    model = reinitialized(src) if weights == "random" else src
    path = folder / f"{name}_{weights}.onnx"
    path.write_bytes(model.SerializeToString())
    input_name, dims = _input(model)
    calib = folder / f"{name}_calib.npz"
    np.savez(calib, inputs=np.random.default_rng(0).standard_normal([16, *dims[1:]])
             .astype(np.float32))
    fp32 = fp32_latency_ms(path)
    budget = ratio * fp32
    with tempfile.TemporaryDirectory(prefix="fleetc_home_") as home:
        res = run_compile(path, calib, budget, folder / f"out_{name}_{weights}", Path(home),
                          folder / f"{name}_{weights}.stderr")
    row = {"model": name, "weights": weights, "fp32_ms": fp32, "budget_ms": budget, **res}
    manifest = folder / f"out_{name}_{weights}" / "manifest.json"
    if res["exit"] == 0 and manifest.is_file():
        m = json.loads(manifest.read_text())
        measured = m["measured"]["latency_ms"]
        row.update(plan=_summary(m["plan"]), predicted_ms=m["predicted"]["latency_ms"],
                   measured_ms=measured, metric=m["measured"].get("metric"),
                   budget_met=m.get("budget_met", None if measured is None
                                    else measured <= 1.05 * budget))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--weights", default="shipped,random")
    ap.add_argument("--ratio", type=float, default=0.7)
    ap.add_argument("--out", default="build/bench_real_models")
    args = ap.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    head = (f"{'model':<13} {'weights':<8} {'exit':>4} {'time s':>7} {'RSS GB':>6} "
            f"{'fp32 ms':>8} {'budget':>7} {'pred ms':>8} {'meas ms':>8} {'met':>5} "
            f"{'stderr':>6} {'E:ort':>5}  plan")
    print(head, flush=True)
    for weights in args.weights.split(","):
        for name in args.models.split(","):
            r = bench(name, weights, folder, args.ratio)
            rows.append(r)

            def f(v, fmt):
                return "-" if v is None else format(v, fmt)
            print(f"{r['model']:<13} {r['weights']:<8} {r['exit']:>4} {r['seconds']:>7.1f} "
                  f"{r['peak_rss_gb']:>6.2f} {r['fp32_ms']:>8.2f} {r['budget_ms']:>7.2f} "
                  f"{f(r.get('predicted_ms'), '8.2f'):>8} {f(r.get('measured_ms'), '8.2f'):>8} "
                  f"{str(r.get('budget_met', '-')):>5} {r['stderr_lines']:>6} "
                  f"{r['ort_error_lines']:>5}  {r.get('plan', r['last_error'][:60])}",
                  flush=True)
    (folder / "results.json").write_text(json.dumps(rows, indent=1))
    ok = sum(1 for r in rows if r["exit"] == 0 and r.get("budget_met") is True)
    print(f"\nexit 0 with budget met: {ok} of {len(rows)}; exit codes "
          f"{sorted({r['exit'] for r in rows})}; table in {folder / 'results.json'}")


if __name__ == "__main__":
    main()
