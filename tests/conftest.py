from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import settings

# The property tests draw the same examples on every run, so `make test` (and CI) pass or fail
# on the code alone; FLEETC_HYPOTHESIS=explore draws new ones (a way to look for bugs).
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("FLEETC_HYPOTHESIS", "fixed"))


def pytest_configure(config):
    """Code that runs outside a test's own FLEETC_HOME (module fixtures, collection) gets one for
    the session: nothing in the suite reads or writes the user's ~/.cache/fleetc. A Python
    without fleetc's dependencies (pytest run outside .venv) stops here with one line."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as err:
        pytest.exit(f"{err}: fleetc's dependencies are not in this Python; run `make test` "
                    "(it installs them into .venv) or .venv/bin/python -m pytest", returncode=2)
    config._fleetc_home = tempfile.mkdtemp(prefix="fleetc_home_session_")
    os.environ["FLEETC_HOME"] = config._fleetc_home


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_fleetc_home", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def _probe_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("probe_cache")


@pytest.fixture(autouse=True)
def _fleetc_home(tmp_path_factory, monkeypatch, _probe_cache):
    """Every test gets its own FLEETC_HOME: no test reads or writes the user's cache. The probe
    models and units (deterministic for this code) are shared by the tests of one worker, in
    the worker's own folder: rebuilding them per test would cost minutes."""
    from toolchain.measure import probe

    monkeypatch.setenv("FLEETC_HOME", str(tmp_path_factory.mktemp("fleetc_home")))
    monkeypatch.setattr(probe, "probe_cache_dir", lambda: _probe_cache / probe._probe_key())
    monkeypatch.setenv("FLEETC_DEBUG", "1")  # every pipeline verifies the IR after each pass
    # Predictor packages are used as shipped: no calibration to this CPU (20 s of timing, and
    # predictions that would depend on the machine); the calibration tests turn it on.
    monkeypatch.setenv("FLEETC_CALIBRATE", "0")
