"""Tuned TVM builds: the tuning curve of one model and database reuse by a bigger model.

`tune_and_build` + `time_builds`: one cumulative `tune_model` run (the API of `fleetc tune`)
from an empty database, with copies of the database at the checkpoints (default 5, 10 and 20
minutes); then onnxruntime, the default-scheduled `model.so` (no database) and the `model.so`
built with each checkpoint's database are timed side by side, 1 thread, pinned, in interleaved
rounds (median of the rounds' medians). Prints ms and the ratios to default-scheduled TVM and to
onnxruntime.

`reuse`: model B = A with two more copies of one of A's inverted residual blocks (same shapes);
tunes B against A's database and prints how many workloads were tuned (those A lacks) and how
many functions B's build took from A's records (database hits).

    flock -x /work/notes/cpu.lock .venv/bin/python benchmarks/tvm_tuned.py --minutes 5,10,20
    # or in two steps: tuning under the shared lock, the timing table under the exclusive one
    flock -s /work/notes/cpu.lock .venv/bin/python benchmarks/tvm_tuned.py --phase tune --work W
    flock -x /work/notes/cpu.lock .venv/bin/python benchmarks/tvm_tuned.py --phase time --work W

Figures are printed, never asserted. Run it alone on the machine (exclusive lock): the tuning
itself measures candidates.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from passes.emit_tvm import emit_tvm  # noqa: E402
from toolchain.measure.timing import TimingConfig, pick_cpus, pinned, time_callable  # noqa: E402
from toolchain.measure.tuning import tune_model  # noqa: E402
from toolchain.measure.tvm_backend import input_arrays, set_tvm_threads  # noqa: E402
from toolchain.measure.zoo import mobilenet_v2  # noqa: E402
from toolchain.target import load_target  # noqa: E402

CONFIG = TimingConfig(warmup=3, repeats=15, min_sample_ms=20.0, max_seconds=4.0)


@contextlib.contextmanager
def fleetc_home(path: Path):
    before = os.environ.get("FLEETC_HOME")
    os.environ["FLEETC_HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FLEETC_HOME", None)
        else:
            os.environ["FLEETC_HOME"] = before


def extra_blocks(model: onnx.ModelProto, block: str = "block5", copies: int = 2):
    """The model with `copies` more copies of a residual block (input shape = output shape)
    chained after it, sharing its weights."""
    out = copy.deepcopy(model)
    nodes = [n for n in out.graph.node if n.name.startswith(block + ".")]
    first_in = nodes[0].input[0]
    last_out = f"{block}.add.out"
    if not any(n.name == f"{block}.add" for n in nodes):
        raise ValueError(f"{block} is not a residual block")
    consumers = [n for n in out.graph.node if last_out in n.input and n not in nodes]
    tail, added = last_out, []
    for i in range(copies):
        rename = {first_in: tail}
        for n in nodes:
            c = copy.deepcopy(n)
            c.name = f"{n.name}.copy{i}"
            for j, name in enumerate(c.input):
                c.input[j] = rename.get(name, name)
            for j, name in enumerate(c.output):
                rename[name] = c.output[j] = f"{name}.copy{i}"
            added.append(c)
        tail = rename[last_out]
    for n in consumers:
        for j, name in enumerate(n.input):
            if name == last_out:
                n.input[j] = tail
    at = max(i for i, n in enumerate(out.graph.node) if n.name.startswith(block + ".")) + 1
    for k, n in enumerate(added):
        out.graph.node.insert(at + k, n)
    onnx.checker.check_model(out)
    return out


def time_so(path: Path, proto: onnx.ModelProto) -> float:
    """Median ms of one 1-thread run of an exported model.so (thread CPU clock, pinned)."""
    import tvm
    from tvm import relax

    set_tvm_threads(1)
    with pinned(pick_cpus(1)):
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
        args = [tvm.runtime.tensor(a, tvm.cpu()) for a in input_arrays(proto)]
        return time_callable(lambda: vm["main"](*args), CONFIG, clock="thread").median_ms


def time_onnxruntime(proto: onnx.ModelProto) -> float:
    from toolchain.measure.ort_backend import time_ort

    return time_ort(proto, 1, CONFIG).median_ms


def tune_and_build(proto: onnx.ModelProto, target: str, minutes: list[float],
                   work: Path) -> dict[str, Path]:
    """The default-scheduled build (empty database), one cumulative tuning run with database
    copies at the checkpoints, and a build with each copy. Returns build name -> model.so."""
    tgt = load_target(target)
    home = work / "home"
    with fleetc_home(home):
        emit_tvm(proto, tgt, work / "default")           # empty database: default schedules
        result = tune_model(proto, tgt, minutes=max(minutes), checkpoints=tuple(minutes),
                            checkpoint_dir=work / "ckpt", progress=print)
    print(f"tuning: {result.workloads} workloads, {result.trials} trials "
          f"({result.failed} failed), {result.seconds:.0f} s, cost model {result.cost_model}")
    for mark, folder in sorted(result.checkpoints.items()):
        with fleetc_home(Path(folder)):
            emit_tvm(proto, tgt, work / f"tuned{mark:g}")
    return builds(work)


def builds(work: Path) -> dict[str, Path]:
    found = {"default": work / "default" / "model.so"}
    for folder in sorted(work.glob("tuned*"), key=lambda p: float(p.name[5:])):
        found[f"tuned {folder.name[5:]} min"] = folder / "model.so"
    return found


def time_builds(proto: onnx.ModelProto, found: dict[str, Path], rounds: int = 3) -> dict:
    """onnxruntime and every build, side by side in interleaved rounds; prints the table."""
    samples: dict[str, list[float]] = {"onnxruntime": [], **{k: [] for k in found}}
    for _ in range(rounds):
        samples["onnxruntime"].append(time_onnxruntime(proto))
        for name, so in found.items():
            samples[name].append(time_so(so, proto))
    ms = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{'build':<16}{'ms':>9}{'x default':>11}{'x onnxruntime':>15}  (rounds)")
    for name, value in ms.items():
        print(f"{name:<16}{value:9.2f}{value / ms['default']:11.2f}"
              f"{value / ms['onnxruntime']:15.2f}  "
              + " ".join(f"{v:.2f}" for v in samples[name]))
    return ms


class _Hits(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def reuse(proto_a: onnx.ModelProto, target: str, home: Path, work: Path,
          trials: int = 64) -> None:
    tgt = load_target(target)
    proto_b = extra_blocks(proto_a)
    hits = _Hits()
    logging.getLogger("toolchain.tunedb").addHandler(hits)
    logging.getLogger("toolchain.tunedb").setLevel(logging.INFO)
    with fleetc_home(home):
        result = tune_model(proto_b, tgt, trials=trials, progress=print)
        emit_tvm(proto_b, tgt, work / "model_b")
    print(f"model B ({len(proto_b.graph.node)} nodes, A {len(proto_a.graph.node)}): "
          f"{result.workloads} workloads, {result.reused} from A's database, "
          f"{result.tuned} tuned ({result.trials} trials)")
    print("model B build: " + "; ".join(hits.lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="5,10,20", help="checkpoints; the last is the run")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--target", default="host-tvm")
    parser.add_argument("--work", default=None, help="folder to keep (default: a temp folder)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phase", choices=("all", "tune", "time"), default="all",
                        help="tune: tuning, builds and reuse (no timing); time: the timing "
                        "table of an earlier --phase tune --work DIR (run it under the "
                        "exclusive lock)")
    args = parser.parse_args(argv)
    minutes = [float(m) for m in args.minutes.split(",")]
    proto = mobilenet_v2(resolution=args.resolution)
    with tempfile.TemporaryDirectory(prefix="tvm-tuned-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"MobileNetV2-{args.resolution}, target {args.target}, 1 thread; work {work}")
        if args.phase in ("all", "tune"):
            tune_and_build(proto, args.target, minutes, work)
            reuse(proto, args.target, work / "home", work)
        if args.phase in ("all", "time"):
            time_builds(proto, builds(work), args.rounds)


if __name__ == "__main__":
    main()
