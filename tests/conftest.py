from __future__ import annotations

import os

import pytest
from hypothesis import settings

# The property tests draw the same examples on every run, so `make test` (and CI) pass or fail
# on the code alone; FLEETC_HYPOTHESIS=explore draws new ones (a way to look for bugs).
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("FLEETC_HYPOTHESIS", "fixed"))


@pytest.fixture(autouse=True)
def _fleetc_home(tmp_path_factory, monkeypatch):
    """Every test gets its own FLEETC_HOME: no test reads or writes the user's cache."""
    monkeypatch.setenv("FLEETC_HOME", str(tmp_path_factory.mktemp("fleetc_home")))
    monkeypatch.setenv("FLEETC_DEBUG", "1")  # every pipeline verifies the IR after each pass
