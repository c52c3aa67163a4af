"""Kernel-level latency predictor on models it never saw: accuracy per target.

For each target (default: host-ort-1t and host-tvm):
1. measure the target's probes and the unseen models together, in `--rounds` round-robin
   passes over all of them (`fleetc profile --rounds`, resumable: `--data-dir/<target>.csv`,
   the models' rows named `model-NAME`), so a drift of the machine's speed during the run
   affects both alike, and fit the predictor on the probes;
2. the unseen models: the onnx package's light models (AlexNet, DenseNet-121, Inception v1/v2,
   ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) and MobileNetV2- / ResNet-style
   variants from `toolchain.measure.zoo` (random resolution, width, kernel sizes) under random plans
   (per-kernel int8/fp32, skipped residual blocks), rewritten for real;
3. predict each from its rewritten graph (`predict(rewritten.onnx)`) and, for the variants, from
   the original graph and the plan (`predict --plan`, no rewrite);
4. print per-model rows and the figures of the issue: share within +/-10%, Spearman, and the
   per-kernel cost ratios that differ between targets (int8 vs fp32 speed-ups per kernel kind).

Run: .venv/bin/python benchmarks/bench_predictor.py [--targets host-ort-1t,host-tvm]
     [--variants 24] [--data-dir DIR] [--quick] [--rounds 3]
Measured figures are printed, nothing is asserted.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolchain.measure.probe import build_probe, probe_set  # noqa: E402
from toolchain.measure.profile import profile  # noqa: E402
from toolchain.measure.records import read_measurements  # noqa: E402
from toolchain.measure.timing import TimingConfig  # noqa: E402
from toolchain.predict.kernel import KernelPredictor, fit_rows, spearman  # noqa: E402
from toolchain.predict.latency import design_units, model_units, predict_plan  # noqa: E402
from toolchain.space import Choice, Plan  # noqa: E402
from toolchain.target import load_target  # noqa: E402

MODEL_PREFIX = "model-"   # the unseen models' rows in the measurement CSV


def light_models() -> list[tuple[str, onnx.ModelProto]]:
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return [(p.stem, onnx.load(str(p))) for p in sorted(folder.glob("light_*.onnx"))]


def rewrite(base: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """The model rewritten by `plan` (`toolchain.compile.rewrite.apply_plan`). Its int8 ranges come
    from the seeded random inputs `apply_plan` would use without --calib, passed explicitly so
    its warning is not printed once per model: the benchmark times the models, it does not
    score their accuracy."""
    from passes.import_onnx import import_onnx
    from toolchain.calib import synthetic_calib
    from toolchain.compile.rewrite import apply_plan

    return apply_plan(base, plan, synthetic_calib(import_onnx(base), warn=False))


def variants(count: int, seed: int, precisions: tuple[str, ...]):
    """(name, base model, plan) for random zoo variants under random plans."""
    from passes import load_and_analyze
    from toolchain.measure.zoo import mobilenet_v2, resnet

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        res = int(rng.choice([96, 128, 160, 192, 224]))
        width = float(rng.choice([0.5, 0.75, 1.0]))
        if i % 2 == 0:
            ks = int(rng.choice([3, 5]))
            base, label = mobilenet_v2(res, width, kernel_sizes=ks), f"mbv2-r{res}-w{width}-k{ks}"
        else:
            depth = int(rng.choice([10, 18, 26]))
            base, label = resnet(res, depth, width), f"resnet{depth}-r{res}-w{width}"
        graph = load_and_analyze(base)
        space, kernels = graph.space, graph.kernels
        p_int8 = float(rng.choice([0.0, 0.3, 0.7, 1.0])) if "int8" in precisions else 0.0
        chosen = {k.name: Choice("int8") for k in kernels
                  if k.is_compute and rng.random() < p_int8}
        blocks = sorted(space.blocks)
        skips = [b for b in blocks if rng.random() < 0.25]
        plan = Plan(kernels=chosen, skip_blocks=skips)
        name = f"{label}-q{p_int8}-s{len(skips)}"
        while name in {n for n, _, _, _ in out}:   # the same label, another plan: unique names
            name += "-b"
        out.append((name, base, graph, plan))
    return out


def measure_and_fit(target, data: Path, quick: bool, cases, config: TimingConfig,
                    rounds: int) -> tuple[KernelPredictor, list[float]]:
    """Measure the probes and the unseen models together, `rounds` round-robin passes over
    all of them (`fleetc profile --rounds`: the fastest sample of every round is kept), so a
    drift of the machine's speed during the run affects both alike; then fit on the probes.
    Returns the predictor and the models' measured latencies. Resumable (`data`)."""
    probes = probe_set(target.precisions, "quick" if quick else "full")
    designs = [(p.name, lambda n=p.name: build_probe(n)) for p in probes]
    designs += [(f"{MODEL_PREFIX}{name}", functools.cache(make)) for name, make, _, _ in cases]
    start = time.monotonic()
    result = profile(target, designs, data, config, rounds=rounds,
                     progress=lambda line: print(f"# {target.name}: {line}", flush=True))
    print(f"# {target.name}: {len(probes)} probes and {len(cases)} models: {result.measured} "
          f"measured, {result.already} reused ({time.monotonic() - start:.0f} s)")
    rows = {r.design: r for r in read_measurements(data)}
    start = time.monotonic()
    model = fit_rows([rows[p.name] for p in probes if p.name in rows], design_units,
                     {"name": target.predictor, "target": target.name})
    h = model.meta["held_out"]
    print(f"# {target.name}: fitted on {len(probes)} probes in {time.monotonic() - start:.0f} s;"
          f" held-out probes: median |err| {100 * h.get('median_abs_rel_err', float('nan')):.1f}%"
          f", within 10% {100 * h.get('within_10pct', float('nan')):.0f}%, "
          f"Spearman {h.get('spearman', float('nan')):.3f}")
    return model, [rows[f"{MODEL_PREFIX}{name}"].latency_ms for name, _, _, _ in cases]


