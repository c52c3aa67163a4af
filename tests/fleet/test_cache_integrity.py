"""The fleet build cache verifies itself: damaged entries are rebuilt, temp folders are owned.

Most cases replace planning and building by a fake (tests/fleet/fakes.py: `run_fleet` runs
it in this process with `--jobs 1`) that writes a small build entry in milliseconds: what is
tested is the cache around the build - which entry is served, which is rebuilt, what is
warned, what is left behind - not the build.
`test_a_truncated_artifact_is_rebuilt_end_to_end` runs the real compiler once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fleet.fakes import FakeFleet, artifact
from tests.processes import HOST_FP32
from toolchain.cli import cli
from toolchain.fleet.cache import entry_dir
from toolchain.fleet.run import run_fleet
from toolchain.fleet.spec import load_fleet
from toolchain.home import cache_dir, predictors_dir
from toolchain.predict.latency import builtin_predictors_dir

FIXTURES = Path(__file__).parents[1] / "fixtures"
DIGESTS = "digests.json"

FLEET = '''
model = "m.onnx"
latency_ms = 5.0

[[device]]
name = "host"
target = "host-ort-1t"
'''


def _sound(folder: Path) -> bool:
    """The folder matches its digests (imported here: the helper is new in issue 21, and the
    module must load on the commit before it to show which tests fail there)."""
    from toolchain.files import check_digests

    return check_digests(folder) is None


@pytest.fixture()
def fake(monkeypatch) -> FakeFleet:
    return FakeFleet().install(monkeypatch)


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "digits_mbv2.onnx", tmp_path / "m.onnx")
    (tmp_path / "fleet.toml").write_text(FLEET)
    return tmp_path


def _fleet(work: Path, out: str = "out") -> tuple[int, dict, str]:
    result = CliRunner().invoke(cli, ["fleet", str(work / "fleet.toml"), "-o", str(work / out)])
    doc = json.loads((work / out / "fleet.json").read_text()) if result.exit_code == 0 else {}
    status = {d["name"]: d["status"] for d in doc.get("devices", [])}
    return result.exit_code, status, result.output


def _entry(work: Path) -> Path:
    key = json.loads((work / "out" / "fleet.json").read_text())["devices"][0]["cache_key"]
    return entry_dir(key)


def _temps(folder: Path) -> list[str]:
    """Temporary folders of fleetc in `folder`: `.build-*` in the cache, `.<device>.tmp-*`
    beside the outputs."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(".build-") or ".tmp-" in p.name)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(1000)


