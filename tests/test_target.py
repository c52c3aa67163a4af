"""Targets: built-in TOML files, TVM targets, user targets under FLEETC_HOME, CLI, bad input."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from toolchain.cli import cli
from toolchain.errors import BadInputError
from toolchain.home import fleetc_home, predictors_dir
from toolchain.target import list_targets, load_target, parse_target

BUILTINS = ["host-ort-1t", "host-ort", "host-tvm", "rpi4", "rpi5", "jetson-nano",
            "jetson-orin-nano", "pixel-a76"]


def _cli(*args):
    import toolchain.cli.measure  # noqa: F401
    import toolchain.cli.predict  # noqa: F401
    import toolchain.cli.targets  # noqa: F401
    return CliRunner().invoke(cli, list(args))


def test_builtins_listed_and_loadable():
    assert set(BUILTINS) <= set(list_targets())
    for name in BUILTINS:
        t = load_target(name)
        assert t.name == name and t.precisions and t.predictor
        assert t.measurable_here == (name.startswith("host-"))


@pytest.mark.parametrize("name,kind,host_triple", [
    ("rpi4", "llvm", "aarch64-linux-gnu"), ("rpi5", "llvm", None),
    ("jetson-nano", "cuda", "aarch64-linux-gnu"), ("jetson-orin-nano", "cuda", "aarch64-linux-gnu"),
    ("pixel-a76", "llvm", None), ("host-tvm", "llvm", None)])
def test_tvm_targets_build(name, kind, host_triple):
    tvm_target = load_target(name).tvm()
    assert tvm_target.kind.name == kind
    if host_triple:  # the Jetson tags alone would give an x86-64 host
        assert str(tvm_target.host.attrs["mtriple"]) == host_triple
    if name in ("rpi5", "pixel-a76"):
        assert str(tvm_target.attrs["mcpu"]) == "cortex-a76"
    if name == "host-tvm":
        assert str(tvm_target.attrs["mcpu"]) != "native"  # resolved to this CPU


def test_unknown_target_is_bad_input():
    with pytest.raises(BadInputError, match="unknown target 'nope'.*host-ort-1t"):
        load_target("nope")


def test_user_target_and_malformed_toml(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETC_HOME", str(tmp_path))
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "shelf.toml").write_text(
        'name = "shelf"\ntvm_target = "raspberry-pi/4b-aarch64"\nprecisions = ["fp32"]\n'
        '[measure]\nkind = "rpc"\nrpc_key = "shelf"\n')
    assert "shelf" in list_targets()
    assert load_target("shelf").measure.rpc_key == "shelf"
    (folder / "broken.toml").write_text('name = "broken"\n[measure\n')
    with pytest.raises(BadInputError, match="broken.toml: malformed TOML") as err:
        load_target("broken")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change,message", [
    ({"precisions": ["int4"]}, "precisions"),
    ({"tvm_target": "llvm -mtriple=aarch64-linux-gnu"}, "rejects target strings"),
    ({"measure": {"kind": "ssh"}}, "kind must be one of"),
    ({"measure": {"kind": "rpc"}}, "needs an rpc_key"),
    ({"colour": "red"}, "unknown keys"),
    ({"power_w": -1}, "power_w"),
])
def test_bad_target_tables(change, message):
    data = {"name": "t", "tvm_target": "llvm", "measure": {"kind": "local-ort"}, **change}
    with pytest.raises(BadInputError, match=message):
        parse_target(data)


def test_home_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("FLEETC_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fleetc_home() == tmp_path / "fleetc"
    monkeypatch.setenv("FLEETC_HOME", str(tmp_path / "h"))
    assert predictors_dir(create=True) == tmp_path / "h" / "predictors"
    assert (tmp_path / "h" / "predictors").is_dir()


def test_cli_targets_list_and_show():
    listed = _cli("targets")
    assert listed.exit_code == 0
    assert all(name in listed.output for name in BUILTINS)
    shown = _cli("targets", "show", "jetson-nano", "--json")
    assert shown.exit_code == 0
    doc = json.loads(shown.output)
    assert doc["tvm_target"]["host"]["mtriple"] == "aarch64-linux-gnu"
    assert doc["measure"]["kind"] == "rpc" and doc["measurable_here"] is False
    bad = _cli("targets", "show", "nope")
    assert bad.exit_code == 2 and "unknown target" in bad.output


# --- issue 21: the target schema (types, ranges, finite numbers, names) ----------------------

@pytest.mark.parametrize("change,message", [
    ({"precisions": 5}, "precisions must be a non-empty list.*got 5"),
    ({"precisions": "fp32"}, "precisions must be a non-empty list"),
    ({"precisions": ["fp32", "fp32"]}, "distinct"),
    ({"precisions": [["fp32"]]}, "precisions"),
    ({"name": "t\n"}, r"name must be .*got 't\\n'"),
    ({"name": "../t"}, "name must be"),
    ({"name": 5}, "name must be"),
    ({"predictor": "a/b"}, "predictor must be a package name"),
    ({"description": ["x"]}, "description must be a string"),
    ({"cross_compiler": ""}, "cross_compiler must be a string"),
    ({"tvm_target": {"mcpu": "native"}}, "needs a 'kind' string"),
    ({"tvm_target": 5}, "tvm_target must be a TVM tag"),
    ({"power_w": float("nan")}, r"power_w must be a number in \(0, 100000\].*got nan"),
    ({"power_w": float("inf")}, "power_w must be"),
    ({"power_w": True}, "power_w must be"),
    ({"features": {"cores": float("nan")}}, r"\[features\] cores must be a finite number"),
    ({"features": {"nested": {"a": 1}}}, r"\[features\] nested"),
    ({"features": [1]}, r"\[features\] must be a table"),
    ({"measure": {"kind": "local-ort", "threads": 100000}}, r"threads must be .* 0\.\.1024"),
    ({"measure": {"kind": "local-ort", "threads": -1}}, "threads must be"),
    ({"measure": {"kind": "local-ort", "threads": True}}, "threads must be"),
    ({"measure": {"kind": ["rpc"]}}, "kind must be one of"),
    ({"measure": {"kind": "rpc", "rpc_key": 5}}, "rpc_key must be a non-empty string"),
    ({"measure": {"kind": "local-ort", "timeout_s": float("inf")}}, "timeout_s must be"),
    ({"measure": {"kind": "local-ort", "timeout_s": 1e9}}, "timeout_s must be"),
    ({"measure": {"kind": "local-ort", "tracker": "host"}}, "tracker must be HOST:PORT"),
    ({"measure": {"kind": "local-ort", "tracker": "host:99999"}}, "tracker must be HOST:PORT"),
    ({"measure": [1]}, r"\[measure\] must be a table"),
])
def test_target_schema(change, message):
    data = {"name": "t", "tvm_target": "llvm", "measure": {"kind": "local-ort"}, **change}
    with pytest.raises(BadInputError, match=message) as err:
        parse_target(data)
    assert "\n" not in str(err.value)


def test_target_bounds_that_are_accepted():
    data = {"name": "t.v2_a-b", "tvm_target": {"kind": "llvm"}, "power_w": 6, "features":
            {"cores": 4, "fp16": True, "arch": "x"},
            "measure": {"kind": "rpc", "rpc_key": "k", "threads": 1024, "tracker": "10.0.0.1:9190",
                        "timeout_s": 86400}}
    target = parse_target(data)
    assert target.measure.threads == 1024 and target.power_w == 6.0
    assert target.measure.tracker == "10.0.0.1:9190"


def test_a_broken_user_target_is_listed_as_broken(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETC_HOME", str(tmp_path))
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "five.toml").write_text(
        'name = "five"\nprecisions = 5\ntvm_target = "llvm"\n[measure]\nkind = "local-ort"\n')
    listed = _cli("targets")
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert set(BUILTINS) <= set(rows)
    assert "BROKEN" in rows["five"] and "precisions" in rows["five"]
    shown = _cli("targets", "show", "five")
    assert shown.exit_code == 2 and "five.toml" in shown.stderr and "precisions" in shown.stderr
