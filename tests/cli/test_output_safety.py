"""Output folders and files are fleetc's alone (issue 21, toolchain/files.py check_output_dir /
check_output_file): `compile -o`, `fleet -o` (and each device folder), `fleet --depfile` and
`rewrite -o` never replace a user's files or an input, refuse files, special files and links to
them, follow a symlinked folder, and write with the modes the umask asks for.

Compiles run a tiny two-conv model with `--no-measure` (seconds); fleets use a fake compiler
(toolchain.compile.driver.prepare / compile_model replaced) since what is tested is where the
run writes, not the build. Refusals run with the real `prepare` replaced by one that fails the
test, to show they come before any work."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import cli
from toolchain.errors import BadInputError
from toolchain.files import atomic_write
from toolchain.fleet.spec import Device, Fleet

COMPILE = ["--target", "host-ort-1t", "--latency-ms", "100", "--no-measure"]
OUTPUT_MARKER = ".fleetc-output"     # spelled out: these tests also run on the code before it


def write_output_marker(folder: Path, kind: str) -> None:
    (folder / OUTPUT_MARKER).write_text(f"{kind}\n")


def _tiny_model() -> onnx.ModelProto:
    """Conv-ReLU-Conv-ReLU-pool-Gemm on 1x8x8 inputs: a compile takes seconds."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [init("w1", 8, 1, 3, 3), init("b1", 8), init("w2", 8, 8, 3, 3), init("b2", 8),
         init("wf", 4, 8), init("bf", 4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One FLEETC_HOME for the module: the tiny model's sensitivity is measured once."""
    return tmp_path_factory.mktemp("output_safety_home")


@pytest.fixture()
def work(tmp_path, home, monkeypatch) -> Path:
    monkeypatch.setenv("FLEETC_HOME", str(home))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "m.onnx").write_bytes(_tiny_model().SerializeToString())
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in" / "calib.npz", inputs=x)
    return tmp_path


@pytest.fixture()
def no_work(monkeypatch):
    """Any compile that gets past the output checks fails the test (exit 1, not 2)."""
    import toolchain.compile.driver as driver

    def prepare(*args, **kwargs):
        raise RuntimeError("work started before the output was checked")

    monkeypatch.setattr(driver, "prepare", prepare)


def _run(*args) -> SimpleNamespace:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return SimpleNamespace(code=result.exit_code, out=result.output, err=result.stderr)


def _compile(work: Path, out, *extra, model=None) -> SimpleNamespace:
    model = model or work / "in" / "m.onnx"
    return _run("compile", model, *COMPILE, "--calib", work / "in" / "calib.npz", "-o", out,
                *extra)


