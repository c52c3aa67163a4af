"""Fit and evaluate the zero-shot latency rule of toolchain/predict/zeroshot.py on the published
multi-device tables; write targets/zeroshot.json (slopes + expected error).

    .venv/bin/python benchmarks/zeroshot_error.py            # prints the table, writes the JSON
    .venv/bin/python benchmarks/zeroshot_error.py --out /tmp/z.json

Devices: the batch-1 latency columns that data/device_specs.csv describes (spec-sheet figures;
its README says where they come from), in every data file given. A device is a hardware: all
its columns (several runtimes, several tables) are left out together.

Per held-out device, per table:
1. the device-conditioned predictor (toolchain.predict.conditioned.fit_conditioned, public API)
   is fitted on the other devices' columns; each training column's scale is its mean latency
   on the predictor's reference designs (its fingerprint mean);
2. log scale = table intercept + slopes . spec vector, least squares over the training columns
   of every table;
3. anchored (the product's rule): the held-out column is predicted as each training CPU
   column of the table (the product's anchor is a CPU) times exp(slopes . (spec_t - spec_a));
   per column the median over anchors of the median |relative error| over designs;
   prior-mean shape (for comparison): scale from step 2 times the prior mean's design
   weights (zero-shot conditioned prediction).
The expected error is the median (and p90) over held-out devices of their median error. The
slopes written for the product are fitted on all devices. Nothing here sees a test column
before predicting it.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolchain.bench.table import load_table  # noqa: E402
from toolchain.predict.conditioned import fit_conditioned  # noqa: E402
from toolchain.predict.kernel import spearman  # noqa: E402
from toolchain.predict.zeroshot import ANCHOR, SPEC_NAMES, spec_vector  # noqa: E402

DATA = [ROOT / "data" / f for f in ("nb201.csv.gz", "fbnet.csv.gz", "ofa.csv.gz")]


def read_specs(path: Path) -> dict[str, dict]:
    specs = {}
    for r in csv.DictReader(path.open()):
        specs[r["column"]] = {
            "hardware": r["hardware"], "class": r["device_class"],
            "cores": float(r["cores"]), "freq_ghz": float(r["freq_ghz"]),
            "simd_bits": float(r["simd_bits"]), "int8_dot": r["int8_dot"] == "true",
            "fp16_simd": r["fp16_simd"] == "true", "gpu": r["compute"] == "gpu",
            "precision": r["precision"]}
    return specs


class Space:
    """One table: codes and the latency columns that have specs."""

    def __init__(self, path: Path, specs: dict):
        table = load_table([path])
        self.name = path.name.split(".")[0]
        self.codes = table.encoding_matrix()
        self.cols = [c for c in table.latency if c in specs]
        self.lat = {c: table.column(c) for c in self.cols}
        self.row = {tuple(code): i for i, code in enumerate(self.codes)}

    def fit(self, cols: list[str]):
        lat = np.column_stack([self.lat[c] for c in cols])
        return fit_conditioned(self.codes, lat, tuple(cols))

    def scales(self, predictor, cols: list[str]) -> dict[str, float]:
        """Each column's mean latency on the reference designs it has (NaN: none)."""
        rows = [self.row[tuple(code)] for code in predictor.reference]
        out = {}
        for c in cols:
            values = self.lat[c][rows]
            ok = np.isfinite(values)
            out[c] = float(values[ok].mean()) if ok.any() else float("nan")
        return out


def fit_slopes(samples: list[tuple[str, np.ndarray, float]], spaces: list[str]) -> tuple:
    """Least squares of log scale on (table intercepts, spec vector)."""
    samples = [(s, x, v) for s, x, v in samples if np.isfinite(v) and v > 0]
    X = np.array([[float(s == t) for t in spaces] + list(x) for s, x, _ in samples])
    y = np.log([v for _, _, v in samples])
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return coef[len(spaces):], dict(zip(spaces, coef[:len(spaces)], strict=True))


