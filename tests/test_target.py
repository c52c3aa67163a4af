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
