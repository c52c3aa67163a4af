from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fleetc_home(tmp_path_factory, monkeypatch):
    """Every test gets its own FLEETC_HOME: no test reads or writes the user's cache."""
    monkeypatch.setenv("FLEETC_HOME", str(tmp_path_factory.mktemp("fleetc_home")))
    monkeypatch.setenv("FLEETC_DEBUG", "1")  # every pipeline verifies the IR after each pass