def _snapshot(root: Path) -> dict:
    """Every entry below `root` (links not followed): kind and bytes / link target."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            mode = p.lstat().st_mode
            out[str(p.relative_to(root))] = (
                os.readlink(p) if stat.S_ISLNK(mode) else p.read_bytes() if stat.S_ISREG(mode)
                else stat.S_IFMT(mode))
    return out


def _one_error_line(res: SimpleNamespace, *words: str) -> str:
    assert res.code == 2, res.out
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetc: error: "), res.err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --- compile -o -------------------------------------------------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_compile_never_replaces_the_folder_of_its_model(work, force):
    """The issue's reproduction: `mkdir d; cp model d/m.onnx; echo x > d/notes; fleetc compile
    d/m.onnx ... -o d` replaced the model's folder, exit 0. Now exit 2, d byte-identical, even
    with --force."""
    d = work / "d"
    d.mkdir()
    (d / "m.onnx").write_bytes((work / "in" / "m.onnx").read_bytes())
    (d / "notes").write_text("x\n")
    before = _snapshot(work)
    res = _compile(work, d, *(["--force"] if force else []), model=d / "m.onnx")
    _one_error_line(res, str(d), "refusing to overwrite an input", "holds the input m.onnx")
    assert _snapshot(work) == before


def test_compile_refuses_a_folder_of_user_files(work):
    """A folder holding a user's thesis.tex was replaced without a word."""
    d = work / "paper"
    d.mkdir()
    (d / "thesis.tex").write_text("\\documentclass{article}\n")
    before = _snapshot(work)
    line = _one_error_line(_compile(work, d), str(d), "files fleetc did not write")
    assert len(line) < 400
    assert _snapshot(work) == before


def _bad_output(work: Path, case: str) -> tuple[str, tuple[str, ...]]:
    """An output path for `case` (made in `work`) and words the error must hold."""
    if case == "empty":
        return "", ("empty",)
    if case == "file":
        (work / "f").write_text("mine\n")
        return str(work / "f"), ("is a file",)
    if case == "fifo":
        os.mkfifo(work / "fifo")
        return str(work / "fifo"), ("special file",)
    if case == "link-to-file":
        (work / "f").write_text("mine\n")
        (work / "l").symlink_to(work / "f")
        return str(work / "l"), ("symbolic link to a file",)
    if case == "broken-link":
        (work / "l").symlink_to(work / "nowhere")
        return str(work / "l"), ("broken symbolic link",)
    if case == "below-a-file":
        (work / "f").write_text("mine\n")
        return str(work / "f" / "out"), ("is not a folder",)
    if case == "input-folder":
        return str(work / "in"), ("holds the input",)
    if case == "the-model":
        return str(work / "in" / "m.onnx"), ("is a file",)
    if case == "fleet-output":
        (work / "fo").mkdir()
        write_output_marker(work / "fo", "fleet")
        (work / "fo" / "fleet.json").write_text("{}\n")
        return str(work / "fo"), ("fleetc fleet output, not a compile one",)
    if case == "root":
        return "/", ("filesystem root",)
    raise AssertionError(case)


BAD_OUTPUTS = ["empty", "file", "fifo", "link-to-file", "broken-link", "below-a-file",
               "input-folder", "the-model", "fleet-output", "root"]


@pytest.mark.parametrize("case", BAD_OUTPUTS)
def test_compile_bad_output_is_exit_2_before_any_work(work, no_work, case):
    out, words = _bad_output(work, case)
    before = _snapshot(work)
    _one_error_line(_compile(work, out), *words)
    assert _snapshot(work) == before          # a FIFO stays a FIFO, a file keeps its bytes


def test_compile_replaces_its_own_output_and_one_from_before_markers(work):
    out = work / "out"
    assert _compile(work, out).code == 0
    assert (out / OUTPUT_MARKER).read_text() == "compile\n"
    (out / "model.onnx").write_bytes(b"stale")
    assert _compile(work, out).code == 0                 # its own output: replaced
    assert (out / "model.onnx").read_bytes() != b"stale"
    (out / OUTPUT_MARKER).unlink()                       # written before markers: manifest.json
    assert _compile(work, out).code == 0
    assert (out / OUTPUT_MARKER).is_file()
    assert sorted(p.name for p in work.iterdir()) == ["in", "out"]   # no temp folder left


def test_compile_force_replaces_a_folder_of_user_files(work):
    paper = work / "paper"
    paper.mkdir()
    (paper / "thesis.tex").write_text("mine\n")
    assert _compile(work, paper, "--force").code == 0
    assert not (paper / "thesis.tex").exists() and (paper / "manifest.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["in", "paper"]


def test_compile_follows_a_symlinked_output_folder(work):
    real = work / "real"
    real.mkdir()
    (work / "link").symlink_to(real)
    res = _compile(work, work / "link")
    assert res.code == 0, res.out
    assert (work / "link").is_symlink() and os.readlink(work / "link") == str(real)
    assert (real / "manifest.json").is_file() and (real / "model.so").is_file()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_output_modes_follow_the_umask(work, mask):
    """Every output file was 0600 and folder 0700 (mkstemp / mkdtemp) whatever the umask."""
    old = os.umask(mask)
    try:
        res = _compile(work, work / "out")
        rewritten = _run("rewrite", work / "in" / "m.onnx", "--plan", _plan_file(work), "-o",
                         work / "r.onnx")
    finally:
        os.umask(old)
    assert res.code == 0 and rewritten.code == 0, res.out + rewritten.out
    out = work / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes.pop("model.so") == 0o777 & ~mask      # a shared library, executable
    assert set(modes) == {"model.onnx", "plan.json", "manifest.json", "report.html",
                          OUTPUT_MARKER}
    assert set(modes.values()) == {0o666 & ~mask}
    assert stat.S_IMODE((work / "r.onnx").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_write_follows_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask


def test_a_killed_compiles_temp_folder_is_removed_by_the_next(work):
    """The temp folder beside OUTDIR carries its owner's pid: one whose owner is dead (a
    SIGKILLed compile) goes with the next compile, a live owner's stays."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (work / f".out.tmp-{dead.pid}-x").mkdir()
    (work / f".out.tmp-{os.getpid()}-x").mkdir()
    assert _compile(work, work / "out").code == 0
    assert sorted(p.name for p in work.iterdir()) == [f".out.tmp-{os.getpid()}-x", "in", "out"]


# --- rewrite -o -------------------------------------------------------------------------------

def _plan_file(work: Path) -> Path:
    path = work / "in" / "plan.json"
    path.write_text(json.dumps({"version": 1, "target": None, "model": {"input_shape": {}},
                                "kernels": {}, "skip_blocks": []}))
    return path


def _rewrite(work: Path, out) -> SimpleNamespace:
    return _run("rewrite", work / "in" / "m.onnx", "--plan", _plan_file(work), "-o", out,
                "--calib", work / "in" / "calib.npz")


@pytest.mark.parametrize("case, words", [
    ("fifo", ("special file",)),
    ("folder", ("is a folder",)),
    ("empty", ("empty",)),
    ("plan", ("is the input", "plan.json")),
    ("calib", ("is the input", "calib.npz")),
    ("link-to-model", ("is the input",)),
    ("hardlink-to-model", ("is the input",)),
    ("broken-link", ("broken symbolic link",)),
])
def test_rewrite_bad_output_is_exit_2_and_writes_nothing(work, case, words):
    """`rewrite -o FIFO` replaced the FIFO by a regular file; a folder was a usage error."""
    plan = _plan_file(work)
    out = {"fifo": work / "fifo", "folder": work / "in", "empty": "", "plan": plan,
           "calib": work / "in" / "calib.npz", "link-to-model": work / "l",
           "hardlink-to-model": work / "h", "broken-link": work / "l"}[case]
    if case == "fifo":
        os.mkfifo(out)
    elif case == "link-to-model":
        out.symlink_to(work / "in" / "m.onnx")
    elif case == "hardlink-to-model":
        os.link(work / "in" / "m.onnx", out)
    elif case == "broken-link":
        out.symlink_to(work / "nowhere")
    before = _snapshot(work)
    _one_error_line(_rewrite(work, out), *words)
    assert _snapshot(work) == before


def test_rewrite_follows_a_link_to_a_regular_file(work):
    (work / "target.onnx").write_bytes(b"old")
    (work / "l").symlink_to(work / "target.onnx")
    res = _rewrite(work, work / "l")
    assert res.code == 0, res.out
    assert (work / "l").is_symlink()
    onnx.checker.check_model(onnx.load(work / "target.onnx"))


# --- fleet -o and --depfile --------------------------------------------------------------------

FLEET = '''
model = "in/m.onnx"
calib = "in/calib.npz"
latency_ms = 5.0
{devices}'''


def _fleet_file(work: Path, *names: str) -> Path:
    devices = "".join(f'\n[[device]]\nname = "{n}"\ntarget = "host-ort-1t"\n' for n in names)
    path = work / "fleet.toml"
    path.write_text(FLEET.format(devices=devices))
    return path


@pytest.fixture()
def fake(monkeypatch) -> list[str]:
    """Planning and building replaced by a fake that writes a build at once (tests/fleet/
    fakes.py); the list holds the builds."""
    from tests.fleet.fakes import FakeFleet

    return FakeFleet().install(monkeypatch).builds


def _fleet(work: Path, out, *extra) -> SimpleNamespace:
    return _run("fleet", work / "fleet.toml", "-o", out, *extra)


def test_fleet_depfile_never_overwrites_the_model(work, fake, home):
    """`fleet --depfile <the fleet's model>` overwrote the model, exit 0."""
    _fleet_file(work, "host")
    cache = home / "cache" / "fleet"
    entries = sorted(cache.iterdir()) if cache.is_dir() else []
    before = _snapshot(work)
    res = _fleet(work, work / "out", "--depfile", work / "in" / "m.onnx")
    _one_error_line(res, "is the input", "m.onnx")
    assert _snapshot(work) == before and fake == []
    assert (sorted(cache.iterdir()) if cache.is_dir() else []) == entries   # before any work


