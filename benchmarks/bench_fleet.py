"""Fleet wall time: fleets of 1, 4 and 16 devices with --jobs 1 and --jobs 2 (digits fixture),
and a MobileNetV2-style 224x224 fleet of host + Raspberry Pi 4 + Jetson Nano in one call.

`--devices N` instead runs the issue-25 mix of the digits fixture from an empty FLEETC_HOME:
N/3 host-ort-1t devices (latency budgets spread over 1.1-2.5 ms), N/3 rpi4 devices known by
few-shot measurements and N/3 jetson-nano devices known by fingerprints, each with its own CSV
(the fixed stand-in probe latencies, tests/fixtures/standin/standin.csv, times a per-device
factor drawn log-uniformly from 0.5-4 and 5% noise per row), cold, then warm (the same home and
OUTDIR: every device cached; with `--plan-only` the shared work, the held-out error's probe
units and each measured plan's accuracy come from the cache, the candidates and picks are
computed again). It prints the devices, distinct plans, distinct builds and the seconds of each
phase (fleet.json). `--keep DIR --warm` times the warm run alone on a kept cold run.

    .venv/bin/python benchmarks/bench_fleet.py --devices 300 --keep /tmp/b300   # cold + warm
    .venv/bin/python benchmarks/bench_fleet.py --devices 300 --keep /tmp/b300 --warm
    .venv/bin/python benchmarks/bench_fleet.py --devices 1000 --keep /tmp/b1000
    .venv/bin/python benchmarks/bench_fleet.py --devices 10000 --plan-only --keep /tmp/b10k

Prints figures; asserts nothing about speed. Every run uses a fresh FLEETC_HOME except for the
shared accuracy-sensitivity cache, which is measured once up front (as the first device of any
fleet pays it), so the figures compare the per-device work and its parallelism.

    .venv/bin/python benchmarks/bench_fleet.py [--sizes 1,4,16] [--jobs 1,2] [--mbv2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "digits_mbv2.onnx"
FLEETC = str(Path(sys.executable).parent / "fleetc")


def _fleet_text(model: str, calib: str, devices: list[tuple[str, str, float, str]]) -> str:
    out = [f'model = "{model}"', f'calib = "{calib}"', "max_accuracy_drop = 2.0", ""]
    for name, target, latency, extra in devices:
        out += ["[[device]]", f'name = "{name}"', f'target = "{target}"',
                f"latency_ms = {latency}", extra, ""]
    return "\n".join(out)


def _run(args: list[str], home: Path) -> float:
    env = {**os.environ, "FLEETC_HOME": str(home), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([FLEETC, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"fleetc {' '.join(args[:2])} failed ({done.returncode})")
    return seconds


def digits_scaling(work: Path, sizes: list[int], jobs: list[int]) -> None:
    data = np.load(ROOT / "tests" / "fixtures" / "digits_calib.npz")
    np.savez_compressed(work / "calib.npz", inputs=data["inputs"][:32],
                        labels=data["labels"][:32])
    shutil.copy(FIXTURE, work / "model.onnx")
    warm = work / "home-warm"
    one = _fleet_text("model.onnx", "calib.npz", [("d0", "host-ort-1t", 2.0, "")])
    (work / "warm.toml").write_text(one)
    t = _run(["fleet", str(work / "warm.toml"), "-o", str(work / "warm-out")], warm)
    print(f"shared work + 1 device, cold: {t:.1f} s")
    print(f"{'devices':>8} {'jobs':>5} {'wall s':>8} {'s/device':>9}")
    for n in sizes:
        devices = [(f"d{i}", "host-ort-1t", round(1.2 + 0.1 * i, 2), "") for i in range(n)]
        (work / f"fleet{n}.toml").write_text(_fleet_text("model.onnx", "calib.npz", devices))
        for j in jobs:
            home = work / f"home-{n}-{j}"
            shutil.copytree(warm, home)
            shutil.rmtree(home / "cache" / "fleet", ignore_errors=True)
            t = _run(["fleet", str(work / f"fleet{n}.toml"), "-o", str(work / f"out-{n}-{j}"),
                      "--jobs", str(j)], home)
            print(f"{n:>8} {j:>5} {t:>8.1f} {t / n:>9.2f}")


def mbv2_fleet(work: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import onnx

    from toolchain import zoo

    onnx.save(zoo.mobilenet_v2(resolution=224), str(work / "mbv2.onnx"))
    rng = np.random.default_rng(0)
    np.savez_compressed(work / "mbv2_calib.npz",
                        inputs=rng.standard_normal((16, 3, 224, 224)).astype(np.float32))
    home = work / "home-mbv2"
    _run(["profile", "--probe", "--subset", "fingerprint", "--target", "host-ort",
          "-o", str(work / "standin.csv")], home)
    devices = [("host", "host-ort-1t", 8.0, ""),
               ("pi", "rpi4", 12.0, 'proxy = "host-ort-1t"\nmeasurements = "standin.csv"'),
               ("nano", "jetson-nano", 12.0, 'fingerprint = "standin.csv"')]
    (work / "mbv2.toml").write_text(_fleet_text("mbv2.onnx", "mbv2_calib.npz", devices))
    t = _run(["fleet", str(work / "mbv2.toml"), "-o", str(work / "mbv2-out"), "--jobs", "2"],
             home)
    print(f"MobileNetV2-style 224x224, host + rpi4 + jetson-nano in one call: {t:.1f} s "
          f"(results in {work / 'mbv2-out'})")
    print((work / "mbv2-out" / "fleet.json").read_text()[:3000])


def mix_fleet(work: Path, n: int, seed: int = 0) -> Path:
    """The fleet file of the issue's mix (module doc) and its CSVs, in `work`."""
    import csv

    rng = np.random.default_rng(seed)
    data = np.load(ROOT / "tests" / "fixtures" / "digits_calib.npz")
    np.savez_compressed(work / "calib.npz", inputs=data["inputs"][:64],
                        labels=data["labels"][:64])
    shutil.copy(FIXTURE, work / "model.onnx")
    with open(ROOT / "tests" / "fixtures" / "standin" / "standin.csv") as f:
        rows = [(r["design"], float(r["latency_ms"])) for r in csv.DictReader(f)]
    (work / "csv").mkdir(exist_ok=True)
    devices = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            budget = round(float(rng.uniform(1.1, 2.5)), 3)
            devices.append((f"host{i:05d}", "host-ort-1t", budget, ""))
            continue
        factor = float(np.exp(rng.uniform(np.log(0.5), np.log(4.0))))
        path = work / "csv" / f"d{i:05d}.csv"
        with open(path, "w") as f:
            f.write("design,latency_ms\n")
            for design, ms in rows:
                f.write(f"{design},{ms * factor * float(rng.normal(1.0, 0.05)):.6g}\n")
        budget = round(float(rng.uniform(1.1, 2.5)) * factor, 3)
        if kind == 1:
            devices.append((f"pi{i:05d}", "rpi4", budget,
                            f'proxy = "host-ort-1t"\nmeasurements = "csv/d{i:05d}.csv"'))
        else:
            devices.append((f"nano{i:05d}", "jetson-nano", budget,
                            f'fingerprint = "csv/d{i:05d}.csv"'))
    path = work / f"mix{n}.toml"
    path.write_text(_fleet_text("model.onnx", "calib.npz", devices))
    return path


