"""Device-conditioned predictor (`fleetc bench fewshot`) over K, with the spread over seeds.

Two modes; figures are printed, nothing is asserted:
- `--loo`: leave each TRAINING device out in turn (train on the others, test on it);
  `--loco`: leave each training device CLASS out in turn (classes from data/devices.csv:
  train on the other classes, test on its devices). This is how the predictor's settings
  (conditioned.EVIDENCE_GRID, POSTERIOR_TAU, POSTERIOR_FINE_RATIO) were chosen: it reads no test
  column.
- default: train on `--train`, test on `--test` (default every other latency column).

Run: .venv/bin/python benchmarks/bench_fewshot.py --data data/nb201.csv.gz --train COLS
     [--test COLS] [--samples 5,10,20,50] [--seeds 5] [--selection random] [--loo | --loco]
     [--json-dir DIR]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolchain.bench.fewshot import FewshotOptions, run_fewshot, target_columns  # noqa: E402
from toolchain.bench.scores import write_json  # noqa: E402
from toolchain.bench.table import load_table, parse_names  # noqa: E402


def device_classes() -> dict[str, str]:
    """Column -> device class, from data/devices.csv."""
    path = Path(__file__).resolve().parents[1] / "data" / "devices.csv"
    with open(path, newline="") as f:
        return {row["column"]: row["device_class"] for row in csv.DictReader(f)}


def _runs(table, args, train):
    """(train, test) pairs: the split itself, or every leave-one-device / -class-out split."""
    if args.loo:
        return [(tuple(c for c in train if c != held), (held,)) for held in train]
    if args.loco:
        cls = device_classes()
        groups = sorted({cls.get(c, c) for c in train})
        return [(tuple(c for c in train if cls.get(c, c) != g),
                 tuple(c for c in train if cls.get(c, c) == g)) for g in groups]
    return [(train, target_columns(table, train, args.test))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", default=None)
    parser.add_argument("--samples", default="5,10,20,50")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--selection", default="random", choices=("fixed", "random"))
    parser.add_argument("--method", default="conditioned")
    leave = parser.add_mutually_exclusive_group()
    leave.add_argument("--loo", action="store_true")
    leave.add_argument("--loco", action="store_true")
    parser.add_argument("--json-dir", default=None)
    args = parser.parse_args()
    table = load_table(args.data)
    train = tuple(parse_names(args.train))
    by_k = {}
    for k in (int(v) for v in parse_names(args.samples)):
        targets = {}
        for tr, te in _runs(table, args, train):
            out = run_fewshot(table, FewshotOptions(train=tr, targets=te, samples=k,
                                                    seeds=args.seeds, method=args.method,
                                                    selection=args.selection))
            targets.update(out["targets"])
        by_k[k] = targets
        sp = np.array([t["spearman"] for t in targets.values()])
        per_seed = np.mean([t["spearman_per_seed"] for t in targets.values()], axis=0)
        cov = [t["coverage90"] for t in targets.values() if "coverage90" in t]
        rows = [t["filled"] - t["measurements"] for t in targets.values() if "coverage90" in t]
        pooled = float(np.dot(cov, rows) / np.sum(rows)) if cov else float("nan")
        spread = np.std(per_seed, ddof=1) if len(per_seed) > 1 else 0.0
        print(f"K={k:3d}  mean spearman {sp.mean():.4f} (sd over seeds {spread:.4f})"
              f"  worst {sp.min():.3f}  coverage90 {pooled:.3f}  ceiling "
              f"{np.mean([t['ceiling_spearman'] for t in targets.values()]):.4f}  fit-all "
              f"{np.mean([t['fit_all_spearman'] for t in targets.values()]):.4f}", flush=True)
        if args.json_dir:
            write_json(Path(args.json_dir) / f"fewshot_k{k}.json", targets)
    ks = sorted(by_k)
    names = list(by_k[ks[0]])
    print("per device: " + " ".join(f"K={k}" for k in ks) + "  ceiling  fit-all")
    for name in names:
        print(f"  {name:36s} " + " ".join(f"{by_k[k][name]['spearman']:.3f}" for k in ks)
              + f"  {by_k[ks[-1]][name]['ceiling_spearman']:.3f}"
              f"  {by_k[ks[-1]][name]['fit_all_spearman']:.3f}")


if __name__ == "__main__":
    main()