@pytest.mark.parametrize("case, words", [
    ("fleet-file", ("is the input", "fleet.toml")),
    ("calib", ("is the input", "calib.npz")),
    ("folder", ("is a folder",)),
    ("fifo", ("special file",)),
    ("empty", ("empty",)),
    ("fleet.json", ("overwrite the run's own output",)),
    ("in-device-folder", ("overwrite the run's own output",)),
    ("outdir", ("overwrite the run's own output",)),
])
def test_fleet_bad_depfile_is_exit_2_before_any_work(work, fake, case, words):
    _fleet_file(work, "host")
    out = work / "out"
    path = {"fleet-file": work / "fleet.toml", "calib": work / "in" / "calib.npz",
            "folder": work / "in", "fifo": work / "fifo", "empty": "",
            "fleet.json": out / "fleet.json", "in-device-folder": out / "host" / "fleet.d",
            "outdir": out}[case]
    if case == "fifo":
        os.mkfifo(path)
    before = _snapshot(work)
    _one_error_line(_fleet(work, out, "--depfile", path), *words)
    assert _snapshot(work) == before and fake == []


def test_fleet_writes_a_good_depfile_in_outdir(work, fake):
    _fleet_file(work, "host")
    res = _fleet(work, work / "out", "--depfile", work / "out" / "fleet.d")
    assert res.code == 0, res.out
    text = (work / "out" / "fleet.d").read_text()
    assert text.startswith(f"{work / 'out' / 'fleet.json'}:") and "m.onnx" in text