def evaluate(target, model: KernelPredictor, cases, truth: list[float]) -> dict:
    rows = []
    for (name, make, graph, plan), measured in zip(cases, truth, strict=True):
        direct = model.predict_units(model_units(make()))
        planned = predict_plan(model, graph, plan) if plan is not None else None
        rows.append((name, measured, direct, planned))
        err = 100 * (direct.latency_ms / measured - 1)
        extra = (f"  plan-path {planned.latency_ms:9.3f} ms ({100 * (planned.latency_ms / measured - 1):+6.1f}%)"  # noqa: E501
                 if planned else "")
        unknown = f"  UNKNOWN: {', '.join(direct.unknown[:3])}" if direct.unknown else ""
        print(f"{target.name:<12} {name:<40} measured {measured:9.3f} ms  predicted "
              f"{direct.latency_ms:9.3f} ms ({err:+6.1f}%){extra}{unknown}", flush=True)
    return _summary(target.name, rows)


def _summary(label: str, rows) -> dict:
    y = np.array([r[1] for r in rows])
    p = np.array([r[2].latency_ms for r in rows])
    rel = np.abs(p / y - 1)
    out = {"models": len(rows), "within_10pct": float(np.mean(rel <= 0.10)),
           "median_abs_err": float(np.median(rel)), "spearman": spearman(y, p)}
    planned = [(r[1], r[3].latency_ms) for r in rows if r[3] is not None]
    msg = (f"== {label}: {out['models']} unseen models: within +/-10%: "
           f"{100 * out['within_10pct']:.0f}%, median |error| {100 * out['median_abs_err']:.1f}%,"
           f" Spearman {out['spearman']:.3f}")
    if planned:
        yy, pp = np.array(planned).T
        msg += (f"; plan path ({len(planned)} variants): within 10% "
                f"{100 * np.mean(np.abs(pp / yy - 1) <= 0.1):.0f}%, Spearman "
                f"{spearman(yy, pp):.3f}")
    print(msg, flush=True)
    return out


def kernel_costs(models: dict[str, KernelPredictor]) -> None:
    """Predicted cost of reference kernels per target, absolute and relative to the 3x3 conv,
    and the int8 speed-up where a target has int8: the per-kernel costs differ by target."""
    # Chains: their inner kernels run int8 between int8 kernels, as inside a network.
    names = ["chain-64-3-28-1", "chain-128-3-14-1", "chain-512-3-7-1", "chain-64-1-28-1",
             "chain-256-1-14-1", "chain-96-3-56-96", "chain-384-3-14-384", "gemm-1280-1000-id"]
    print("# predicted cost of one kernel: ms | relative to the first row | int8 speed-up")
    print(f"{'kernel':<32}" + "".join(f"{t:>34}" for t in models))
    ref = {t: _kernel_ms(m, f"{names[0]}-fp32") for t, m in models.items()}
    for n in names:
        cells = []
        for t, m in models.items():
            a, b = _kernel_ms(m, f"{n}-fp32"), _kernel_ms(m, f"{n}-int8")
            speed = f"{a / b:5.2f}x" if a and b else "  n/a "
            cells.append(f"{a:12.4f} ms {a / ref[t]:9.3f} {speed:>9}" if a else f"{'n/a':>34}")
        print(f"{n:<32}" + "".join(cells))


def _kernel_ms(model: KernelPredictor, design: str) -> float | None:
    from toolchain.measure.probe import probe_names

    if design not in probe_names():
        return None
    units = [u for u in design_units(design) if u.cls in ("conv", "dwconv", "gemm")]
    if design.endswith("-int8"):
        units = [u for u in units if u.precision == "int8"]
    return model.kernel_ms(units[0]) if units else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="host-ort-1t,host-tvm")
    ap.add_argument("--variants", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", default=None,
                    help="probe CSVs <target>.csv (default: $FLEETC_HOME/bench)")
    ap.add_argument("--quick", action="store_true", help="quick probe subset, 6 variants, "
                    "3 light models (smoke run)")
    ap.add_argument("--no-light", action="store_true", help="skip the onnx light models")
    ap.add_argument("--rounds", type=int, default=3,
                    help="round-robin measurement passes, probes and models (fastest sample kept)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    config = TimingConfig(repeats=15, max_seconds=6.0)
    lights = [] if args.no_light else light_models()
    if args.quick:
        args.variants, lights = min(args.variants, 6), lights[-3:]
    from toolchain.home import home_dir

    data_dir = Path(args.data_dir) if args.data_dir else home_dir("bench", create=True)
    fitted = {}
    for name in args.targets.split(","):
        target = load_target(name)
        cases = [(n, lambda m=m: m, None, None) for n, m in lights]
        cases += [(n, functools.cache(lambda b=b, p=p: rewrite(b, p)), g, p)
                  for n, b, g, p in variants(args.variants, args.seed, target.precisions)]
        model, truth = measure_and_fit(target, data_dir / f"{name}.csv", args.quick, cases,
                                       config, args.rounds)
        fitted[name] = model
        evaluate(target, model, cases, truth)
    kernel_costs(fitted)


if __name__ == "__main__":
    main()
