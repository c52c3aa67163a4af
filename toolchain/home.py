"""Where fleetc keeps user data: `$FLEETC_HOME`, default `fleetc` under the user's cache folder.

Layout (each folder is created on first use by the code that writes into it):

    $FLEETC_HOME/targets/       user targets (*.toml), same schema as targets/devices/
    $FLEETC_HOME/predictors/    fitted and calibrated predictor packages (one folder each)
    $FLEETC_HOME/tuning/        TVM tuning databases
    $FLEETC_HOME/cache/         the build cache
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fleetc_home", "home_dir", "targets_dir", "predictors_dir", "tuning_dir", "cache_dir"]


def fleetc_home() -> Path:
    """`$FLEETC_HOME` if set, else `$XDG_CACHE_HOME/fleetc`, else `~/.cache/fleetc`."""
    explicit = os.environ.get("FLEETC_HOME")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "fleetc"


def home_dir(name: str, create: bool = False) -> Path:
    """A folder under the fleetc home; made (with parents) when `create` is true."""
    path = fleetc_home() / name
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def targets_dir(create: bool = False) -> Path:
    return home_dir("targets", create)


def predictors_dir(create: bool = False) -> Path:
    return home_dir("predictors", create)


def tuning_dir(create: bool = False) -> Path:
    return home_dir("tuning", create)


def cache_dir(create: bool = False) -> Path:
    return home_dir("cache", create)