def _fleet_output(work: Path, case: str) -> tuple[Path, tuple[str, ...]]:
    out = work / "out"
    if case == "user-files":
        out.mkdir()
        (out / "thesis.tex").write_text("mine\n")
        return out, ("files fleetc did not write")
    if case == "holds-fleet-file":
        return work, ("holds the input", "fleet.toml")
    if case == "compile-output":
        out.mkdir()
        write_output_marker(out, "compile")
        return out, ("fleetc compile output, not a fleet one",)
    out.mkdir()
    write_output_marker(out, "fleet")
    if case == "device-folder-of-user":
        (out / "host").mkdir()
        (out / "host" / "thesis.tex").write_text("mine\n")
        return out, (str(out / "host"), "files fleetc did not write")
    if case == "device-path-is-a-file":
        (out / "host").write_text("mine\n")
        return out, (str(out / "host"), "is a file")
    if case == "device-path-is-a-fifo":
        os.mkfifo(out / "host")
        return out, (str(out / "host"), "special file")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["user-files", "holds-fleet-file", "compile-output",
                                  "device-folder-of-user", "device-path-is-a-file",
                                  "device-path-is-a-fifo"])
def test_fleet_bad_output_is_exit_2_before_any_work(work, fake, case):
    _fleet_file(work, "host")
    out, words = _fleet_output(work, case)
    before = _snapshot(work)
    _one_error_line(_fleet(work, out), *words)
    assert _snapshot(work) == before and fake == []