def _flip(path: Path) -> None:
    """Change one byte in the middle: same size, other content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model.so": lambda e: _truncate(e / "model.so"),
    "deleted model.so": lambda e: (e / "model.so").unlink(),
    "changed model.so": lambda e: _flip(e / "model.so"),
    "garbled manifest.json": lambda e: (e / "manifest.json").write_bytes(b"{\"predicted\": \xff"),
    "garbled digests.json": lambda e: (e / DIGESTS).write_text("[1, 2"),
    "deleted digests.json": lambda e: (e / DIGESTS).unlink(missing_ok=True),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_rebuilt_with_a_warning(work, fake, caplog, damage):
    """Issue 21: a truncated cached model.so was served ("up to date (cache)", exit 0); a
    garbled cached manifest.json made every later run exit 1 until `fleetc cache clean`."""
    assert _fleet(work)[:2] == (0, {"host": "built"})
    entry = _entry(work)
    DAMAGE[damage](entry)
    caplog.set_level(logging.WARNING)
    code, status, output = _fleet(work)
    assert (code, status) == (0, {"host": "built"}), output
    assert fake.builds == ["host-ort-1t"]     # the device's build entry is sound: reused
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("host: cached build") and "damaged" in m for m in warned), warned
    what = damage.split()[1]
    assert any(what in m for m in warned), warned
    assert (work / "out" / "host" / "model.so").read_bytes() == artifact("host-ort-1t")
    assert json.loads((work / "out" / "host" / "manifest.json").read_text())["predicted"]
    assert _sound(entry)          # the entry was replaced by the new build
    assert _fleet(work)[:2] == (0, {"host": "cached"})
    assert fake.builds == ["host-ort-1t"]


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


OUTPUT_CHANGES = {
    "changed model.so": lambda d: _flip(d / "model.so"),
    "truncated model.so": lambda d: _truncate(d / "model.so"),
    "deleted plan.json": lambda d: (d / "plan.json").unlink(),
    "added file": lambda d: (d / "notes.txt").write_text("mine"),
    "edited manifest.json": lambda d: (d / "manifest.json").write_text("{}"),
}


def test_a_rerun_leaves_a_matching_device_folder_alone(work, fake):
    """A warm rerun into the same OUTDIR does not copy a device folder that already matches
    its cache entry: the files are the very same (inode and mtime unchanged)."""
    assert _fleet(work)[:2] == (0, {"host": "built"})
    before = _stamps(work / "out" / "host")
    assert _fleet(work)[:2] == (0, {"host": "cached"})
    assert _stamps(work / "out" / "host") == before
    assert fake.builds == ["host-ort-1t"]


@pytest.mark.parametrize("change", sorted(OUTPUT_CHANGES))
def test_a_changed_device_folder_is_installed_again(work, fake, change):
    """A device folder that no longer matches its entry (a file changed, cut, removed or
    added) is replaced by a fresh copy of the entry; nothing is rebuilt."""
    assert _fleet(work)[:2] == (0, {"host": "built"})
    want = {p.name: p.read_bytes() for p in (work / "out" / "host").iterdir()}
    OUTPUT_CHANGES[change](work / "out" / "host")
    assert _fleet(work)[:2] == (0, {"host": "cached"})
    got = {p.name: p.read_bytes() for p in (work / "out" / "host").iterdir()}
    assert got == want
    assert fake.builds == ["host-ort-1t"]


def test_a_device_with_a_changed_input_is_rebuilt_not_left_alone(work, fake):
    """A changed budget is another cache key: the folder is rebuilt and replaced."""
    assert _fleet(work)[:2] == (0, {"host": "built"})
    (work / "fleet.toml").write_text(FLEET.replace("5.0", "6.0"))
    assert _fleet(work)[:2] == (0, {"host": "built"})
    manifest = json.loads((work / "out" / "host" / "manifest.json").read_text())
    assert manifest["budgets"]["latency_ms"] == 6.0
    assert fake.builds == ["host-ort-1t"]     # the same plan: its build entry is reused


@pytest.mark.parametrize("damage", ["truncated model.so", "changed model.so"])
def test_a_damaged_build_entry_is_built_again(work, fake, caplog, damage):
    """The shared build entry (one per plan and TVM target) verifies itself too."""
    assert _fleet(work)[:2] == (0, {"host": "built"})
    build = json.loads((work / "out" / "fleet.json").read_text())["builds"][0]["key"]
    DAMAGE[damage](entry_dir(build))
    shutil.rmtree(_entry(work))      # the device's own entry: gone, so it is made again
    caplog.set_level(logging.WARNING)
    code, status, output = _fleet(work, "out2")
    assert (code, status) == (0, {"host": "built"}), output
    assert fake.builds == ["host-ort-1t", "host-ort-1t"]
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert (work / "out2" / "host" / "model.so").read_bytes() == artifact("host-ort-1t")


def test_a_sound_entry_is_served_without_the_digest_file(work, fake):
    assert _fleet(work)[:2] == (0, {"host": "built"})
    shutil.rmtree(work / "out")
    assert _fleet(work)[:2] == (0, {"host": "cached"})
    assert fake.builds == ["host-ort-1t"]
    files = sorted(p.name for p in (work / "out" / "host").iterdir())
    assert files == [".fleetc-output", "manifest.json", "model.onnx", "model.so", "plan.json",
                     "report.html"]
    assert _temps(work / "out") == []


def test_two_fleets_on_one_cache_with_the_same_key_finish_cleanly(work, fake):
    """Two concurrent runs (threads) build the same key, publish it, and copy it out while the
    other replaces it; both succeed with correct outputs and the entry stays sound."""
    fake.seconds = 0.05
    text = FLEET + "".join(f'\n[[device]]\nname = "h{i}"\ntarget = "host-ort-1t"\n'
                           for i in range(4))
    (work / "fleet.toml").write_text(text)
    fleet = load_fleet(work / "fleet.toml")
    results: dict[str, object] = {}

    def run(out: str) -> None:
        try:
            results[out] = run_fleet(fleet, work / out)
        except BaseException as err:  # noqa: B036 - reported by the assertion below
            results[out] = err

    for _ in range(2):       # a cold cache, then a warm one
        threads = [threading.Thread(target=run, args=(out,)) for out in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for out in ("a", "b"):
            result = results[out]
            assert not isinstance(result, BaseException), repr(result)
            assert not result.failed, result.failed
            for d in fleet.devices:
                assert (work / out / d.name / "model.so").read_bytes() == artifact(d.target)
    keys = {o.key for o in results["a"].outcomes}
    assert all(_sound(entry_dir(k)) for k in keys)
    assert _temps(cache_dir() / "fleet") == [] and _temps(work / "a") == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_removes_build_folders_of_dead_owners_only(work, fake):
    """Issue 21: `.build-*` folders stayed in the cache even after a successful rerun."""
    assert _fleet(work)[:2] == (0, {"host": "built"})
    root = cache_dir() / "fleet"
    dead = root / f".build-{_dead_pid()}-x"
    live = root / f".build-{os.getpid()}-x"
    elsewhere = root / f".build-{_dead_pid()}-x@another-host"   # a Dask worker's, say
    beside_dead = work / "out" / f".host.tmp-{_dead_pid()}-x"
    beside_live = work / "out" / f".host.tmp-{os.getpid()}-x"
    for folder in (dead, live, elsewhere, beside_dead, beside_live):
        (folder / "out").mkdir(parents=True)
        (folder / "out" / "model.so").write_bytes(b"half")
    assert _fleet(work)[:2] == (0, {"host": "cached"})
    assert _temps(root) == sorted([live.name, elsewhere.name])
    assert _temps(work / "out") == [beside_live.name]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_build_that_stops_leaves_no_temp_folder(work, fake, error):
    fake.fail = error
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            run_fleet(load_fleet(work / "fleet.toml"), work / "out")
    else:
        result = run_fleet(load_fleet(work / "fleet.toml"), work / "out")
        assert [o.status for o in result.outcomes] == ["failed"]
    assert fake.builds == ["host-ort-1t"]
    assert [p.name for p in (cache_dir() / "fleet").iterdir()] == []
    if isinstance(error, KeyboardInterrupt):   # OUTDIR did not exist: it is left as it was
        assert not (work / "out").exists()
    else:
        assert _temps(work / "out") == []


FEWSHOT = '''
model = "m.onnx"
latency_ms = 5.0

[[device]]
name = "cam"
target = "rpi4"
proxy = "host-ort-1t"
measurements = "few.csv"
'''


@pytest.mark.parametrize("damage", ["truncated", "binary", "changed weight"])
def test_a_damaged_user_predictor_is_exit_2_before_any_work(work, fake, damage):
    """A calibrated / fitted package under $FLEETC_HOME is the user's (fleetc cannot remake
    it): damaged, it is one error line naming it, exit 2, before anything is built or cached."""
    from toolchain.predict.kernel import KernelPredictor

    package = predictors_dir(create=True) / "host-ort-1t"
    KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t").save(package)
    model = package / "model.json"
    if damage == "truncated":
        _truncate(model)
    elif damage == "binary":
        model.write_bytes(b"\xff\xfe" * 300)
    else:
        model.write_text(model.read_text().replace("0.", "1.", 1))
    (work / "few.csv").write_text("design,latency_ms\nconv-3-16-3-2-224-1-relu-fp32,0.2\n"
                                  "conv-3-16-3-2-224-1-relu-int8,0.15\n"
                                  "conv-3-32-3-2-160-1-relu-fp32,0.3\n")
    (work / "fleet.toml").write_text(FEWSHOT)
    result = CliRunner().invoke(cli, ["fleet", str(work / "fleet.toml"), "-o",
                                      str(work / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetc: error: "), result.output
    assert str(package) in lines[0] and "Traceback" not in result.output
    assert fake.builds == []
    assert not (cache_dir() / "fleet").exists() or not list((cache_dir() / "fleet").iterdir())


TINY_FLEET = '''
model = "tiny.onnx"
calib = "calib.npz"
max_accuracy_drop = 50.0

[[device]]
name = "host"
target = "host-fp32"
latency_ms = 50.0
'''



def _tiny_model(path: Path) -> None:
    """Conv 3->8 (3x3) + Relu + global pool + Gemm 8->4 on 8x8 inputs: a build of seconds."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w", (8, 3, 3, 3)), ("b", (8,)), ("fc_w", (4, 8)), ("fc_b", (4,)))]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    inputs = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez_compressed(path.parent / "calib.npz", inputs=inputs)


def test_a_truncated_artifact_is_rebuilt_end_to_end(tmp_path):
    """The issue's reproduction with the real compiler: a cached model.so cut to 1000 bytes
    was served ("host: up to date (cache)", exit 0); now it is rebuilt and the output whole."""
    (cache_dir().parent / "targets").mkdir(parents=True)
    (cache_dir().parent / "targets" / "host-fp32.toml").write_text(HOST_FP32)
    _tiny_model(tmp_path / "tiny.onnx")
    (tmp_path / "fleet.toml").write_text(TINY_FLEET)
    code, status, output = _fleet(tmp_path)
    assert (code, status) == (0, {"host": "built"}), output
    built = (tmp_path / "out" / "host" / "model.so").read_bytes()
    _truncate(_entry(tmp_path) / "model.so")
    code, status, output = _fleet(tmp_path)
    assert (code, status) == (0, {"host": "built"}), output
    assert "up to date (cache)" not in output
    again = (tmp_path / "out" / "host" / "model.so").read_bytes()
    assert len(again) > 1000 and abs(len(again) - len(built)) < len(built) // 10
    assert _sound(_entry(tmp_path))