def mix_run(work: Path, n: int, jobs: int, plan_only: bool, warm_only: bool = False) -> None:
    """Cold (empty FLEETC_HOME), then warm (the same home and OUTDIR); `warm_only`: the warm
    run alone, on the home and OUTDIR a cold run left in `work`."""
    home = work / "home-mix"
    fleet = work / f"mix{n}.toml"
    if warm_only:
        if not (home.is_dir() and fleet.is_file()):
            raise SystemExit(f"--warm: no cold run of {n} devices in {work} (run it first)")
    else:
        fleet = mix_fleet(work, n)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work / "mix-out", ignore_errors=True)
    extra = ["--plan-only"] if plan_only else []
    for label in ("warm",) if warm_only else ("cold", "warm"):
        out = work / "mix-out"
        t = _run(["fleet", str(fleet), "-o", str(out), "--jobs", str(jobs), *extra], home)
        doc = json.loads((out / "fleet.json").read_text())
        s = doc["summary"]
        print(f"{label}: {n} devices in {t:.1f} s ({t / n * 1000:.1f} ms/device); "
              f"distinct plans {s['distinct_plans']}, distinct builds {s['distinct_builds']}; "
              f"built {s['built']}, cached {s['cached']}, planned {s['planned']}, "
              f"failed {s['failed']}, over budget {s['over_budget']}")
        print("  phases (s): " + ", ".join(f"{k} {v:.1f}"
                                            for k, v in doc["phases_seconds"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--mbv2", action="store_true", help="also the 224x224 MobileNetV2 fleet")
    ap.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    ap.add_argument("--devices", type=int, help="the issue-25 mix of this many devices")
    ap.add_argument("--plan-only", action="store_true", help="with --devices: plan only")
    ap.add_argument("--warm", action="store_true",
                    help="with --devices and --keep: only the warm run, on a kept cold run")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_fleet_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.devices:
        mix_run(work, a.devices, int(a.jobs.split(",")[-1]), a.plan_only, a.warm)
        return
    digits_scaling(work, [int(s) for s in a.sizes.split(",")],
                   [int(j) for j in a.jobs.split(",")])
    if a.mbv2:
        mbv2_fleet(work)


if __name__ == "__main__":
    main()