def test_fleet_force_writes_into_user_folders_but_never_over_an_input(work, fake):
    _fleet_file(work, "host")
    out, _ = _fleet_output(work, "device-folder-of-user")
    (out / "notes.txt").write_text("mine\n")
    assert _fleet(work, out, "--force").code == 0
    assert (out / "notes.txt").read_text() == "mine\n"     # the top folder is written into
    assert not (out / "host" / "thesis.tex").exists()       # a device folder is replaced
    assert (out / "host" / "manifest.json").is_file()
    _one_error_line(_fleet(work, work, "--force"), "holds the input")


def test_fleet_keeps_and_lists_folders_of_devices_no_longer_in_the_fleet(work, fake):
    _fleet_file(work, "a", "b")
    out = work / "out"
    assert _fleet(work, out).code == 0
    assert (out / OUTPUT_MARKER).read_text() == "fleet\n"
    kept = _snapshot(out / "b")
    _fleet_file(work, "a")
    res = _fleet(work, out)
    assert res.code == 0, res.out
    lines = [line for line in res.err.splitlines() if "no longer in the fleet" in line]
    assert len(lines) == 1 and lines[0].endswith(": b"), res.err
    assert _snapshot(out / "b") == kept
    assert [d["name"] for d in json.loads((out / "fleet.json").read_text())["devices"]] == ["a"]


@pytest.mark.parametrize("error", [BadInputError("calib.npz: bad data"), KeyboardInterrupt()])
@pytest.mark.parametrize("before", ["missing", "empty"])
def test_a_fleet_stopped_in_the_shared_work_leaves_outdir_as_it_was(work, fake, monkeypatch,
                                                                  error, before):
    """Bad input found by the shared work (exit 2) or Ctrl-C: no partial OUTDIR (a marker
    alone, or device folders without fleet.json)."""
    import toolchain.compile.driver as driver

    def prepare(*args, **kwargs):
        raise error

    monkeypatch.setattr(driver, "prepare", prepare)
    _fleet_file(work, "host")
    out = work / "new" / "out"
    if before == "empty":
        out.mkdir(parents=True)
    res = _fleet(work, out, "--no-cache")        # the device must be built
    assert res.code == (2 if isinstance(error, BadInputError) else 130), res.out
    assert (sorted(out.iterdir()) == []) if before == "empty" else not out.exists()


def test_fleet_follows_a_symlinked_device_folder(work, fake):
    _fleet_file(work, "host")
    out = work / "out"
    out.mkdir()
    write_output_marker(out, "fleet")         # an earlier fleet output
    (work / "elsewhere").mkdir()
    (out / "host").symlink_to(work / "elsewhere")
    res = _fleet(work, out)
    assert res.code == 0, res.out
    assert (out / "host").is_symlink()
    assert (work / "elsewhere" / "manifest.json").is_file()


def test_check_output_and_depfile_cover_the_fleets_csvs(tmp_path):
    """Measurement / fingerprint CSVs are inputs too (a Fleet built directly: the rule, not
    the CSV format, is under test)."""
    from toolchain.files import check_output_dir
    from toolchain.fleet.run import check_depfile, check_output

    csv = tmp_path / "csvs" / "fp.csv"
    csv.parent.mkdir()
    csv.write_text("design,latency_ms\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    device = Device(name="host", target="host-ort-1t", latency_ms=1.0, fingerprint=csv)
    fleet = Fleet(tmp_path / "fleet.toml", model, None, (device,), {})
    with pytest.raises(BadInputError, match="is the input"):
        check_depfile(fleet, tmp_path / "out", csv)
    with pytest.raises(BadInputError, match="holds the input"):
        check_output(fleet, tmp_path / "csvs")
    with pytest.raises(BadInputError, match="is inside the input"):
        check_output_dir(csv.parent / "sub", [csv.parent], "compile")   # an input folder
    with pytest.raises(BadInputError, match="is not a folder"):
        check_output_dir(csv / "sub", [], "compile")
    assert check_output(fleet, tmp_path / "out") == {"host": tmp_path / "out" / "host"}
