"""The probe units cache under $FLEETC_HOME: a damaged file is computed again, with a warning
(it was read as it was: a KeyError or UnicodeDecodeError, exit 1, on every later run)."""
from __future__ import annotations

import json
import logging

import pytest

from toolchain.measure import probe
from toolchain.predict.latency import _UNITS_KEY, design_units

PROBE = "conv-3-16-3-2-224-1-relu-fp32"
UNIT = {"name": "a", "cls": "conv", "precision": "fp32"}

DAMAGE = {
    "binary": b"\xff\xfe",
    "truncated": None,                         # the first 30 bytes of the real file
    "nested": b"[" * 100_000,
    "not a list": b"{}",
    "empty": b"[]",
    "a unit without inputs": json.dumps([{"name": 1}]).encode(),
    "a number that is text": json.dumps([{**UNIT, "macs": "x"}]).encode(),
    "an unknown field": json.dumps([{**UNIT, "no_such": 1}]).encode(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_probe_units_are_computed_again(caplog, damage):
    units = design_units(PROBE)
    path = probe.probe_cache_dir() / f"units-{_UNITS_KEY}" / f"{PROBE}.json"
    good = path.read_bytes()
    path.write_bytes(DAMAGE[damage] if DAMAGE[damage] is not None else good[:30])
    caplog.set_level(logging.WARNING)
    assert design_units(PROBE) == units
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0] and "damaged" in warned[0]
    assert path.read_bytes() == good           # replaced by the computed units