def _score(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(pred) & np.isfinite(truth) & (truth > 0)
    rel = np.abs(pred[ok] - truth[ok]) / truth[ok]
    return float(np.median(rel)), spearman(pred[ok], truth[ok])


def evaluate(spaces: list[Space], specs: dict) -> dict:
    names = [s.name for s in spaces]
    vec = {c: spec_vector(specs[c]) for c in specs}
    per_device: dict[str, dict] = {}
    for hw in sorted({specs[c]["hardware"] for s in spaces for c in s.cols}):
        fits, samples = {}, []
        for s in spaces:
            train = [c for c in s.cols if specs[c]["hardware"] != hw]
            if len(train) < 2 or len(train) == len(s.cols):
                continue
            fits[s.name] = p = s.fit(train)
            samples += [(s.name, vec[c], v) for c, v in s.scales(p, train).items()]
        slopes, intercepts = fit_slopes(samples, names)
        anchored, plain, prior, rho = [], [], [], []
        for s in spaces:
            if s.name not in fits:
                continue
            p = fits[s.name]
            anchors = [c for c in s.cols if specs[c]["hardware"] != hw and not specs[c]["gpu"]]
            for t in (c for c in s.cols if specs[c]["hardware"] == hw):
                truth = s.lat[t]
                errs = [_score(s.lat[a] * np.exp(slopes @ (vec[t] - vec[a])), truth)
                        for a in anchors]
                if errs:
                    anchored.append(float(np.median([e for e, _ in errs])))
                    rho.append(float(np.median([r for _, r in errs])))
                    plain.append(float(np.median([_score(s.lat[a], truth)[0]
                                                  for a in anchors])))
                scale = float(np.exp(intercepts[s.name] + slopes @ vec[t]))
                fp = scale * (p.features(p.reference) @ p.mean)
                prior.append(_score(p.predict(s.codes, fp)[0], truth)[0])
        cls = sorted({specs[c]["class"] for s in spaces for c in s.cols
                      if specs[c]["hardware"] == hw})
        per_device[hw] = {"class": "/".join(cls),
                          "median_abs_rel_err": float(np.median(anchored)) if anchored else None,
                          "spearman": float(np.median(rho)) if rho else None,
                          "anchor_only_median_abs_rel_err":
                              float(np.median(plain)) if plain else None,
                          "prior_shape_median_abs_rel_err": float(np.median(prior))}
        print(f"{hw:<20} {per_device[hw]['class']:<14} anchored "
              f"{_pct(per_device[hw]['median_abs_rel_err'])}  rho "
              f"{per_device[hw]['spearman'] or float('nan'):.3f}  prior-mean shape "
              f"{_pct(per_device[hw]['prior_shape_median_abs_rel_err'])}  anchor only "
              f"{_pct(per_device[hw]['anchor_only_median_abs_rel_err'])}", flush=True)
    return per_device


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:5.0f}%"


def summary(per_device: dict, key: str) -> dict:
    scored = {hw: d for hw, d in per_device.items() if d[key] is not None}
    errs = np.array([d[key] for d in scored.values()])
    worst = max(scored, key=lambda hw: scored[hw][key])
    return {"median_abs_rel_err": round(float(np.median(errs)), 4),
            "p90_abs_rel_err": round(float(np.percentile(errs, 90)), 4),
            "worst": {"device": worst, "class": scored[worst]["class"],
                      "abs_rel_err": round(float(scored[worst][key]), 4)},
            "devices": len(scored),
            "classes": sorted({c for d in scored.values() for c in d["class"].split("/")})}


def _sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(gzip.decompress(data) if path.suffix == ".gz" else data).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", type=Path, help="table(s); default: data/*.gz")
    ap.add_argument("--specs", type=Path, default=ROOT / "data" / "device_specs.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "targets" / "zeroshot.json")
    args = ap.parse_args()
    files = args.data or DATA
    specs = read_specs(args.specs)
    spaces = [s for s in (Space(f, specs) for f in files) if len(s.cols) >= 3]
    per_device = evaluate(spaces, specs)
    samples = []
    for s in spaces:
        p = s.fit(s.cols)
        samples += [(s.name, spec_vector(specs[c]), v) for c, v in s.scales(p, s.cols).items()]
    slopes, _ = fit_slopes(samples, [s.name for s in spaces])
    expected = {"method": "leave one device (hardware) out; predicted from each measured CPU "
                          "of the same table x exp(slopes . spec difference); per device the "
                          "median over anchors of the median |relative error| over designs",
                **summary(per_device, "median_abs_rel_err")}
    doc = {"format": "fleetc.zeroshot", "version": 1, "anchor": ANCHOR,
           "spec": list(SPEC_NAMES),
           "slopes": {k: round(float(v), 6) for k, v in zip(SPEC_NAMES, slopes, strict=True)},
           "expected_error": expected,
           "prior_mean_shape_error": summary(per_device, "prior_shape_median_abs_rel_err"),
           "anchor_only_error": summary(per_device, "anchor_only_median_abs_rel_err"),
           "per_device": {hw: {k: (round(v, 4) if isinstance(v, float) else v)
                               for k, v in d.items()} for hw, d in per_device.items()},
           "fitted_on": {"columns": {s.name: s.cols for s in spaces},
                         "files_sha256": {f.name: _sha(f) for f in files},
                         "specs_sha256": _sha(args.specs)},
           "command": "benchmarks/zeroshot_error.py"}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    e = expected
    print(f"slopes {doc['slopes']}; expected error median {100 * e['median_abs_rel_err']:.0f}% "
          f"p90 {100 * e['p90_abs_rel_err']:.0f}% over {e['devices']} devices, classes "
          f"{', '.join(e['classes'])}; prior-mean shape median "
          f"{100 * doc['prior_mean_shape_error']['median_abs_rel_err']:.0f}%; anchor only "
          f"{100 * doc['anchor_only_error']['median_abs_rel_err']:.0f}%; wrote {args.out}")


if __name__ == "__main__":
    main()
