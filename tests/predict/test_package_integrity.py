"""Predictor packages verify themselves: a damaged one is one error line naming it, exit 2.

Packages under $FLEETC_HOME/predictors are fitted or calibrated by the user (`fleetc predictor
fit`, `fleetc targets calibrate`); fleetc cannot remake one, so it refuses a damaged one with
the file and the remedy - never a traceback, never exit 1, never silently the built-in one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolchain.cli import cli
from toolchain.errors import BadInputError
from toolchain.home import predictors_dir
from toolchain.predict.kernel import KernelPredictor
from toolchain.predict.latency import builtin_predictors_dir

MODEL = Path(__file__).parents[1] / "fixtures" / "digits_mbv2.onnx"
DIGESTS = "digests.json"


def _user_package() -> Path:
    """host-ort-1t's package, saved by fleetc under $FLEETC_HOME (as `predictor fit` does)."""
    folder = predictors_dir(create=True) / "host-ort-1t"
    KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t").save(folder)
    return folder


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


DAMAGE = {
    # name: (damage, file named in the error, digests.json kept)
    "truncated model.json": (lambda p: (p / "model.json").write_bytes(
        (p / "model.json").read_bytes()[:1000]), "model.json", True),
    "changed weight": (lambda p: (p / "model.json").write_text(
        (p / "model.json").read_text().replace("0.", "1.", 1)), "model.json", True),
    "deleted model.json": (lambda p: (p / "model.json").unlink(), "model.json", True),
    "deleted meta.json": (lambda p: (p / "meta.json").unlink(), "meta.json", True),
    "binary meta.json": (lambda p: (p / "meta.json").write_bytes(b"\xff\xfe" * 50),
                         "meta.json", False),
    "meta.json not an object": (lambda p: (p / "meta.json").write_text("[]"), "meta.json",
                                False),
    "model.json nested": (lambda p: (p / "model.json").write_text("[" * 100_000), "model.json",
                          False),
    "kinds not a table": (lambda p: _edit_json(p / "model.json",
                                               lambda d: d.update(kinds="x")), "model.json",
                          False),
    "weight not a number": (lambda p: _edit_json(
        p / "model.json", lambda d: d["kinds"]["conv/fp32"].update(macs="x")), "model.json",
                            False),
    "unknown feature": (lambda p: _edit_json(
        p / "model.json", lambda d: d["kinds"]["conv/fp32"].update(no_such=1.0)), "model.json",
                        False),
    "model not a table": (lambda p: _edit_json(p / "model.json", lambda d: d.update(model=[1])),
                          "model.json", False),
}


def test_save_writes_digests_and_a_sound_package_loads():
    folder = _user_package()
    assert (folder / DIGESTS).is_file()
    loaded = KernelPredictor.load(folder)
    assert loaded.weights == KernelPredictor.load(builtin_predictors_dir() / "host-ort-1t").weights


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_package_is_bad_input_naming_the_file(damage):
    folder = _user_package()
    spoil, named, keep_digests = DAMAGE[damage]
    spoil(folder)
    if not keep_digests:           # a package without digests (older fleetc, hand-made)
        (folder / DIGESTS).unlink(missing_ok=True)
    with pytest.raises(BadInputError) as err:
        KernelPredictor.load(folder)
    assert str(folder) in str(err.value) and named in str(err.value)
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncated model.json", "binary meta.json",
                                    "deleted meta.json", "weight not a number"])
@pytest.mark.parametrize("command", [["predict", str(MODEL), "--target", "host-ort-1t"],
                                     ["predictor", "show", "--target", "host-ort-1t"]])
def test_the_cli_says_so_in_one_line_exit_2(damage, command):
    folder = _user_package()
    spoil, named, keep_digests = DAMAGE[damage]
    spoil(folder)
    if not keep_digests:
        (folder / DIGESTS).unlink(missing_ok=True)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetc: error: "), result.output
    assert str(folder) in lines[0] and named in lines[0]
