#!/usr/bin/env bash
# Approach 1 end to end on real timings, with the stand-in device farm (TVM RPC on loopback).
#   pair A: proxy = this CPU through onnxruntime, 1 thread (host-ort-1t, local);
#           target = farm-tvm-1t (TVM-compiled code, 1 thread, RPC key host-1t)
#   pair B: proxy = farm-tvm-1t (its predictor fitted on all quick probes measured there);
#           target = farm-tvm-2t (TVM-compiled code, 2 threads, RPC key host-2t)
# Each target is measured on the fingerprint probes only (K ~ 10) and calibrated with
# `fleetc targets calibrate`; the package is then scored on the target's own measurements of
# the quick probes it never saw, beside the proxy as is, the proxy times the median ratio on the
# K probes, and a predictor fitted on every held-out probe (ceiling).
# Usage: benchmarks/calibrate_farm.sh [WORK_DIR]   (resumable: measured rows are kept; minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-bench_out/calibrate_farm}")
mkdir -p "$WORK"
export FLEETC_HOME="$WORK/home"
FLEETC=${FLEETC:-.venv/bin/fleetc}
PY=${PY:-.venv/bin/python}
PORT=${PORT:-9391}
TIMING=(--repeats 7 --max-seconds 2)
mkdir -p "$FLEETC_HOME/targets"
for threads in 1 2; do
  cat > "$FLEETC_HOME/targets/farm-tvm-${threads}t.toml" <<TOML
name = "farm-tvm-${threads}t"
description = "stand-in device: this CPU as a TVM RPC server, ${threads} thread(s)"
precisions = ["fp32"]
predictor = "farm-tvm-${threads}t"
tvm_target = { kind = "llvm", mcpu = "native", num-cores = ${threads} }
[measure]
kind = "rpc"
threads = ${threads}
rpc_key = "host-${threads}t"
tracker = "127.0.0.1:$PORT"
timeout_s = 300
TOML
done

# own process group, so that the farm and every server it started are stopped together
# (a background job of a script ignores SIGINT, and SIGTERM to the farm alone orphans them)
setsid "$FLEETC" farm start --port "$PORT" --key host-1t=1 --key host-2t=2 \
  >"$WORK/farm.log" 2>&1 &
FARM=$!
trap 'kill -TERM -- -$FARM 2>/dev/null || true' EXIT
sleep 5

profile() {  # target subset out
  "$FLEETC" profile --probe --subset "$2" --target "$1" -o "$WORK/$3" "${TIMING[@]}" \
    2>"$WORK/$3.log" | tail -1
}

evaluate() {  # label few.csv truth.csv calibrated_dir proxy_dir
  "$PY" - "$WORK" "$@" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from toolchain.measure.records import read_measurements
from toolchain.predict.kernel import KernelPredictor, spearman
from toolchain.predict.latency import design_units

work, label, few_csv, truth_csv, cal_dir, proxy_dir = Path(sys.argv[1]), *sys.argv[2:]
few = read_measurements(work / few_csv)
truth = {r.design: r.latency_ms for r in read_measurements(work / truth_csv)}
calibrated, proxy = KernelPredictor.load(cal_dir), KernelPredictor.load(proxy_dir)
held = [d for d in sorted(truth) if d not in {r.design for r in few}]
units = {d: design_units(d) for d in held}
ok = [d for d in held if not calibrated.predict_units(units[d]).unknown]
y = np.array([truth[d] for d in ok])
ratio = np.median([r.latency_ms / proxy.predict_units(design_units(r.design)).latency_ms
                   for r in few])
full = KernelPredictor.fit([units[d] for d in ok], y, {"name": "ceiling"})
cal = calibrated.meta["calibration"]
print(f"{label}: K = {cal['samples']} target measurements, {len(ok)} held-out probes; "
      f"path {cal['path']}: {cal['reason']}")
for name, pred in [("proxy predictor as is", lambda u: proxy.predict_units(u).latency_ms),
                   ("proxy x median ratio on the K", lambda u: ratio * proxy.predict_units(u).latency_ms),
                   ("calibrated (targets calibrate)", lambda u: calibrated.predict_units(u).latency_ms),
                   ("ceiling: fitted on the held-out", lambda u: full.predict_units(u).latency_ms)]:
    p = np.array([pred(units[d]) for d in ok])
    rel = np.abs(p - y) / y
    print(f"  {name:34s} Spearman {spearman(p, y):.3f}  median |err| {100 * np.median(rel):7.1f}%"
          f"  within 10% {100 * np.mean(rel <= 0.1):4.0f}%")
PYEOF
}

start=$(date +%s)
# pair A
profile host-ort-1t quick proxy_ort.csv
"$FLEETC" predictor fit --target host-ort-1t --data "$WORK/proxy_ort.csv" 2>/dev/null
profile farm-tvm-1t fingerprint few_tvm1t.csv
"$FLEETC" targets calibrate farm-tvm-1t --proxy host-ort-1t \
  --measurements "$WORK/few_tvm1t.csv" -o "$WORK/cal_tvm1t_from_ort"
profile farm-tvm-1t quick quick_tvm1t.csv
evaluate "A (onnxruntime 1t -> TVM 1t)" few_tvm1t.csv quick_tvm1t.csv \
  "$WORK/cal_tvm1t_from_ort" "$FLEETC_HOME/predictors/host-ort-1t"
# pair B
"$FLEETC" predictor fit --target farm-tvm-1t --data "$WORK/quick_tvm1t.csv" 2>/dev/null
profile farm-tvm-2t fingerprint few_tvm2t.csv
"$FLEETC" targets calibrate farm-tvm-2t --proxy farm-tvm-1t \
  --measurements "$WORK/few_tvm2t.csv" -o "$WORK/cal_tvm2t_from_tvm1t"
profile farm-tvm-2t quick quick_tvm2t.csv
evaluate "B (TVM 1t -> TVM 2t)" few_tvm2t.csv quick_tvm2t.csv \
  "$WORK/cal_tvm2t_from_tvm1t" "$FLEETC_HOME/predictors/farm-tvm-1t"
echo "total $(( $(date +%s) - start )) s"
