"""Profiling: resumable measurement runs, the probe and profile commands, bad input."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from toolchain.cli import cli
from toolchain.measure.probe import build_probe, probe_set
from toolchain.measure.profile import profile
from toolchain.measure.records import read_measurements
from toolchain.measure.timing import TimingConfig
from toolchain.target import load_target

FAST = TimingConfig(warmup=1, repeats=3, min_sample_ms=1.0, max_seconds=1.0)


def _cli(*args):
    import toolchain.cli.measure  # noqa: F401
    return CliRunner().invoke(cli, list(args))


class _StopError(Exception):
    pass


def test_interrupted_run_keeps_rows_and_resumes(tmp_path):
    target = load_target("host-ort-1t")
    probes = [p.name for p in probe_set(("fp32",), "fingerprint")][:3]
    designs = [(n, lambda n=n: build_probe(n)) for n in probes]
    out = tmp_path / "m.csv"

    def interrupt(_line: str) -> None:
        raise _StopError  # as Ctrl-C would, right after the first row is written
    with pytest.raises(_StopError):
        profile(target, designs, out, FAST, progress=interrupt)
    assert [r.design for r in read_measurements(out)] == probes[:1]
    result = profile(target, designs, out, FAST)
    assert (result.measured, result.already, result.failed) == (2, 1, ())
    rows = read_measurements(out)
    assert [r.design for r in rows] == probes and all(r.latency_ms > 0 for r in rows)
    assert dict(rows[0].extra)["clock"] == "thread"   # one thread: thread CPU time
    again = profile(target, designs, out, FAST)
    assert (again.measured, again.already) == (0, 3)


def test_profile_model_cli_and_bad_input(tmp_path):
    import onnx

    model = tmp_path / "tiny.onnx"
    onnx.save(build_probe("op-relu-32-112-fp32"), model)
    out = tmp_path / "tiny.csv"
    ok = _cli("profile", str(model), "--target", "host-ort-1t", "-o", str(out),
              "--repeats", "3", "--max-seconds", "0.5")
    assert ok.exit_code == 0, ok.output
    assert [r.design for r in read_measurements(out)] == ["tiny"]
    rounds = _cli("profile", str(model), "--target", "host-ort-1t", "-o", str(tmp_path / "r.csv"),
                  "--rounds", "2", "--repeats", "3", "--max-seconds", "0.3")
    assert rounds.exit_code == 0, rounds.output
    assert [r.design for r in read_measurements(tmp_path / "r.csv")] == ["tiny"]
    assert "round 2/2" in rounds.output
    zero = _cli("profile", str(model), "--target", "host-ort-1t", "-o", str(tmp_path / "z.csv"),
                "--rounds", "0")
    assert zero.exit_code == 2 and "--rounds must be at least 1" in zero.output
    both = _cli("profile", str(model), "--probe", "--target", "host-ort-1t", "-o", str(out))
    assert both.exit_code == 2 and "either MODEL or --probe" in both.output
    unknown = _cli("profile", str(model), "--target", "pi-zero", "-o", str(out))
    assert unknown.exit_code == 2 and "unknown target" in unknown.output
    missing = _cli("profile", str(tmp_path / "nope.onnx"), "--target", "host-ort-1t", "-o",
                   str(out))
    assert missing.exit_code == 2 and "no such model" in missing.output


def test_probe_command_writes_models(tmp_path):
    res = _cli("probe", "--target", "rpi4", "--subset", "fingerprint", "-o", str(tmp_path / "p"))
    assert res.exit_code == 0, res.output
    names = (tmp_path / "p" / "probes.txt").read_text().split()
    assert names == [p.name for p in probe_set(load_target("rpi4").precisions, "fingerprint")]
    assert all((tmp_path / "p" / f"{n}.onnx").is_file() for n in names)


def test_rounds_interleave_resume_and_merge(tmp_path):
    target = load_target("host-ort-1t")
    probes = [p.name for p in probe_set(("fp32",), "fingerprint")][:2]
    designs = [(n, lambda n=n: build_probe(n)) for n in probes]
    out = tmp_path / "m.csv"
    lines = []

    def interrupt(line: str) -> None:
        lines.append(line)
        if len(lines) == 3:   # first design of round 2 written, then Ctrl-C
            raise _StopError
    with pytest.raises(_StopError):
        profile(target, designs, out, FAST, progress=interrupt, rounds=3)
    assert lines[0].startswith("round 1/3") and lines[2].startswith("round 2/3")
    assert not out.exists() or read_measurements(out) == []   # no row before its last round
    result = profile(target, designs, out, FAST, rounds=3)
    assert (result.measured, result.already, result.failed) == (2, 0, ())
    side = [r.design for r in read_measurements(tmp_path / "m.csv.rounds.csv")]
    assert side == [f"{n}@{r}" for r in (1, 2, 3) for n in probes]   # round-robin order
    rows = read_measurements(out)
    assert [r.design for r in rows] == probes
    for row in rows:
        fastest = min(float(dict(r.extra)["min_ms"])
                      for r in read_measurements(tmp_path / "m.csv.rounds.csv")
                      if r.design.startswith(row.design + "@"))
        assert row.latency_ms == pytest.approx(fastest, rel=1e-5)   # fastest of 3 rounds
        assert dict(row.extra)["repeats"] == "3"
    with pytest.raises(Exception, match="--rounds must be at least 1"):
        profile(target, designs, out, FAST, rounds=0)


def test_rounds_with_nothing_left_to_measure(tmp_path):
    target = load_target("host-ort-1t")
    name = [p.name for p in probe_set(("fp32",), "fingerprint")][0]
    out = tmp_path / "m.csv"
    out.write_text(f"design,latency_ms\n{name},0.5\n")
    result = profile(target, [(name, lambda: build_probe(name))], out, FAST, rounds=3)
    assert (result.measured, result.already) == (0, 1)
