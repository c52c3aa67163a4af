"""The fuzz suite (issue 21): seeded mutants of the five input kinds - models, plans, fleet
files, user targets, calibration data - run in process through click's CliRunner with a
deadline each, and the oracle of tests/fuzzing/oracle.py holds for every case: exit code in
{0, 2, 3, 4}, no traceback, no hang, inputs byte-identical, nothing written outside -o, the
depfile and $FLEETC_HOME, no partial output.

The in-suite run is short (mostly inspect, rewrite, targets and fleet-file validation; three
cases reach compile or a fleet build); `benchmarks/fuzz.py --cases 1000` is the long run. A
failure prints one line per case with `python benchmarks/fuzz.py --replay ID` to rerun it."""
from __future__ import annotations

import json
import os
import time

import click
import pytest

from tests.fuzzing import (
    KINDS,
    Case,
    make_case,
    memory_limit,
    parse_case_id,
    run_case,
    schedule,
)
from tests.fuzzing.bases import model_bytes

SEED = 21
CASES = 150
# Per 100 cases: (cases, heavy cases) of each kind; heavy = compile --no-measure or a build.
MIX = {"model": (34, 1), "plan": (22, 0), "fleet": (20, 1), "target": (14, 0), "calib": (10, 1)}
LIGHT_S, HEAVY_S = 10.0, 120.0
MEMORY = 4 << 30   # address space a case may add: unbounded allocations fail, not the machine


def test_fuzz_cases_keep_the_oracle(tmp_path):
    outcomes = []
    with memory_limit(MEMORY):
        for kind, index, heavy in schedule(CASES, MIX):
            case = make_case(kind, SEED, index, heavy)
            outcomes.append(run_case(case, tmp_path, HEAVY_S if heavy else LIGHT_S))
    assert len(outcomes) >= 100
    assert {o.kind for o in outcomes} == set(KINDS)
    heavy = [o.command.split()[1] for o in outcomes if o.case_id.endswith(":heavy")]
    assert len(heavy) == 3 and "compile" in heavy
    failed = [o.repro() for o in outcomes if o.problems]
    assert not failed, (f"{len(failed)} of {len(outcomes)} fuzz cases broke the oracle:\n"
                        + "\n".join(failed))


def test_cases_replay_from_their_id():
    """A failure is reproduced from its id alone: the same id gives the same case."""
    for kind, index, heavy in schedule(30, MIX):
        case = make_case(kind, SEED, index, heavy)
        assert parse_case_id(case.id) == (kind, SEED, index, heavy)
        again = make_case(*parse_case_id(case.id))
        assert (again.args, again.files, again.links, again.fifos, again.dirs) == \
            (case.args, case.files, case.links, case.fifos, case.dirs)


# --- the oracle itself: a planted fault of each kind is found, a clean run is not flagged ---

@click.group()
def planted() -> None:
    """Commands that break one rule each (and two that break none)."""


@planted.command("crash")
def _crash() -> None:
    raise RuntimeError("boom")


@planted.command("internal")
def _internal() -> None:
    click.echo("fleetc: internal error: KeyError: 77", err=True)
    raise SystemExit(1)


@planted.command("trace")
def _trace() -> None:
    click.echo('Traceback (most recent call last):\n  File "x.py"', err=True)
    raise SystemExit(2)


@planted.command("sleep")
def _sleep() -> None:
    time.sleep(30)


@planted.command("touch-input")
def _touch_input() -> None:
    with open("m.onnx", "ab") as f:
        f.write(b"!")


@planted.command("replace-folder")
def _replace_folder() -> None:
    os.remove("notes/thesis.tex")
    _write_onnx("notes/out.onnx")


@planted.command("stray")
def _stray() -> None:
    with open("stray.txt", "w") as f:
        f.write("x")


@planted.command("half")
def _half() -> None:
    with open("out.onnx", "wb") as f:
        f.write(model_bytes("tiny")[:100])
    raise SystemExit(2)


@planted.command("nothing")
def _nothing() -> None:
    """Exit 0 without writing the output."""


@planted.command("ok")
def _ok() -> None:
    os.makedirs(os.path.join(os.environ["FLEETC_HOME"], "cache"), exist_ok=True)
    with open(os.path.join(os.environ["FLEETC_HOME"], "cache", "entry"), "w") as f:
        f.write("cached")
    _write_onnx("new/sub/out.onnx")


@planted.command("refuse")
def _refuse() -> None:
    click.echo("fleetc: error: m.onnx: not an ONNX model", err=True)
    raise SystemExit(2)


@planted.command("fleet-empty")
def _fleet_empty() -> None:
    os.mkdir("out")
    raise SystemExit(2)


@planted.command("fleet-ok")
def _fleet_ok() -> None:
    os.makedirs("out/host")
    _write_onnx("out/host/model.onnx")
    with open("out/host/manifest.json", "w") as f:
        json.dump({"artifacts": [{"path": "model.onnx"}]}, f)
    with open("out/fleet.json", "w") as f:
        json.dump({"devices": [{"name": "host", "outdir": "host"}]}, f)


def _write_onnx(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model_bytes("tiny"))


@pytest.mark.parametrize("command, out, kind, problems", [
    ("crash", "out.onnx", "onnx", ["exit 1"]),
    ("internal", "out.onnx", "onnx", ["exit 1"]),
    ("trace", "out.onnx", "onnx", ["traceback"]),
    ("sleep", "out.onnx", "onnx", ["hang"]),
    ("touch-input", "out.onnx", "onnx", ["modified input", "partial output"]),
    ("replace-folder", "notes/out.onnx", "onnx", ["modified input"]),
    ("stray", "out.onnx", "onnx", ["write outside", "partial output"]),
    ("half", "out.onnx", "onnx", ["partial output"]),
    ("nothing", "out.onnx", "onnx", ["partial output"]),
    ("ok", "new/sub/out.onnx", "onnx", []),
    ("refuse", "out.onnx", "onnx", []),
    ("fleet-empty", "out", "fleet", ["partial output"]),
    ("fleet-ok", "out", "fleet", []),
])
def test_oracle_finds_each_planted_fault(tmp_path, command, out, kind, problems):
    case = Case(mutation="planted", args=[command], outputs=[out], output_kind=kind,
                files={"m.onnx": model_bytes("tiny"), "notes/thesis.tex": b"my thesis\n"},
                kind="model")
    outcome = run_case(case, tmp_path, timeout=0.5, command=planted)
    assert outcome.problems == problems, outcome.details
    assert list(tmp_path.iterdir()) == []   # the case folder is removed afterwards
