"""Fleet wall time: fleets of 1, 4 and 16 devices with --jobs 1 and --jobs 2 (digits fixture),
and a MobileNetV2-style 224x224 fleet of host + Raspberry Pi 4 + Jetson Nano in one call.

Prints figures; asserts nothing about speed. Every run uses a fresh FLEETC_HOME except for the
shared accuracy-sensitivity cache, which is measured once up front (as the first device of any
fleet pays it), so the figures compare the per-device work and its parallelism.

    .venv/bin/python benchmarks/bench_fleet.py [--sizes 1,4,16] [--jobs 1,2] [--mbv2]
"""
from __future__ import annotations

import argparse
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
    env = {**os.environ, "FLEETC_HOME": str(home)}
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--mbv2", action="store_true", help="also the 224x224 MobileNetV2 fleet")
    ap.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_fleet_"))
    work.mkdir(parents=True, exist_ok=True)
    digits_scaling(work, [int(s) for s in a.sizes.split(",")],
                   [int(j) for j in a.jobs.split(",")])
    if a.mbv2:
        mbv2_fleet(work)


if __name__ == "__main__":
    main()
