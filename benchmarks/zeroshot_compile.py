"""`fleetc compile` with only a latency budget for every built-in edge target, from an empty
FLEETC_HOME, on the digits fixture: the zero-shot estimate prices the plans (issue 25).

    .venv/bin/python benchmarks/zeroshot_compile.py [--latency-ms 1000] [--out /tmp/zs]

Runs the real command (`fleetc compile ... -o OUT/<target>`) in a fresh FLEETC_HOME per
target, one after another, and prints per target the exit code, wall time, predictor, the
predicted latency and the manifest's zero-shot label. The suite's test
(tests/predict/test_zeroshot_compile.py) runs one target with the sensitivity table stubbed:
five full compiles take about 2 CPU-minutes, beyond the suite's budget.
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

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "pixel-a76")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-ms", default="1000")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="zeroshot_")))
    args = ap.parse_args()
    fleetc = Path(sys.executable).parent / "fleetc"
    for name in TARGETS:
        home = Path(tempfile.mkdtemp(prefix="fleetc_home_"))
        out = args.out / name
        env = {**os.environ, "FLEETC_HOME": str(home), "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        run = subprocess.run([str(fleetc), "compile", str(ROOT / "tests/fixtures/digits_mbv2.onnx"),
                              "--target", name, "--latency-ms", args.latency_ms,
                              "--calib", str(ROOT / "tests/fixtures/digits_calib.npz"),
                              "-o", str(out)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            print(f"{name:<18} exit {run.returncode} after {wall:.0f} s: "
                  f"{run.stderr.strip().splitlines()[-1:]}")
            continue
        m = json.loads((out / "manifest.json").read_text())
        est = m.get("latency_estimate") or {}
        print(f"{name:<18} exit 0, {wall:.0f} s wall; predictor {m['predictor']}; predicted "
              f"{m['predicted']['latency_ms']} ms (x{est.get('speed_ratio')} host-ort-1t); "
              f"plan by {m['solver']}; artifacts "
              f"{', '.join(a['path'] for a in m['artifacts'])}")
        print(f"{'':<18} {est.get('label', 'NO LABEL')}")


if __name__ == "__main__":
    main()
