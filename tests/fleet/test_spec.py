"""Fleet files: validated with one clear error per problem, naming the file and the device."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.errors import BadInputError
from toolchain.fleet.run import write_depfile
from toolchain.fleet.spec import load_fleet

GOOD = '''
model = "m.onnx"
calib = "c.npz"
max_accuracy_drop = 1.0

[[device]]
name = "host"
target = "host-ort-1t"
latency_ms = 5

[[device]]
name = "pi"
target = "rpi4"
proxy = "host-ort-1t"
measurements = "pi.csv"

[[device]]
name = "nano"
target = "jetson-nano"
latency_ms = 12
fingerprint = "fp.csv"
'''

CSV = ("design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,{}\nconv-3-16-3-2-224-1-relu-fp16,1.0\n"
       "conv-3-16-3-2-224-1-relu-int8,0.5\n")


def _write(tmp_path: Path, text: str) -> Path:
    for name in ("m.onnx", "c.npz"):
        (tmp_path / name).write_bytes(b"x")
    for name in ("pi.csv", "fp.csv"):  # read with the fleet file: 3 probe designs at least
        (tmp_path / name).write_text(CSV.format(1.5))
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_good_fleet(tmp_path):
    fleet = load_fleet(_write(tmp_path, GOOD))
    assert [d.name for d in fleet.devices] == ["host", "pi", "nano"]
    assert [d.known_by for d in fleet.devices] == ["profiled", "fewshot", "fingerprint"]
    assert fleet.devices[0].budgets() == {"latency_ms": 5.0, "max_accuracy_drop": 1.0}
    assert fleet.devices[1].budgets() == {"max_accuracy_drop": 1.0}
    assert fleet.model == (tmp_path / "m.onnx").resolve()


def test_device_entry_changes_with_measurement_bytes(tmp_path):
    path = _write(tmp_path, GOOD)
    before = load_fleet(path).devices[1].entry()
    (tmp_path / "pi.csv").write_text(CSV.format(2.5))
    assert load_fleet(path).devices[1].entry() != before
    assert load_fleet(path).devices[0].entry() == load_fleet(path).devices[0].entry()


def test_depfile_lists_every_input(tmp_path):
    fleet = load_fleet(_write(tmp_path, GOOD))
    dep = tmp_path / "out" / "fleet.d"
    write_depfile(fleet, tmp_path / "out", dep)
    text = dep.read_text()
    assert text.startswith(f"{tmp_path / 'out' / 'fleet.json'}:")
    for name in ("fleet.toml", "m.onnx", "c.npz", "pi.csv", "fp.csv"):
        assert str((tmp_path / name).resolve()) in text


BAD = {
    "malformed": ("model = \n", "malformed TOML"),
    "no-model": ('[[device]]\nname="a"\ntarget="host-ort-1t"\nlatency_ms=1\n', "model is required"),
    "missing-model": ('model="nope.onnx"\n[[device]]\nname="a"\ntarget="host-ort-1t"\n'
                      'latency_ms=1\n', "'nope.onnx' not found"),
    "no-devices": ('model="m.onnx"\n', "no devices"),
    "unknown-top": ('model="m.onnx"\nspeed=1\n[[device]]\nname="a"\ntarget="t"\n'
                    'latency_ms=1\n', "unknown keys ['speed']"),
    "unknown-device-key": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\nlatency=1\n',
                           "unknown keys ['latency']"),
    "bad-name": ('model="m.onnx"\n[[device]]\nname="a b"\ntarget="t"\nlatency_ms=1\n',
                 "name must be"),
    "duplicate": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\nlatency_ms=1\n'
                  '[[device]]\nname="a"\ntarget="u"\nlatency_ms=2\n', "repeated: ['a']"),
    "no-budget": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\n', "no budget"),
    "negative": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\nlatency_ms=-3\n',
                 "latency_ms must be a non-negative number"),
    "zero-latency": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\nlatency_ms=0\n',
                     "latency_ms must be positive"),
    "proxy-alone": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\nlatency_ms=1\n'
                    'proxy="host-ort-1t"\n', "needs both proxy and measurements"),
    "both": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\nlatency_ms=1\n'
             'proxy="p"\nmeasurements="pi.csv"\nfingerprint="fp.csv"\n', "not both"),
    "missing-csv": ('model="m.onnx"\n[[device]]\nname="a"\ntarget="t"\nlatency_ms=1\n'
                    'fingerprint="gone.csv"\n', "fingerprint file 'gone.csv' not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_fleet_files(tmp_path, case):
    text, words = BAD[case]
    with pytest.raises(BadInputError) as info:
        load_fleet(_write(tmp_path, text))
    msg = str(info.value)
    assert words in msg and "fleet.toml" in msg and "\n" not in msg


@pytest.mark.parametrize("old, new, device", [
    ('target = "rpi4"', 'target = "rpi-4"', "pi"),
    ('proxy = "host-ort-1t"', 'proxy = "host-ort1t"', "pi"),
])
def test_a_target_typo_names_the_file_and_the_device(tmp_path, old, new, device):
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(BadInputError) as err:
        load_fleet(path)
    assert str(err.value).startswith(f"{path}: device {device}: unknown target")


def test_targets_are_resolved_once_when_the_file_is_read(tmp_path):
    fleet = load_fleet(_write(tmp_path, GOOD))
    assert sorted(fleet.targets) == ["host-ort-1t", "jetson-nano", "rpi4"]
    assert all(t.name == name for name, t in fleet.targets.items())


def test_a_path_too_long_for_the_file_system_is_bad_input(tmp_path):
    """A 300,000-character model path was OSError ENAMETOOLONG, exit 1 (fuzz seed 2)."""
    path = _write(tmp_path, GOOD.replace('model = "m.onnx"', f'model = "{"a" * 300_000}"'))
    with pytest.raises(BadInputError, match="File name too long"):
        load_fleet(path)
