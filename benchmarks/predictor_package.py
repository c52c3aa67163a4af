"""Ship a target's kernel-level predictor package from a `bench_predictor.py` run: fitted on the
probes, its error measured on models the fit never saw.

Input: the measurement CSV `bench_predictor.py --targets T --data-dir DIR` wrote
(`DIR/T.csv`: the probe rows and the unseen models' rows, `model-NAME`), measured with the
target's own back end - for `host-tvm`, the `model.so` fleetc builds (default schedules; run
with an empty `$FLEETC_HOME`, so no tuning database applies). Output, in `--out`:

- `measurements.csv`: the probe rows (the training data; its sha256 goes in meta.json);
- `model.json`, `meta.json`, `digests.json`: the package as `fleetc predictor fit` writes it
  (the same fit, `fit_rows`; `cpu`: this machine's CPU record, so on another CPU fleetc
  calibrates the package first); meta.json also gets `unseen_models` (median |error|, share
  within 10%, Spearman over the models) and `schedules` (what code was measured);
- `unseen_models.csv.gz`: per unseen model, measured and predicted latency (the evidence).

The unseen models are `bench_predictor.py`'s (the onnx package's light models and seeded zoo
variants under random plans with the target's precisions): a target with int8 gets int8
probes and int8 plans in the same run, nothing here changes.

    FLEETC_HOME=$(mktemp -d) .venv/bin/python benchmarks/bench_predictor.py --targets host-tvm \
        --rounds 1 --variants 12 --data-dir DIR
    .venv/bin/python benchmarks/predictor_package.py --target host-tvm --data-dir DIR \
        --variants 12 --out targets/predictors/host-tvm
"""
from __future__ import annotations

import argparse
import csv
import functools
import gzip
import io
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_predictor import MODEL_PREFIX, light_models, rewrite, variants  # noqa: E402

from toolchain.measure.probe import probe_names  # noqa: E402
from toolchain.measure.records import read_measurements  # noqa: E402
from toolchain.predict.kernel import (  # noqa: E402
    KernelPredictor,
    cpu_record,
    data_hash,
    fit_rows,
    spearman,
)
from toolchain.predict.latency import design_units, model_units  # noqa: E402
from toolchain.target import load_target  # noqa: E402

SCHEDULES = {"local-tvm": "default schedules (passes/tvm_schedules), no tuning records",
             "rpc": "default schedules (passes/tvm_schedules), no tuning records"}


def split_rows(data: Path, out: Path) -> list[str]:
    """Copy the probe rows of `data` to `out/measurements.csv`; the unseen models' names."""
    lines = data.read_text().splitlines(keepends=True)
    probes = probe_names()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] in probes]
    out.mkdir(parents=True, exist_ok=True)
    (out / "measurements.csv").write_text("".join(keep))
    return [ln.split(",", 1)[0][len(MODEL_PREFIX):] for ln in lines[1:]
            if ln.startswith(MODEL_PREFIX)]


def unseen_cases(target, count: int, seed: int) -> dict:
    """name -> model builder, as bench_predictor.py builds them."""
    cases = {n: (lambda m=m: m) for n, m in light_models()}
    for name, base, _, plan in variants(count, seed, target.precisions):
        cases[name] = functools.cache(lambda b=base, p=plan: rewrite(b, p))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--data-dir", required=True, help="bench_predictor.py's --data-dir")
    ap.add_argument("--variants", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="package folder (written)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    target = load_target(args.target)
    out = Path(args.out)
    names = split_rows(Path(args.data_dir) / f"{args.target}.csv", out)
    data = out / "measurements.csv"
    rows = read_measurements(data)
    meta = {"name": target.predictor, "target": target.name,
            "training": {"file": data.name, "hash": data_hash(data), "rows": len(rows)},
            "cpu": cpu_record(target.measure.threads)}
    if target.measure.kind in SCHEDULES:
        meta["schedules"] = SCHEDULES[target.measure.kind]
    model = fit_rows(rows, design_units, meta)
    measured = {r.design[len(MODEL_PREFIX):]: r.latency_ms
                for r in read_measurements(Path(args.data_dir) / f"{args.target}.csv")
                if r.design.startswith(MODEL_PREFIX)}
    cases = unseen_cases(target, args.variants, args.seed)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["model", "measured_ms", "predicted_ms"])
    y, p = [], []
    for name in names:
        pred = model.predict_units(model_units(cases[name]())).latency_ms
        y.append(measured[name])
        p.append(pred)
        writer.writerow([name, f"{measured[name]:.6g}", f"{pred:.6g}"])
    y, p = np.array(y), np.array(p)
    rel = np.abs(p / y - 1)
    model.meta["unseen_models"] = {
        "models": len(y), "median_abs_rel_err": round(float(np.median(rel)), 4),
        "within_10pct": round(float(np.mean(rel <= 0.1)), 4),
        "spearman": round(float(spearman(y, p)), 4), "file": "unseen_models.csv.gz",
        "note": "models the fit never saw (benchmarks/bench_predictor.py: the onnx package's "
                "light models and zoo variants under random plans), measured with the "
                "target's back end in the same run as the probes"}
    (out / "unseen_models.csv.gz").write_bytes(gzip.compress(table.getvalue().encode(), mtime=0))
    model.save(out)
    KernelPredictor.load(out)   # the package loads (digests, format)
    u = model.meta["unseen_models"]
    h = model.meta["held_out"]
    print(f"{out}: {len(rows)} probes, held-out probes median {100 * h['median_abs_rel_err']:.1f}%;"
          f" {u['models']} unseen models: median |error| {100 * u['median_abs_rel_err']:.1f}%, "
          f"within 10% {100 * u['within_10pct']:.0f}%, Spearman {u['spearman']:.3f}")


if __name__ == "__main__":
    main()
