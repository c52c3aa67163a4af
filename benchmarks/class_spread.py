"""Spread of per-kernel-class speed across the published devices; writes
targets/class_spread.json (read by toolchain/fleet/planner.py as the amortized planner's prior
and by benchmarks/bench_planner.py to generate devices).

Per batch-1 latency column of the shipped tables (data/*.csv.gz, data/devices.csv), a least-
squares fit of latency on what each kernel class contributes to an architecture:
- NAS-Bench-201 (data/nb201.csv.gz): counts of 1x1 convs, 3x3 convs, average pools and skips
  over the cell's six edges (plus a constant): dense 3x3 and memory-bound pooling relative to
  the 1x1 conv;
- FBNet (data/fbnet.csv.gz): per architecture, the pointwise work (sum of expansion ratios,
  halved for the grouped g2 blocks) and the depthwise work (sum of expansion x k^2 / 9), plus
  a constant: depthwise relative to pointwise (1x1).
For each ratio the spread is the standard deviation over devices of its log (columns whose fit
gives a non-positive coefficient are left out and counted). No table holds one device measured
in both int8 and fp32, so the int8-vs-fp32 spread is not observable here: it is set to the
largest of the observed spreads and marked `assumed`.

    .venv/bin/python benchmarks/class_spread.py [--out targets/class_spread.json]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _columns(path: Path) -> dict[str, np.ndarray]:
    with gzip.open(path, "rt") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    out = {}
    for name in reader.fieldnames:
        try:
            out[name] = np.array([float(r[name]) if r[name] else np.nan for r in rows])
        except ValueError:
            continue
    return out


def _batch1(devices: Path) -> set[str]:
    with open(devices) as f:
        return {r["column"] for r in csv.DictReader(f) if r["batch"] == "1"}


def _log_ratios(cols: dict, A: np.ndarray, num: int, den: int, keep: set[str]) -> tuple:
    out, bad = [], 0
    for name, y in cols.items():
        if not name.startswith("lat_") or name not in keep:
            continue
        ok = np.isfinite(y)
        if ok.sum() < 50:
            continue
        coef = np.linalg.lstsq(A[ok], y[ok], rcond=None)[0]
        if coef[num] <= 0 or coef[den] <= 0:
            bad += 1
            continue
        out.append(float(np.log(coef[num] / coef[den])))
    return np.array(out), bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "targets" / "class_spread.json")
    args = ap.parse_args()
    keep = _batch1(ROOT / "data" / "devices.csv")
    nb = _columns(ROOT / "data" / "nb201.csv.gz")
    edges = np.column_stack([nb[f"e{i}"] for i in range(6)])
    A = np.column_stack([(edges == op).sum(axis=1) for op in (2, 3, 4, 1)]
                        + [np.ones(len(edges))])          # 1x1, 3x3, pool, skip, constant
    dense, bad_d = _log_ratios(nb, A, 1, 0, keep)
    memory, bad_m = _log_ratios(nb, A, 2, 0, keep)
    fb = _columns(ROOT / "data" / "fbnet.csv.gz")
    layers = np.column_stack([fb[f"l{i}"] for i in range(22)]).astype(int)
    k = np.array([3, 3, 3, 3, 5, 5, 5, 5, 0])
    e = np.array([1, 1, 3, 6, 1, 1, 3, 6, 0])
    g = np.array([1, 2, 1, 1, 1, 2, 1, 1, 1])
    B = np.column_stack([(e[layers] / g[layers]).sum(axis=1),
                         (e[layers] * k[layers] ** 2 / 9).sum(axis=1), np.ones(len(layers))])
    depthwise, bad_w = _log_ratios(fb, B, 1, 0, keep)
    spread = {"dense": float(np.std(dense)), "memory": float(np.std(memory)),
              "depthwise": float(np.std(depthwise))}
    spread["int8"] = max(spread.values())
    doc = {"format": "fleetc.class-spread", "version": 1,
           "sigma_log": spread, "reference_class": "1x1 conv (and gemm)",
           "assumed": ["int8"],
           "devices": {"dense": len(dense), "memory": len(memory), "depthwise": len(depthwise)},
           "left_out_nonpositive_fit": {"dense": bad_d, "memory": bad_m, "depthwise": bad_w},
           "median_log": {"dense": float(np.median(dense)), "memory": float(np.median(memory)),
                          "depthwise": float(np.median(depthwise))},
           "files_sha256": {p: hashlib.sha256(gzip.decompress((ROOT / "data" / p).read_bytes()))
                            .hexdigest() for p in ("nb201.csv.gz", "fbnet.csv.gz")},
           "made_by": "benchmarks/class_spread.py"}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["sigma_log"]), doc["devices"], doc["left_out_nonpositive_fit"])


if __name__ == "__main__":
    main()
