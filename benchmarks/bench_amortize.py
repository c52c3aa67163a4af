"""Amortized optimizer vs per-device exhaustive search, 10,000 synthetic devices.

Fits the device-conditioned predictor on HELP's NAS-Bench-201 training + validation devices,
trains the amortized optimizer (seed 0), draws 10,000 fingerprints from the predictor's prior
(seed 1), gives each a budget (a random quantile of its predicted latencies), and times, in one
batch: the optimizer (fingerprint -> predictor weights, network, decode, repair: one
onnxruntime call, `choose_from_fingerprints`) and
the vectorized exhaustive search with the same predictor (scores of all 15,625 designs). Also
reports how often the two agree and the objective gap under the predictor. Then, at the bench
protocol's batch (26 devices x 3 budgets = 78 rows), the floor of the amortized side: both
methods, an empty onnxruntime call, and the network alone (no decoding or repair), against the
time a 100x speed-up over the search would leave. Prints figures; it asserts nothing about
speed.

    .venv/bin/python benchmarks/bench_amortize.py [--devices 10000] [--data data/nb201.csv.gz]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from toolchain.bench.fewshot import DeviceContext, single_thread
from toolchain.bench.table import load_table
from toolchain.optimize.amortized import (
    DesignSpace,
    ExhaustiveSearch,
    TrainConfig,
    synthetic_fingerprints,
    train_amortized,
)

BATCH = 78   # fleetc bench amortize: 26 test devices x 3 budgets in one batch
HELP = ("lat_1080ti_1,lat_1080ti_32,lat_1080ti_256,lat_silver_4114,lat_silver_4210r,"
        "lat_samsung_a50,lat_pixel3,lat_essential_ph_1,lat_samsung_s7,lat_titanx_1,"
        "lat_titanx_32,lat_titanx_256,lat_gold_6240")


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.max(times) - np.min(times)), out


def _empty_session():
    """onnxruntime session (1 thread) of one Identity node: the fixed cost of a call."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "empty",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", 10])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _floor(opt, space, pred, fp: np.ndarray, budgets: np.ndarray, repeats: int) -> None:
    """At the bench's batch: search, amortized, empty call, network alone (medians)."""
    fp, budgets = fp[:BATCH], budgets[:BATCH]
    exhaustive = ExhaustiveSearch(space, predictor=pred)
    empty = _empty_session()
    x = np.zeros((BATCH, 10))
    runs = {"exhaustive search": lambda: exhaustive.choose_from_fingerprints(fp, budgets),
            "amortized (network, decode, repair)":
                lambda: opt.choose_from_fingerprints(space, pred, fp, budgets),
            "network alone (its inputs in numpy, float32 MLP)": lambda: opt.logits(fp, budgets),
            "empty onnxruntime call": lambda: empty.run(None, {"x": x})}
    times = {}
    for name, run in runs.items():
        run()
        times[name] = _timed(run, 200 * repeats)[0]
    print(f"at the bench's batch of {BATCH} (device, budget) pairs, median of {200 * repeats}:")
    for name, seconds in times.items():
        print(f"  {name}: {1e6 * seconds:.1f} us")
    search = times["exhaustive search"]
    print(f"  speed-up {search / times['amortized (network, decode, repair)']:.1f}x; "
          f"100x would leave {1e6 * search / 100:.1f} us for the whole batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/nb201.csv.gz")
    parser.add_argument("--train", default=HELP)
    parser.add_argument("--objective", default="acc200_cifar100")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with single_thread():
        table = load_table([args.data])
        ctx = DeviceContext(table, tuple(args.train.split(",")))
        space = DesignSpace(table.encoding_matrix()[ctx.usable], ctx.features[ctx.usable],
                            table.column(args.objective)[ctx.usable])
        start = time.perf_counter()
        opt = train_amortized(ctx.predictor, space, None, TrainConfig(seed=0))
        print(f"training: {time.perf_counter() - start:.1f} s")
        pred = ctx.predictor
        fp = synthetic_fingerprints(pred, args.devices, seed=1, features=space.features) * 10.0
        rng = np.random.default_rng(2)
        quantiles = rng.uniform(0.1, 0.5, len(fp))
        budgets = np.empty(len(fp))
        for part in range(0, len(fp), 1000):
            ranked = np.sort(pred.device_weights(fp[part:part + 1000]) @ space.features.T, axis=1)
            pick = (quantiles[part:part + 1000] * (ranked.shape[1] - 1)).astype(int)
            budgets[part:part + 1000] = ranked[np.arange(len(ranked)), pick]
        exhaustive = ExhaustiveSearch(space, predictor=pred)

        def amortized():
            return opt.choose_from_fingerprints(space, pred, fp, budgets)

        def search():
            chosen = []
            for part in range(0, len(fp), 1000):   # 1000 x 15,625 scores at a time
                chosen.append(exhaustive.choose_from_fingerprints(fp[part:part + 1000],
                                                                  budgets[part:part + 1000]))
            return np.concatenate(chosen)

        amortized()   # builds the onnxruntime session
        t_am, spread_am, rows_am = _timed(amortized, args.repeats)
        t_ex, spread_ex, rows_ex = _timed(search, args.repeats)
        W = pred.device_weights(fp)
        lat_am = np.einsum("nd,nd->n", space.features[rows_am], W)
        gap = space.objective[rows_ex] - space.objective[rows_am]
    n = len(fp)
    print(f"devices: {n}  (one budget each, random 0.1..0.5 quantile of its predictions)")
    print(f"amortized: {t_am:.3f} s total (spread {spread_am:.3f}), {1e6 * t_am / n:.1f} us/device")
    print(f"exhaustive search: {t_ex:.3f} s total (spread {spread_ex:.3f}), "
          f"{1e6 * t_ex / n:.1f} us/device")
    print(f"speed-up: {t_ex / t_am:.1f}x")
    print(f"same design as search: {np.mean(rows_am == rows_ex):.3f}; predicted within budget: "
          f"{np.mean(lat_am <= budgets * (1 + 1e-9)):.3f}; objective gap to search "
          f"(predictor's view): median {np.median(gap):.2f}, mean {np.mean(gap):.2f} points")
    with single_thread():
        _floor(opt, space, pred, fp, budgets, args.repeats)


if __name__ == "__main__":
    main()
