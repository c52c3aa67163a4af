#!/usr/bin/env bash
# Proxy-device reuse on the published tables (issue 5): every figure of the issue's "Done when".
# Usage: benchmarks/bench_proxy.sh [OUT_DIR]   (default: bench_out/proxy). Prints one line per
# run: mean / worst Spearman, worst gap to the raw proxy ranking, regret, violations, wall time.
# Figures, not assertions. Each run is one `fleetc bench proxy` command, timed on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_out/proxy}
mkdir -p "$OUT"
FLEETC=${FLEETC:-.venv/bin/fleetc}
PY=${PY:-.venv/bin/python}
NB=data/nb201.csv.gz
FB=data/fbnet.csv.gz

run() {  # name, then fleetc bench proxy arguments
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  "$FLEETC" bench proxy "$@" --json "$OUT/$name.json" >/dev/null 2>"$OUT/$name.log"
  end=$(date +%s.%N)
  "$PY" - "$OUT/$name.json" "$name" "$(echo "$end - $start" | bc)" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
line = (f"{sys.argv[2]:34s} mean {r['mean_spearman']:.4f}  worst {r['worst_spearman']:.3f}  "
        f"worst-raw {r['worst_vs_raw']:+.3f}")
if r.get("median_regret") is not None or r.get("violation_rate") is not None:
    d, p = r["direct"], r["pareto"]
    line += (f"  | regret {r['median_regret']:.3f}  viol {r['violation_rate']:.3f}"
             f"  near {r['near_violation_rate']:.3f}  | direct: regret {d['median_regret']:.3f}"
             f" viol {d['violation_rate']:.3f} near {d['near_violation_rate']:.3f}"
             f"  | pareto({p['size']} designs, {p['measurements_per_target']} meas): regret "
             f"{p['median_regret']:.3f} viol {p['violation_rate']:.3f} oracle "
             f"{p['oracle_median_regret']:.3f}")
print(f"{line}  wall {float(sys.argv[3]):.1f}s", flush=True)
PYEOF
}

echo "# NAS-Bench-201, proxy lat_pixel3, every other latency column, 5 seeds"
for K in 5 10 20 50; do
  run nb201_k${K}_transfer_fixed  --data $NB --proxy lat_pixel3 --samples $K --seeds 5
  run nb201_k${K}_transfer_random --data $NB --proxy lat_pixel3 --samples $K --seeds 5 --selection random
  run nb201_k${K}_reference_random --data $NB --proxy lat_pixel3 --samples $K --seeds 5 --method reference --selection random
  run nb201_k${K}_reference_fixed --data $NB --proxy lat_pixel3 --samples $K --seeds 5 --method reference
done
echo "# budget choice: objective acc200_cifar100, budgets 0.1,0.25,0.5, K=20"
for V in 10 0; do
  run nb201_k20_v${V}_transfer  --data $NB --proxy lat_pixel3 --samples 20 --verify $V --objective acc200_cifar100 --seeds 5
  run nb201_k20_v${V}_reference --data $NB --proxy lat_pixel3 --samples 20 --verify $V --objective acc200_cifar100 --seeds 5 --method reference --selection random
done
echo "# FBNet, proxy lat_pixel3 (no accuracy: predictor metrics only), 5 seeds"
for K in 5 10 20 50; do
  run fbnet_k${K}_transfer_fixed  --data $FB --proxy lat_pixel3 --samples $K --seeds 5
  run fbnet_k${K}_transfer_random --data $FB --proxy lat_pixel3 --samples $K --seeds 5 --selection random
  run fbnet_k${K}_reference_random --data $FB --proxy lat_pixel3 --samples $K --seeds 5 --method reference --selection random
done
