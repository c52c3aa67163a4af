"""`fleetc probe`, `fleetc profile` and `fleetc farm` (the stand-in TVM RPC device farm)."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import click

from toolchain.errors import BadInputError
from toolchain.measure.timing import TimingConfig
from toolchain.target import load_target

__all__ = ["probe_cmd", "profile_cmd", "farm"]

logger = logging.getLogger(__name__)


def _echo_err(text: str) -> None:
    click.echo(text, err=True)


@click.command("probe")
@click.option("--target", "-t", "target_name", required=True, help="Target name (fleetc targets).")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the probe models (<name>.onnx and probes.txt).")
@click.option("--subset", type=click.Choice(["full", "quick", "fingerprint"]), default="full",
              show_default=True, help="All probes, about one in six, or a dozen references.")
def probe_cmd(target_name: str, out: str, subset: str) -> None:
    """Write the probe models for a target's precisions (to measure on a device)."""
    from toolchain.measure.probe import probe_set, write_probes

    target = load_target(target_name)
    probes = probe_set(target.precisions, subset)
    _echo_err(f"writing {len(probes)} probe models to {out}")
    write_probes(probes, out)
    click.echo(f"{len(probes)} probes in {out}; measure each and hand in a CSV with columns "
               f"design,latency_ms[,energy_mj] (design = file name without .onnx)")


@click.command("profile")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--probe", "use_probe", is_flag=True, help="Measure the probe set.")
@click.option("--subset", type=click.Choice(["full", "quick", "fingerprint"]), default="full",
              show_default=True, help="Which probes (with --probe).")
@click.option("--target", "-t", "target_name", required=True, help="Target name (fleetc targets).")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Measurement CSV; rows already in it are not measured again.")
@click.option("--tracker", default=None, help="RPC tracker HOST:PORT (rpc targets).")
@click.option("--repeats", default=15, show_default=True, help="Timed samples per design.")
@click.option("--max-seconds", default=8.0, show_default=True, help="Time budget per design.")
@click.option("--rounds", default=1, show_default=True,
              help="Measure the designs round-robin this many times, each round in a new "
                   "process; a row keeps the fastest sample of its rounds (steadier on "
                   "machines whose speed drifts).")
def profile_cmd(model: str | None, use_probe: bool, subset: str, target_name: str, out: str,
                tracker: str | None, repeats: int, max_seconds: float, rounds: int) -> None:
    """Measure MODEL or the probe set on a target; append design,latency_ms rows to OUT."""
    from toolchain.measure.profile import profile

    if bool(model) == use_probe:
        raise BadInputError("give either MODEL or --probe")
    if repeats < 3 or max_seconds <= 0:
        raise BadInputError("--repeats must be >= 3 and --max-seconds > 0")
    target = load_target(target_name)
    designs = _probe_designs(target, subset) if use_probe else [_model_design(model)]
    config = TimingConfig(repeats=repeats, max_seconds=max_seconds)
    start = time.monotonic()
    result = profile(target, designs, out, config, tracker, progress=_echo_err, rounds=rounds)
    click.echo(f"{out}: {result.measured} measured, {result.already} already there"
               + (f", {len(result.failed)} failed: {', '.join(result.failed)}"
                  if result.failed else "") + f" ({time.monotonic() - start:.0f} s)")


def _probe_designs(target, subset: str):
    from toolchain.measure.probe import build_probe, probe_set

    return [(p.name, lambda n=p.name: build_probe(n)) for p in probe_set(target.precisions,
                                                                          subset)]


def _model_design(path: str):
    from passes.import_onnx import load_model

    if not Path(path).is_file():
        raise BadInputError(f"{path}: no such model file")
    return [(Path(path).stem, lambda: load_model(path))][0]


@click.group("farm")
def farm() -> None:
    """A stand-in TVM RPC device farm on this machine (tracker + servers on 127.0.0.1)."""


@farm.command("start")
@click.option("--port", default=9190, show_default=True, help="Tracker port (0 = any free).")
@click.option("--key", "keys", multiple=True, metavar="KEY=THREADS",
              help="A server per key with that many TVM threads (default host-1t=1 host-2t=2).")
def farm_start(port: int, keys: tuple[str, ...]) -> None:
    """Start the farm and serve until interrupted (Ctrl-C stops every process it started)."""
    from toolchain.measure.rpc import start_farm

    parsed = dict(_key(k) for k in keys) or None
    # `kill PID` stops the farm like Ctrl-C: the tracker and servers are ended, not orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    with start_farm(parsed, port=port) as running:
        click.echo(f"tracker {running.address}; keys: "
                   + ", ".join(f"{k} ({t} thread{'s' * (t != 1)})"
                               for k, t in running.keys.items()))
        click.echo(f"use: fleetc profile ... --tracker {running.address} "
                   f"(or FLEETC_TRACKER={running.address}); Ctrl-C stops the farm")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("farm stopped", err=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _key(text: str) -> tuple[str, int]:
    key, _, threads = text.partition("=")
    if not key or not threads.isdigit() or int(threads) < 1:
        raise BadInputError(f"--key {text!r}: expected KEY=THREADS, e.g. host-1t=1")
    return key, int(threads)


@farm.command("status")
@click.option("--tracker", default="127.0.0.1:9190", show_default=True, help="HOST:PORT.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait.")
def farm_status(tracker: str, timeout: float) -> None:
    """List the keys registered at a tracker and their free devices."""
    from toolchain.measure.rpc import tracker_keys

    keys = tracker_keys(tracker, timeout)
    for key, free in sorted(keys.items()):
        click.echo(f"{key:<20} free {free}")
    if not keys:
        click.echo(f"no devices registered at {tracker}")
